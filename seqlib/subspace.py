"""The subspace math of SeqLoRA as small pure functions (torch, no state).

Shapes follow the paper: a layer ``W0`` is n x m (m = in_features); a concept owns
``A`` (n x r, the coefficients) and ``B`` (m x r, the basis); its residual is ``A Bᵀ``.
Projections run in float64: the orthogonality promise (``B_iᵀ B_j = 0``) must survive
hundreds of projected steps at float32 storage precision.
"""

from __future__ import annotations

import torch
from torch import Tensor


def delta_weight(A: Tensor, B: Tensor) -> Tensor:
    """The residual a concept adds to ``W0``: ``A Bᵀ`` (n x m)."""
    return A @ B.T


def orthonormal_basis(B_int: Tensor, tol: float = 1e-6) -> Tensor:
    """An orthonormal basis Q (m x k) of span(B_int), B_int the earlier bases side by side.

    Columns whose energy is below ``tol`` relative to the largest are dropped, so a
    degenerate earlier basis cannot inject noise directions into the projector.
    """
    if B_int.shape[1] == 0:
        return B_int.new_zeros((B_int.shape[0], 0), dtype=torch.float64)
    B = B_int.double()
    norms = B.norm(dim=0)
    kept = B[:, norms > tol * norms.max()]  # zero columns: the layers a --when-full skip left out
    G = kept.T @ kept
    if (G - torch.eye(G.shape[0], dtype=G.dtype)).abs().max() < 1e-3:
        # The common case: earlier bases are orthonormal and mutually orthogonal up to float32
        # storage. Cholesky-QR then gives an orthonormal basis of the same span, accurate to
        # float64 round-off because G is this well conditioned: a k x k Cholesky instead of an
        # m x k SVD, 5x faster at SD1.5's widths with 80 concepts.
        L = torch.linalg.cholesky(G)
        return torch.linalg.solve_triangular(L, kept.T, upper=False).T
    U, S, _ = torch.linalg.svd(B, full_matrices=False)
    return U[:, S > tol * S.max()]


def project_out(X: Tensor, Q: Tensor) -> Tensor:
    """P⊥ X with P⊥ = I − Q Qᵀ: removes from X's columns every direction in span(Q)."""
    if Q.shape[1] == 0:
        return X
    Xd = X.double()
    return (Xd - Q @ (Q.T @ Xd)).to(X.dtype)


def regularized_projector(B_int: Tensor, eps: float = 1e-8) -> Tensor:
    """The paper's P⊥ = I − B_int (B_intᵀ B_int + εI)⁻¹ B_intᵀ as an explicit m x m matrix.

    Equal to ``I − Q Qᵀ`` up to O(ε); kept for tests and for readers checking Algorithm 1.
    """
    Bd = B_int.double()
    m, k = Bd.shape
    gram = Bd.T @ Bd + eps * torch.eye(k, dtype=torch.float64)
    return torch.eye(m, dtype=torch.float64) - Bd @ torch.linalg.solve(gram, Bd.T)


def free_dimensions(in_features: int, Q: Tensor) -> int:
    """Dimensions of the input space no earlier concept uses: m − rank(B_int)."""
    return in_features - Q.shape[1]


def random_basis(m: int, r: int, Q: Tensor, generator: torch.Generator) -> Tensor:
    """r orthonormal directions drawn uniformly from the complement of span(Q) (m x r)."""
    if r == 0:
        return torch.zeros(m, 0, dtype=torch.float64)
    X = torch.randn(m, r, generator=generator, dtype=torch.float64)
    X = project_out(X, Q)
    B, _ = torch.linalg.qr(X)
    return project_out(B, Q)  # QR mixes columns only; re-project to kill round-off


def fit_factors_in_free_space(
    up: Tensor, down: Tensor, Q: Tensor, r: int, gen: torch.Generator | None = None
) -> tuple[Tensor, Tensor, float, float]:
    """The rank-r residual A Bᵀ with B orthonormal in the complement of span(Q) closest to
    ΔW = up @ down (n x k by k x m) in Frobenius norm: B = the top-r right singular vectors of
    ΔW P⊥, A = ΔW B (Eckart–Young on ΔW P⊥; the part ΔW Q Qᵀ cannot be represented at all).

    ΔW P⊥ = Q_u (R_u R_dᵀ) Q_dᵀ with Q_u R_u = up and Q_d R_d = P⊥ downᵀ, so its top right
    singular vectors are Q_d times those of the k x k core: two thin QRs and a k x k SVD,
    O((n + m) k²), instead of an SVD of the n x m matrix. Returns (A, B, relative error
    ‖ΔW − A Bᵀ‖ / ‖ΔW‖, ‖ΔW‖²); with k < r the basis is completed by random free directions (A = 0 there).
    """
    U, D = up.double(), down.double()
    Qu, Ru = torch.linalg.qr(U)
    Qd, Rd = torch.linalg.qr(project_out(D.T, Q))
    _, _, Vh = torch.linalg.svd(Ru @ Rd.T)
    B = project_out(Qd @ Vh[:r].T, Q)
    # Directions of ΔW inside span(Q) leave only round-off after the projection (an export of
    # the library's own concepts): QR then returns arbitrary vectors, shrunk by the projection
    # to norms of 0.1-0.5. Keep the ones that survived whole; free room completes the rest.
    B = B[:, B.norm(dim=0) > 0.5]
    B = torch.linalg.qr(B)[0] if B.shape[1] else B
    if B.shape[1] < r:  # a LoRA of smaller rank than ours: the rest of B is free room, unused
        B = torch.cat([B, random_basis(D.shape[1], r - B.shape[1], orthonormal_basis(torch.cat([Q, B], 1)), gen)], 1)
    A = U @ (D @ B)
    total = float(((U.T @ U) * (D @ D.T)).sum())  # ‖ΔW‖²_F from the k x k Gram matrices
    kept = float(A.square().sum())  # ‖ΔW B‖² = ‖ΔW B Bᵀ‖² for orthonormal B (Pythagoras)
    return A, B, (max(total - kept, 0.0) / total) ** 0.5 if total > 0 else 0.0, total


FROZEN_BASIS_SEED = 20240101


def shared_orthogonal(m: int, seed: int = FROZEN_BASIS_SEED) -> Tensor:
    """The m x m orthogonal matrix every frozen-basis concept of width m takes columns from
    (Orthogonal Adaptation, Po et al. 2024); seeded, so any machine rebuilds it."""
    g = torch.Generator().manual_seed(seed + m)
    Q, R = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    return Q * torch.sign(torch.diagonal(R))  # unique QR: positive diagonal of R


def frozen_basis(m: int, columns: list[int], Q: Tensor) -> Tensor:
    """Columns of the shared orthogonal matrix, kept orthonormal in the free space.

    In a library of frozen-basis concepts only, the projection changes nothing (the shared
    matrix's columns are mutually orthogonal); next to other methods' bases it keeps the
    orthogonality promise."""
    B = project_out(shared_orthogonal(m)[:, columns], Q)
    B, R = torch.linalg.qr(B)
    B = B * torch.sign(torch.diagonal(R))  # unique QR: columns already orthonormal come back unchanged
    return project_out(B, Q)


def max_cosine(B_i: Tensor, B_j: Tensor) -> float:
    """Largest |cos| between any column of B_i and any column of B_j (0 = orthogonal)."""
    Bi = B_i.double() / B_i.double().norm(dim=0, keepdim=True).clamp_min(1e-30)
    Bj = B_j.double() / B_j.double().norm(dim=0, keepdim=True).clamp_min(1e-30)
    return float((Bi.T @ Bj).abs().max()) if Bi.numel() and Bj.numel() else 0.0
