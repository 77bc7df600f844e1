"""Training hyper-parameters and layer sets (torch-free, so the CLI can show choices and
defaults without importing torch)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields

from seqlib.choices import BASIS_INITS, CONTEXTS, CROPS, HVP_OPTIONS, KV_SCOPE_OPTIONS, OPTIMIZERS, PRECISIONS
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


# seqlib.embedded's EMBEDDED_BASE_ID and LAB_BASE_ID, without importing it
TINY_BASE_ID = "seqlib-world-tiny-sd-v3"
LAB_BASE_ID = "seqlib-world-lab-sd-v1"


def default_layer_set(base_kind: str, source: str = TINY_BASE_ID) -> str:
    """The paper's set on a real base. The tiny embedded base's attention (8×8 and 4×4 only)
    cannot draw a concept's parts on its own, so there the feed-forward layers join it. On the
    lab base the cross-attention keys and values alone, token-local (``--kv-scope auto``): at 8
    concepts every one renders all-active exactly as alone, and alone as well as with
    ``attention`` (RESULTS, "Token-local K/V")."""
    if base_kind != "embedded":
        return "attention"
    return {TINY_BASE_ID: "attention+ff", LAB_BASE_ID: "cross-kv"}.get(source, "attention")


# TrainConfig fields with a closed set of values (seqlib.choices); `method` has its registry.
CHOICES = {
    "optimizer": OPTIMIZERS,
    "context": CONTEXTS,
    "hvp": HVP_OPTIONS,
    "basis_init": BASIS_INITS,
    "precision": PRECISIONS,
    "crop": CROPS,
    "kv_scope": KV_SCOPE_OPTIONS,
}


def hyper(default, help: str, low: float | None = None, flag: str | None = None, **bounds):
    """A TrainConfig field declared once: its default, the help `seqlib add --help` shows, its
    flag (default ``--name-with-dashes``) and bounds (``low``, ``high``: inclusive), which the
    CLI's option and ``TrainConfig`` itself both enforce (peft's ``field(metadata={"help": …})``)."""
    return field(default=default, metadata={"help": help, "low": low, "flag": flag, **bounds})


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one ``add``; every field is saved with the concept.

    Defaults were picked by measurement on the embedded base (docs/method.md, "Defaults, and why"): Adam-
    preconditioned steps (``optimizer="sgd"``: the paper's plain steps, with α≈3 there).
    """

    # seqlora | alternating (no cross-Hessian) | frozen-basis (Po et al. 2024: B fixed) | lora (no projection)
    method: str = "seqlora"
    steps: int = hyper(60, "Training rounds, a fresh batch each.", low=1)
    optimizer: str = hyper(
        "adam",
        "adam: every step (and the tentative inner step, with the cross-Hessian along it) preconditioned by "
        "Adam's diagonal. sgd: the paper's plain gradient steps, clipped by --max-grad-norm; use α≈3 there.",
    )
    # base: learn on W0 alone, bases still orthogonal (what a user's `add mine ./photos` needs: measured,
    # docs/method.md, "Defaults, and why") | library: on top of W0 + Σ earlier residuals (the paper's setting)
    context: str = hyper(
        "base",
        "What the concept is learned on top of: the bare base (the default: it renders as itself alone and in any "
        "subset as far as crosstalk allows), or the library's earlier concepts (the paper's continual setting). "
        "Bases stay orthogonal either way.",
    )
    alpha: float = hyper(1e-3, "α: step size of A, and of the inner step in the reduced gradient.", 0)
    beta: float = hyper(1e-3, "β: step size of B (0: B stays where it starts).", 0)
    K: int = hyper(3, "K: bilevel iterations per round (paper: 3).", 1, flag="-K")
    S_B: int = hyper(2, "S_B: local B iterations per bilevel iteration (paper: 2).", 1, flag="--s-b")
    S_A: int = hyper(2, "S_A: local A iterations per bilevel iteration (paper: 2).", 1, flag="--s-a")
    lr_embed: float = hyper(1e-3, "Step size of the learned token embedding.", 0)
    max_grad_norm: float = hyper(0.2, "sgd: clip each step's gradient norm (0: unclipped).", 0)
    hvp: str = hyper(
        "auto",
        "Cross-Hessian by double backward (exact, math attention), by a central difference of ∇_B L "
        "(no double backward: fused attention, memory near a LoRA step; 2 passes), or by a one-sided one "
        "(forward-diff: the first B-step shares the tentative step's batch and backward, so its cross-Hessian "
        "costs 1 pass). auto: finite-diff on a GPU or for a UNet over 100M parameters, autograd otherwise.",
    )
    batch_size: int = hyper(4, "Images per round.", 1)
    # torch seeds are 64-bit; image k uses seed + k, so leave room above
    seed: int = hyper(0, "Seed of the basis init, the batches and the noise.", 0, high=2**63 - 1)
    init_word: str = "thing"
    prompt_template: str = hyper("a photo of {token}", "Training prompt; {token} becomes <NAME>.")
    resolution: int = hyper(64, "Training resolution in pixels (default: the base's).", 8)
    basis_init: str = hyper(
        "activation",
        "Start B random in the free space, or as the top principal directions of the concept's layer inputs there "
        "(methods without a projection always start random: their free space is everything).",
    )
    protect: int = hyper(
        0, "Also keep B orthogonal to the top-k input directions of every earlier concept (costs capacity).", 0
    )
    activation_k: int = hyper(
        8, "Principal input directions recorded per layer (crosstalk diagnostics; the most --protect can use).", 1
    )
    precision: str = hyper(
        "fp32", "dtype of the frozen base (fp16 on GPUs only); the LoRA factors are always trained in fp32."
    )
    gradient_checkpointing: bool = hyper(False, "Recompute UNet activations in backward: less memory, slower.")
    crop: str = hyper("center", "Square crop of each photo: centre, or random 80-100%.")
    flip: bool = hyper(False, "Random horizontal flips (off: many concepts are asymmetric).")
    aug_copies: int = hyper(4, "Augmented views encoded per photo with --crop random/--flip.", 1)
    kv_scope: str = hyper(
        "auto",
        "Where the cross-attention key/value residual acts: every text position (a plain LoRA), or only at "
        "<NAME>'s token (nothing on prompts without it; composes in seqlib, exports apply it everywhere). "
        "auto: token on a `--layers cross-kv` library, where it keeps every concept exactly as it is alone.",
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"`method` must be one of {', '.join(METHODS)}, not {self.method!r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise UsageError(f"`{name}` must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for f in fields(self):  # the bounds the CLI's options enforce, for API callers too
            value, low, high = getattr(self, f.name), f.metadata.get("low"), f.metadata.get("high")
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            if not math.isfinite(value):
                raise UsageError(f"`{f.name}` must be a finite number, not {value}")
            if (low is not None and value < low) or (high is not None and value > high):
                raise UsageError(f"`{f.name}` must be >= {low}" + (f" and <= {high}" if high is not None else ""))
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


def resolve_kv_scope(kv_scope: str, layer_names: list[str]) -> str:
    """``auto``: ``token`` when every adapted layer is a cross-attention key/value (a ``cross-kv``
    library: a prompt naming one concept then renders exactly as that concept alone, whatever
    else is composed; measured on the lab base, RESULTS "Token-local K/V"); ``all`` otherwise,
    where the other layers act at every position anyway and a plain LoRA file stays exact."""
    if kv_scope != "auto":
        return kv_scope
    return "token" if layer_names and all(LAYER_SETS["cross-kv"].search(n) for n in layer_names) else "all"
