"""The subspace math against closed forms."""

import pytest
import torch

from seqlib.capacity import capacity
from seqlib.subspace import (
    delta_weight,
    free_dimensions,
    max_cosine,
    orthonormal_basis,
    project_out,
    random_basis,
    regularized_projector,
)


@pytest.fixture
def earlier() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(40, 12, generator=g)  # three rank-4 bases side by side, m = 40


def test_regularized_projector_matches_orthonormal_form(earlier):
    P = regularized_projector(earlier, eps=1e-8)
    Q = orthonormal_basis(earlier)
    X = torch.randn(40, 5, dtype=torch.float64)
    torch.testing.assert_close(P @ X, project_out(X, Q), atol=1e-6, rtol=0)


def test_projector_is_symmetric_idempotent_and_annihilates_the_span(earlier):
    P = regularized_projector(earlier)
    torch.testing.assert_close(P, P.T, atol=1e-10, rtol=0)
    torch.testing.assert_close(P @ P, P, atol=1e-6, rtol=0)
    assert (P @ earlier.double()).abs().max() < 1e-6
    assert torch.linalg.matrix_rank(P, atol=1e-6, hermitian=True) == 40 - 12


def test_project_out_leaves_the_complement_alone(earlier):
    Q = orthonormal_basis(earlier)
    inside_complement = project_out(torch.randn(40, 3, dtype=torch.float64), Q)
    torch.testing.assert_close(project_out(inside_complement, Q), inside_complement, atol=1e-12, rtol=0)


def test_random_basis_is_orthonormal_and_orthogonal_to_earlier(earlier):
    Q = orthonormal_basis(earlier)
    B = random_basis(40, 4, Q, torch.Generator().manual_seed(1))
    torch.testing.assert_close(B.T @ B, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    assert max_cosine(B, earlier) < 1e-12


def test_orthonormal_basis_of_nearly_orthonormal_bases_takes_the_fast_path_exactly():
    g = torch.Generator().manual_seed(3)
    exact, _ = torch.linalg.qr(torch.randn(50, 12, generator=g, dtype=torch.float64))
    stored = torch.cat([exact.float().double(), torch.zeros(50, 4, dtype=torch.float64)], 1)  # float32 round-off
    Q = orthonormal_basis(stored)
    assert Q.shape == (50, 12)
    torch.testing.assert_close(Q.T @ Q, torch.eye(12, dtype=torch.float64), atol=1e-13, rtol=0)
    U, _, _ = torch.linalg.svd(stored[:, :12], full_matrices=False)
    torch.testing.assert_close(Q @ Q.T, U @ U.T, atol=1e-12, rtol=0)  # the same span as the SVD's


def test_orthonormal_basis_drops_degenerate_columns():
    b = torch.randn(10, 2, dtype=torch.float64)
    Q = orthonormal_basis(torch.cat([b, b, torch.zeros(10, 1, dtype=torch.float64)], dim=1))
    assert Q.shape == (10, 2)
    assert free_dimensions(10, Q) == 8


def test_empty_earlier_set_projects_nothing():
    Q = orthonormal_basis(torch.zeros(8, 0))
    X = torch.randn(8, 2)
    assert project_out(X, Q) is X
    assert free_dimensions(8, Q) == 8


def test_delta_weight_shape_and_value():
    A, B = torch.randn(6, 2), torch.randn(9, 2)
    d = delta_weight(A, B)
    assert d.shape == (6, 9)
    x = torch.randn(9)
    torch.testing.assert_close(d @ x, A @ (B.T @ x))


@pytest.mark.parametrize(("m", "r", "expected"), [(320, 4, 80), (768, 4, 192), (1280, 4, 320), (64, 4, 16), (10, 3, 3)])
def test_capacity_is_floor_m_over_r(m, r, expected):
    assert capacity(m, r) == expected


def test_max_cosine_detects_overlap():
    b = torch.randn(12, 3, dtype=torch.float64)
    assert max_cosine(b, b) == pytest.approx(1.0)


def test_fit_in_free_space_is_exact_inside_it_and_optimal_outside(earlier):
    from seqlib.subspace import fit_factors_in_free_space

    g = torch.Generator().manual_seed(3)
    Q = orthonormal_basis(earlier)
    B0 = random_basis(40, 4, Q, g)
    A0 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    A, B, error, _ = fit_factors_in_free_space(A0, B0.T, Q, 4)
    torch.testing.assert_close(A @ B.T, A0 @ B0.T, atol=1e-10, rtol=0)
    assert max_cosine(B, Q) < 1e-10 and error < 1e-7
    # a generic rank-6 residual: the error is what Q holds plus the singular values beyond r
    # (closed form, from a dense SVD of the n x m matrix the factor version never forms)
    up, down = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 40, generator=g, dtype=torch.float64)
    D = up @ down
    A, B, error, norm2 = fit_factors_in_free_space(up, down, Q, 4)
    P = torch.eye(40, dtype=torch.float64) - Q @ Q.T
    s = torch.linalg.svdvals(D @ P)
    expected = (torch.linalg.norm(D @ Q @ Q.T) ** 2 + (s[4:] ** 2).sum()).sqrt()
    assert float(torch.linalg.norm(D - A @ B.T)) == pytest.approx(float(expected), rel=1e-9)
    assert error == pytest.approx(float(expected / torch.linalg.norm(D)), rel=1e-6)
    assert norm2 == pytest.approx(float(torch.linalg.norm(D) ** 2), rel=1e-9)
    torch.testing.assert_close(B.T @ B, torch.eye(4, dtype=torch.float64), atol=1e-10, rtol=0)
    # a LoRA of smaller rank than ours: exact, and the basis is completed inside the free space
    A, B, error, _ = fit_factors_in_free_space(A0[:, :2], B0[:, :2].T, Q, 4, g)
    torch.testing.assert_close(A @ B.T, A0[:, :2] @ B0[:, :2].T, atol=1e-10, rtol=0)
    assert B.shape == (40, 4) and max_cosine(B, Q) < 1e-10 and error < 1e-7


def test_summed_factors_is_the_weighted_sum_of_each_residual():
    from seqlib.lora import summed_factors

    g = torch.Generator().manual_seed(0)
    concepts = [
        (
            {"a": torch.randn(6, 2, generator=g), "b": torch.randn(5, 3, generator=g)},
            {"a": torch.randn(8, 2, generator=g), "b": torch.randn(7, 3, generator=g)},
            w,
        )
        for w in (1.0, 0.5, -2.0)
    ]
    concepts.append(
        ({"a": torch.randn(6, 1, generator=g)}, {"a": torch.randn(8, 1, generator=g)}, 1.0)
    )  # a skipped layer
    got = summed_factors(concepts)
    for name in ("a", "b"):
        expected = sum(w * A[name] @ B[name].T for A, B, w in concepts if name in A)
        A, B = got[name]
        torch.testing.assert_close(A @ B.T, expected, atol=1e-5, rtol=1e-5)


def test_a_weight_patch_adds_the_residual_and_reverts_it():
    from seqlib.errors import DataError
    from seqlib.lora import WeightPatch

    g = torch.Generator().manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 6).to(torch.bfloat16))
    w0 = [m.weight.detach().clone() for m in net]
    factors = {
        "0": (torch.randn(6, 3, generator=g), torch.randn(8, 3, generator=g)),
        "1": (torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)),
    }
    patch = WeightPatch(net)
    patch.apply(factors)
    for (A, B), module, w in zip(factors.values(), net, w0):
        expected = (w.float() + A @ B.T).to(w.dtype)
        torch.testing.assert_close(module.weight.detach(), expected, atol=1e-5, rtol=1e-2)
    patch.revert()
    torch.testing.assert_close(net[0].weight.detach(), w0[0], atol=1e-6, rtol=0)
    with pytest.raises(DataError, match="non-finite"):
        patch.apply({"0": (torch.full((6, 1), float("nan")), torch.ones(8, 1))})
    torch.testing.assert_close(net[0].weight.detach(), w0[0], atol=1e-6, rtol=0)  # refused before touching
