"""Training methods as objects: one registry the trainer, the format, the CLI and the benchmarks
derive their choices from (torch-free, so `seqlib --help` stays instant).

A method is a set of answers to the questions the trainer asks (docs/method.md, "Methods"): is the new
basis projected onto what earlier concepts left free (and so uses capacity), is B trained at
all, does the reduced gradient take the cross-Hessian term, and where does B start. Adding a
method is one ``register`` call; nothing else branches on method names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one sentence for --help and the methods table (docs/method.md)
    projects: bool  # B kept orthogonal to every earlier orthogonal concept; uses capacity
    moves_basis: bool  # B takes S_B steps per bilevel iteration (False: fixed after init)
    cross_hessian: bool  # the −α H[g_A] term of the reduced gradient ∇Φ
    basis: Literal["init", "frozen"] = "init"  # init: --basis-init (random | activation); frozen: shared matrix
    joint: bool = False  # one gradient step on A, B and the token together (no bilevel split)

    def passes_per_iteration(self, S_B: int, S_A: int, hvp: str) -> int:
        """UNet forward+backward passes of one bilevel iteration (``seqlib.steps``): the
        tentative step, each B-step plus its cross-Hessian's (double backward ≈ 3, central
        difference 2, one-sided 1 on the first B-step, whose base point the tentative step
        gives, and 2 later), each A-step. The CPU cost estimate multiplies it."""
        if not self.moves_basis:
            return 1 + S_A
        if self.joint or not self.cross_hessian:
            return 1 + S_B + S_A  # joint: as many steps as alternating, each moving everything
        if hvp == "forward-diff":
            return 1 + (1 + 1) + (S_B - 1) * (1 + 2) + S_A
        return 1 + S_B * (1 + (3 if hvp == "autograd" else 2)) + S_A


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        from seqlib.errors import UsageError

        raise UsageError(f"method must be one of {', '.join(METHODS)}, not {name!r}") from None


register(Method("seqlora", "bilevel with the cross-Hessian (the paper's Algorithm 1)", True, True, True))
register(
    Method("alternating", "the same without the cross-Hessian (the paper's Continual Alternating)", True, True, False)
)
register(
    Method(
        "frozen-basis",
        "B fixed to columns of a shared orthogonal matrix, only A trained (Orthogonal Adaptation, Po et al. 2024)",
        True,
        False,
        False,
        basis="frozen",
    )
)
register(Method("lora", "no projection: plain LoRA, the naive sum (uses no capacity)", False, True, False))
register(
    Method(
        "lora-joint",
        "plain LoRA as it is usually trained: A, B and the token in one step, no projection (uses no capacity)",
        False,
        True,
        False,
        joint=True,
    )
)
