"""Every closed set of choices, defined once. The CLI's ``click.Choice``s, the format's
``Literal`` fields and the validation of ``TrainConfig`` derive from these tuples; training
methods have their own registry (``seqlib.methods``). No imports: everything may import this.
"""

from __future__ import annotations

FORMAT_VERSION = 4  # the store format this seqlib writes (format_spec.md)
# What it reads: versions 1 and 2 hold the records inside each commit (`seqlib.format_legacy`);
# version 4 is version 3 plus the library's shared reserve (LibraryConfig.reserve).
READABLE_VERSIONS = (1, 2, 3, 4)
OPTIMIZERS = ("adam", "sgd")  # adam: Adam-preconditioned steps | sgd: plain (clipped) steps, as in the paper
CONTEXTS = ("library", "base")  # train on W0 + Σ earlier residuals (the paper) | on W0 alone
# How the cross-Hessian-vector product is taken (recorded as used): double backward, a central
# difference of ∇_B L (two passes), or a one-sided one reusing the tentative step's ∇_B (one).
HVPS = ("autograd", "finite-diff", "forward-diff")
HVP_OPTIONS = ("auto", *HVPS)  # what a user may ask for; `auto` is resolved before training
BASIS_INITS = ("activation", "random")
PRECISIONS = ("fp32", "fp16", "bf16")
CROPS = ("center", "random")
# Where a concept's cross-attention key/value residual acts: on every text position (a plain
# LoRA) | only at its own token's positions (TARA's mask; needs seqlib's processor to compose).
KV_SCOPES = ("all", "token")
KV_SCOPE_OPTIONS = ("auto", *KV_SCOPES)  # `auto` is resolved at `add` from the library's layers
# What `add` does on a layer with fewer than r free dimensions.
WHEN_FULL = ("shrink", "skip", "refuse")
BASE_KINDS = ("embedded", "diffusers", "hub", "single_file")
LORA_FORMATS = ("kohya", "diffusers")
LAYOUTS = ("sum", "row")  # compose: every residual summed into one image | one tile per concept
# compose --scheduler name -> diffusers class
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "ddpm": "DDPMScheduler",
}
