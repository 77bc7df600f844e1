"""What a concept's layers actually see: input statistics, principal directions, crosstalk.

Exact orthogonality (``B_iᵀ B_j = 0``) silences concept i only on inputs inside span(B_j);
the interference concept i causes on concept j is governed by j's input energy outside
its basis (paper, Theorem 2). These helpers measure that from a compact summary kept
with each concept: per layer, the top-k eigenpairs of the uncentred second moment
``Σ = E[x xᵀ]`` of the layer's inputs on the concept's own images and prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn


class SecondMoments:
    """Accumulates Σ = E[x xᵀ] (m x m, float64) of each layer's inputs via forward hooks."""

    def __init__(self, layers: list[tuple[str, nn.Linear]]) -> None:
        self.layers = layers
        self.sums = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for name, m in layers}
        self.counts = dict.fromkeys(self.sums, 0)

    @contextmanager
    def recording(self) -> Iterator[SecondMoments]:
        def hook(name: str):
            def fn(module: nn.Module, args: tuple, output: Tensor) -> None:
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double().cpu()  # (tokens, m)
                self.sums[name] += x.T @ x
                self.counts[name] += x.shape[0]

            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in self.layers]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def moment(self, name: str) -> Tensor:
        return self.sums[name] / max(self.counts[name], 1)


def top_directions(sigma: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-k eigenvectors (m x k) and eigenvalues (k,) of a PSD matrix, largest first."""
    vals, vecs = torch.linalg.eigh(sigma.double())
    order = torch.argsort(vals, descending=True)[:k]
    return vecs[:, order], vals[order].clamp_min(0.0)


def activation_basis(sigma: Tensor, Q: Tensor, r: int) -> Tensor:
    """The r principal directions of Σ inside the complement of span(Q) (m x r, orthonormal).

    The paper's optimum for the linear case (Appendix, "feasible rank-r projectors"):
    the top eigenvectors of P⊥ Σ P⊥ with P⊥ = I − Q Qᵀ.
    """
    m = sigma.shape[0]
    if r == 0:
        return torch.zeros(m, 0, dtype=torch.float64)
    P = torch.eye(m, dtype=torch.float64) - Q @ Q.T if Q.shape[1] else torch.eye(m, dtype=torch.float64)
    U, _ = top_directions(P @ sigma.double() @ P, r)
    U = U - Q @ (Q.T @ U) if Q.shape[1] else U  # remove round-off along span(Q)
    B, _ = torch.linalg.qr(U)
    return B


def residual_energy(A: np.ndarray, B: np.ndarray, U: np.ndarray, energies: np.ndarray) -> float:
    """E‖A Bᵀ x‖² for x with second moment Σ ≈ U diag(energies) Uᵀ: Σ_k λ_k ‖A Bᵀ u_k‖²."""
    Y = A @ (B.T @ U)  # (n, k)
    return float((np.square(Y).sum(axis=0) * energies).sum())


def crosstalk(
    layers: list[str],
    source: tuple[dict, dict],
    target: tuple[dict, dict],
    summary: dict[str, tuple[np.ndarray, np.ndarray]],
    silent: frozenset[str] = frozenset(),
) -> tuple[float, dict[str, float]]:
    """Crosstalk of concept ``source`` onto concept ``target``, overall and per layer.

    Per layer: the energy of the source's residual on the target's recorded inputs,
    relative to the target's own residual there. Overall: the same ratio of the sums over
    layers (an energy-weighted mean, so layers where the target barely acts don't dominate).
    ``silent``: layers where the source's residual is zero on the target's prompt (its
    ``--kv-scope token`` K/V layers: the target's prompt lacks the source's token).
    """
    (Ai, Bi), (Aj, Bj) = source, target
    per_layer, num, den = {}, 0.0, 0.0
    for name in layers:
        U, lam = summary[name]
        cross = 0.0 if name in silent else residual_energy(Ai[name], Bi[name], U, lam)
        own = residual_energy(Aj[name], Bj[name], U, lam)
        per_layer[name] = cross / own if own > 0 else float("inf") if cross > 0 else 0.0
        num, den = num + cross, den + own
    return (num / den if den > 0 else 0.0), per_layer


def silent_layers(layers: list[str], kv_scope: str) -> frozenset[str]:
    """The layers where a concept's residual is zero on prompts without its token."""
    from seqlib.lora import reads_text

    return frozenset(n for n in layers if reads_text(n)) if kv_scope == "token" else frozenset()
