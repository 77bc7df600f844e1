"""Where the factors meet the network: finding adapted layers, live residuals, weight patches."""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from seqlib.config import LAYER_SETS
from seqlib.errors import BaseMismatchError, DataError


def adapted_layers(unet: nn.Module, layer_set: str = "attention") -> list[tuple[str, nn.Linear]]:
    """The linear layers of ``layer_set`` in module order; names match SD1.5's."""
    pattern = LAYER_SETS[layer_set]
    found = []
    for name, module in unet.named_modules():
        if pattern.search(name):
            if not isinstance(module, nn.Linear):
                raise BaseMismatchError(f"{name} is a {type(module).__name__}; seqlib adapts nn.Linear layers only")
            found.append((name, module))
    return found


def named_layers(unet: nn.Module, names: Iterable[str]) -> list[tuple[str, nn.Linear]]:
    """The layers a library recorded, in that order; KeyError names one the network lacks."""
    modules = dict(unet.named_modules())
    out = []
    for name in names:
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            raise KeyError(name)
        out.append((name, module))
    return out


def fingerprint(layers: list[tuple[str, nn.Linear]]) -> str:
    """sha256 over name, shape and float32 little-endian bytes of each adapted W0."""
    h = hashlib.sha256()
    for name, module in layers:
        w = module.weight.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(w.shape)}\n".encode())
        h.update(w.numpy().astype("<f4").tobytes())
    return h.hexdigest()


_READS_TEXT = re.compile(r"\.attn2\.(to_k|to_v)$")


def reads_text(name: str) -> bool:
    """Whether an adapted layer's inputs are the prompt's text states (cross-attention K/V)."""
    return _READS_TEXT.search(name) is not None


class TokenPositions:
    """The token ids behind the text states a cross-attention layer reads.

    A forward hook on the text encoder keeps the last few calls' (ids, states); a row of text
    states is found among them by value, so this works whatever a pipeline does with the states
    in between (classifier-free guidance concatenates the negative prompt's, batches repeat them).
    Rows found nowhere (states a caller made without this text encoder) get id -1: no token.
    """

    def __init__(self, text_encoder: nn.Module, keep: int = 8) -> None:
        self.seen: deque[tuple[Tensor, Tensor]] = deque(maxlen=keep)
        self._last: tuple[Tensor, Tensor] | None = None
        self._handle = text_encoder.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        ids = args[0] if args else kwargs["input_ids"]
        self.seen.append((ids.detach(), output[0].detach()))
        self._last = None

    def ids_of(self, x: Tensor) -> Tensor:
        """(rows, seq) ids for text states ``x`` (rows, seq, d)."""
        x = x.detach()
        if self._last is not None and self._last[0].shape == x.shape and torch.equal(self._last[0], x):
            return self._last[1]  # every K/V layer of one UNet pass reads the same states
        out = torch.full(x.shape[:2], -1, dtype=torch.long, device=x.device)
        for r in range(x.shape[0]):
            for ids, states in reversed(self.seen):
                if states.shape[1:] != x.shape[1:]:
                    continue
                hit = (states.to(x.dtype) == x[r]).flatten(1).all(1).nonzero()
                if len(hit):
                    out[r] = ids[int(hit[0])].to(x.device)
                    break
        self._last = (x, out)
        return out

    def mask(self, x: Tensor, token_id: int) -> Tensor:
        """(rows, seq, 1): 1 where ``token_id`` sits."""
        return (self.ids_of(x) == token_id).unsqueeze(-1)

    def remove(self) -> None:
        self._handle.remove()


def residual(x: Tensor, A: Tensor, B: Tensor, like: Tensor) -> Tensor:
    return ((x.to(B.dtype) @ B) @ A.T).to(like.dtype)  # (..., m)->(..., r)->(..., n)


class LiveResiduals:
    """Forward hooks that add ``x B Aᵀ`` to each adapted layer's output.

    The factors are read from ``self.factors`` at call time, so the trainer can evaluate
    the loss at (Ã, B), (A_k, B), … by swapping tensors, without touching the weights.
    With ``positions`` and ``token_id`` (``--kv-scope token``), the cross-attention K/V
    residuals act only where the concept's token sits in the prompt.
    """

    def __init__(
        self, layers: list[tuple[str, nn.Linear]], positions: TokenPositions | None = None, token_id: int | None = None
    ) -> None:
        self.layers, self.positions, self.token_id = layers, positions, token_id
        self.factors: dict[str, tuple[Tensor, Tensor]] = {}
        self._handles: list = []

    def _hook(self, name: str):
        local = self.positions is not None and reads_text(name)

        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            if name not in self.factors:
                return output
            A, B = self.factors[name]
            x = args[0]
            delta = residual(x, A, B, output)
            if local and self.token_id is not None:
                delta = delta * self.positions.mask(x, self.token_id).to(delta.dtype)
            return output + delta

        return hook

    def __enter__(self) -> LiveResiduals:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def set(self, As: list[Tensor], Bs: list[Tensor]) -> None:
        """Use these factors from now on. They stay set after the forward pass on purpose:
        gradient checkpointing re-runs the forward during backward and must see the same."""
        self.factors = {name: (A, B) for (name, _), A, B in zip(self.layers, As, Bs)}


class WeightPatch:
    """Adds residuals into the adapted weights in place; ``revert`` pops them off again.

    A residual arrives as factors (A, B) per layer and goes in as ``W += A Bᵀ`` (one
    ``addmm_``: no n x m temporary, nothing but the factors moved to the weights' device). A
    direct in-place sum is the whole of composition (no fusion step): adding 100 concepts to
    SD1.5's attention weights takes about a second on a CPU (``benchmarks/scale.py``).
    """

    def __init__(self, unet: nn.Module) -> None:
        self.modules = dict(unet.named_modules())  # residuals name their layers
        self._stack: list[dict[str, tuple[Tensor, Tensor]]] = []

    @torch.no_grad()
    def apply(self, factors: dict[str, tuple[Tensor, Tensor]], safe: bool = True) -> None:
        if safe:  # finite factors give a finite residual; checking them is O((n + m) r), not O(n m)
            for name, (A, B) in factors.items():
                if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
                    raise DataError(f"non-finite values in the residual for {name}; a selected concept is broken")
        self._add(factors, 1.0)
        self._stack.append(factors)

    @torch.no_grad()
    def revert(self) -> None:
        self._add(self._stack.pop(), -1.0)

    def _add(self, factors: dict[str, tuple[Tensor, Tensor]], sign: float) -> None:
        for name, (A, B) in factors.items():
            w = self.modules[name].weight
            A, B = A.to(w.device, torch.float32), B.to(w.device, torch.float32)
            if w.dtype == torch.float32:
                w.addmm_(A, B.T, alpha=sign)
            else:  # half precision: add in float32, round once
                w.copy_(w.float().addmm_(A, B.T, alpha=sign))


def summed_factors(
    concepts: list[tuple[dict[str, Tensor], dict[str, Tensor], float]],
) -> dict[str, tuple[Tensor, Tensor]]:
    """Σ_i w_i A_i B_iᵀ per layer as factors ``([w_1 A_1 … w_N A_N], [B_1 … B_N])`` (n x Σr and
    m x Σr), for (A by layer, B by layer, weight) triples.

    Applied as one matmul per layer (``WeightPatch``): composing N concepts costs one
    n x Σr by Σr x m product, not N full n x m products and additions.
    """
    names = list(dict.fromkeys(name for As, _, _ in concepts for name in As))
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for name in names:
        pairs = [(weight * As[name].float(), Bs[name].float()) for As, Bs, weight in concepts if name in As]
        out[name] = (torch.cat([a for a, _ in pairs], dim=1), torch.cat([b for _, b in pairs], dim=1))
    return out


class TokenLocalPatch:
    """Composition's half of ``--kv-scope token``: each such concept's cross-attention K/V
    residual, added at its own token's positions only (a weight patch cannot mask, so these
    run as forward hooks; everything else still goes into the weights)."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module) -> None:
        self.modules = dict(unet.named_modules())
        self.positions = TokenPositions(text_encoder)
        self.terms: dict[str, list[tuple[Tensor, Tensor, int]]] = {}
        self._handles: list = []

    def add(self, factors: dict[str, tuple[Tensor, Tensor]], token_id: int, weight: float = 1.0) -> None:
        for name, (A, B) in factors.items():
            if name not in self.terms:
                self.terms[name] = []
                self._handles.append(self.modules[name].register_forward_hook(self._hook(name)))
            self.terms[name].append((weight * A.float(), B.float(), token_id))

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            x = args[0]
            for A, B, token_id in self.terms[name]:
                A, B = A.to(x.device), B.to(x.device)
                output = output + residual(x, A, B, output) * self.positions.mask(x, token_id).to(output.dtype)
            return output

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self.positions.remove()
        self._handles, self.terms = [], {}
