"""Training hyper-parameters and layer sets (torch-free, so the CLI can show choices and
defaults without importing torch)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

from seqlib.choices import BASIS_INITS, CONTEXTS, CROPS, HVP_OPTIONS, KV_SCOPES, OPTIMIZERS, PRECISIONS
from seqlib.errors import UsageError
from seqlib.methods import METHODS

_ATTENTION = r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$"
_FEED_FORWARD = r"\.ff\.net\.(0\.proj|2)$"
# Which linear layers a library adapts, chosen at `seqlib init` and recorded by name in the store.
# "attention" is the paper's set (and SD1.5's LoRA practice); "attention+ff" adds each transformer
# block's feed-forward in/out projections, which carry most of a small UNet's per-token capacity;
# "cross-kv" only the cross-attention keys and values (Custom Diffusion's choice): their inputs are
# the prompt's text states, so a residual there acts mostly when its token is in the prompt.
LAYER_SETS = {
    "attention": re.compile(_ATTENTION),
    "attention+ff": re.compile(f"{_ATTENTION}|{_FEED_FORWARD}"),
    "cross-kv": re.compile(r"\.attn2\.(to_k|to_v)$"),
}


TINY_BASE_ID = "seqlib-world-tiny-sd-v3"  # seqlib.embedded.EMBEDDED_BASE_ID, without importing it


def default_layer_set(base_kind: str, source: str = TINY_BASE_ID) -> str:
    """The paper's set on a real base and on the lab base; the tiny embedded base's attention
    (8×8 and 4×4 only) cannot draw a concept's parts on its own, so there the feed-forward
    layers join it."""
    return "attention+ff" if base_kind == "embedded" and source == TINY_BASE_ID else "attention"


# TrainConfig fields with a closed set of values (seqlib.choices); `method` has its registry.
CHOICES = {
    "optimizer": OPTIMIZERS,
    "context": CONTEXTS,
    "hvp": HVP_OPTIONS,
    "basis_init": BASIS_INITS,
    "precision": PRECISIONS,
    "crop": CROPS,
    "kv_scope": KV_SCOPES,
}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one ``add``; every field is saved with the concept.

    Defaults were picked by measurement on the embedded base (docs/method.md, "Defaults, and why"): Adam-
    preconditioned steps (``optimizer="sgd"``: the paper's plain steps, with α≈3 there).
    """

    # seqlora | alternating (no cross-Hessian) | frozen-basis (Po et al. 2024: B fixed) | lora (no projection)
    method: str = "seqlora"
    optimizer: str = "adam"  # adam: Adam-preconditioned steps | sgd: plain (clipped) gradient steps, as in the paper
    alpha: float = 1e-3  # α: step size of A; also the inner step inside the reduced gradient
    beta: float = 1e-3  # β: step size of B
    K: int = 3  # bilevel iterations per round (paper: 3)
    S_B: int = 2  # local B iterations (paper: 2)
    S_A: int = 2  # local A iterations (paper: 2)
    # base: learn on W0 alone, bases still orthogonal (what a user's `add mine ./photos` needs: measured,
    # docs/method.md, "Defaults, and why") | library: on top of W0 + Σ earlier residuals (the paper's setting)
    context: str = "base"
    steps: int = 60  # training rounds, each on a fresh batch
    batch_size: int = 4
    lr_embed: float = 1e-3  # step size of the learned token embedding
    max_grad_norm: float = 0.2  # sgd: clip each step's gradient to this global norm (0 = unclipped)
    hvp: str = "auto"  # autograd (double backward) | finite-diff (central) | forward-diff (one-sided) | auto
    seed: int = 0
    init_word: str = "thing"
    prompt_template: str = "a photo of {token}"
    resolution: int = 64
    basis_init: str = (
        "activation"  # activation: top-r principal directions of the inputs in the free space; random: the paper
    )
    protect: int = 0  # also keep B orthogonal to the top-`protect` input directions of every earlier concept
    activation_k: int = 8  # principal input directions kept per layer (crosstalk diagnostics, --protect)
    precision: str = "fp32"  # fp32 | fp16 | bf16: the frozen base's dtype; LoRA factors always stay fp32
    gradient_checkpointing: bool = False  # recompute UNet activations in backward: less memory, ~30% slower
    crop: str = "center"  # center | random (random crops of 80-100% of the image side)
    flip: bool = False  # random horizontal flips (off by default: many concepts are not mirror-symmetric)
    aug_copies: int = 4  # augmented variants encoded per image when crop=random or flip
    # all: the cross-attention K/V residual acts on every text position (a plain LoRA) | token:
    # only at the concept's token (composes through seqlib's hook; a plain LoRA loader cannot mask)
    kv_scope: str = "all"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"`method` must be one of {', '.join(METHODS)}, not {self.method!r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise UsageError(f"`{name}` must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in ("K", "S_B", "S_A", "steps", "batch_size", "resolution"):
            if getattr(self, name) < 1:
                raise UsageError(f"`{name}` must be >= 1")
        if not 0 <= self.protect <= self.activation_k:
            raise UsageError(f"`protect` must be between 0 and `activation_k` ({self.activation_k})")
        if self.protect and not METHODS[self.method].projects:
            raise UsageError(f"`protect` needs a method that projects its basis, not {self.method}")
        if "{token}" not in self.prompt_template:
            raise UsageError("`prompt_template` must contain {token}")
        try:  # before the base loads: a stray brace or an unknown field is the user's typo
            self.prompt_template.format(token="<x>")
        except (KeyError, IndexError, ValueError) as e:
            raise UsageError(
                f"`prompt_template` {self.prompt_template!r} is not a template with only {{token}} in braces "
                f"({type(e).__name__}: {e}); write a literal brace as {{{{ or }}}}"
            ) from None
        if self.resolution % 8:
            raise UsageError(f"`resolution` must be a multiple of 8 (the VAE's latent grid), not {self.resolution}")

    def record(self) -> dict:
        return asdict(self)


LARGE_UNET_PARAMS = 100_000_000  # SD1.5's UNet has 860M; the embedded one well under 10M


def resolve_hvp(hvp: str, device_type: str, unet_params: int) -> str:
    """``auto``: finite differences on a GPU or for a large base (they run with fused attention
    kernels and need no double-backward graph, so memory stays near a plain LoRA step);
    exact double backward otherwise."""
    if hvp != "auto":
        return hvp
    return "finite-diff" if device_type != "cpu" or unet_params > LARGE_UNET_PARAMS else "autograd"


def default(name: str):
    """The default of one TrainConfig field, for help texts."""
    return next(f.default for f in fields(TrainConfig) if f.name == name)
