"""Where the factors meet the network: finding adapted layers, live residuals, weight patches."""

from __future__ import annotations

import hashlib
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


class LiveResiduals:
    """Forward hooks that add ``x B Aᵀ`` to each adapted layer's output.

    The factors are read from ``self.factors`` at call time, so the trainer can evaluate
    the loss at (Ã, B), (A_k, B), … by swapping tensors, without touching the weights.
    """

    def __init__(self, layers: list[tuple[str, nn.Linear]]) -> None:
        self.layers = layers
        self.factors: dict[str, tuple[Tensor, Tensor]] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            if name not in self.factors:
                return output
            A, B = self.factors[name]
            x = args[0]
            return output + ((x.to(B.dtype) @ B) @ A.T).to(output.dtype)  # (..., m)->(..., r)->(..., n)

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
