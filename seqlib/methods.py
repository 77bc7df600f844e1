"""Training methods as objects: one registry the trainer, the format, the CLI and the benchmarks
derive their choices from (torch-free, so `seqlib --help` stays instant).

A method is a set of answers to the questions the trainer asks (README, "Methods"): is the new
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
    summary: str  # one sentence for --help and the README table
    projects: bool  # B kept orthogonal to every earlier orthogonal concept; uses capacity
    moves_basis: bool  # B takes S_B steps per bilevel iteration (False: fixed after init)
    cross_hessian: bool  # the −α H[g_A] term of the reduced gradient ∇Φ
    basis: Literal["init", "frozen"] = "init"  # init: --basis-init (random | activation); frozen: shared matrix

    def passes_per_iteration(self, S_B: int, S_A: int, hvp: str) -> int:
        """UNet forward+backward passes of one bilevel iteration (``seqlib.steps``): the
        tentative step, each B-step (plus the cross-Hessian's: a double backward costs about
        three, a central difference two), each A-step. The CPU cost estimate multiplies it."""
        per_b_step = 1 + ((3 if hvp == "autograd" else 2) if self.cross_hessian else 0)
        return 1 + (S_B * per_b_step if self.moves_basis else 0) + S_A


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
