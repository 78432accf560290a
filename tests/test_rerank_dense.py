"""The dense re-rank route (LoHa, LoKr, full and every base-aware module) gives the best rank-k approximation a full
SVD gives: its relative Frobenius error equals torch.linalg.svd's truncation error to 1e-5, on wide, tall, square,
rank-deficient, ill-conditioned and zero inputs, batched or not; the energy policy picks the same ranks."""

from __future__ import annotations

import pytest
import torch

from lib_copylora.core.rerank import DenseTerm, RankPolicy, dense_svd, rerank_terms, truncate

TOLERANCE = 1e-5


def _with_spectrum(out_dim: int, in_dim: int, values: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = min(out_dim, in_dim)
    left, _ = torch.linalg.qr(torch.randn(out_dim, n, generator=g, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(in_dim, n, generator=g, dtype=torch.float64))
    return ((left * values[:n]) @ right.T).to(torch.float32)


def _matrix(case: str, out_dim: int, in_dim: int, seed: int = 0) -> torch.Tensor:
    n = min(out_dim, in_dim)
    index = torch.arange(n, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    if case == "gaussian":
        return torch.randn(out_dim, in_dim, generator=g)
    if case == "rank 5":
        values = torch.zeros(n, dtype=torch.float64)
        values[:5] = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.25])
        return _with_spectrum(out_dim, in_dim, values, seed)
    if case == "ill-conditioned":  # σᵢ = 10^(−i/2): σ₁₆/σ₁ = 1e-8, below float32's reach in a Gram
        return _with_spectrum(out_dim, in_dim, 10 ** (-index / 2), seed)
    if case == "clustered at the cut":  # σ₈ … σ₂₀ nearly equal: the truncation is not unique, its error is
        values = torch.ones(n, dtype=torch.float64) * 1e-3
        values[:8] = 10 ** (-torch.arange(8, dtype=torch.float64) / 4)
        values[8:20] = 0.1 * (1 + 1e-6 * torch.arange(12, dtype=torch.float64))
        return _with_spectrum(out_dim, in_dim, values, seed)
    if case == "dora-like":  # a base weight rescaled per input column plus a low-rank part, as DoRA merges give
        base = torch.randn(out_dim, in_dim, generator=g) * 0.02
        scales = torch.randn(in_dim, generator=g) * 0.05
        return base * scales + torch.randn(out_dim, 8, generator=g) @ torch.randn(8, in_dim, generator=g) * 1e-3
    if case == "zero":
        return torch.zeros(out_dim, in_dim)
    raise AssertionError(case)


def _svd_error(matrix: torch.Tensor, rank: int) -> float:
    values = torch.linalg.svdvals(matrix.double())
    total = float(values.square().sum().sqrt())
    return 0.0 if total == 0 else float(values[rank:].square().sum().sqrt()) / total


def _error(matrix: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> float:
    total = float(matrix.double().norm())
    return 0.0 if total == 0 else float((matrix.double() - up.double() @ down.double()).norm()) / total


CASES = ("gaussian", "rank 5", "ill-conditioned", "clustered at the cut", "dora-like", "zero")
SHAPES = ((96, 96), (200, 48), (48, 200), (33, 70))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", CASES)
def test_truncation_error_equals_the_full_svds(case, shape):
    matrix = _matrix(case, *shape)
    for rank in (1, 16):
        up, down = truncate(dense_svd(matrix[None], rank), rank)
        assert up.shape == (1, shape[0], rank) and down.shape == (1, rank, shape[1])
        assert abs(_error(matrix, up[0], down[0]) - _svd_error(matrix, rank)) <= TOLERANCE


@pytest.mark.parametrize("case", ("gaussian", "ill-conditioned", "rank 5"))
def test_singular_values_are_the_svds(case):
    matrix = _matrix(case, 120, 64)
    spectrum = dense_svd(matrix[None], 16)
    expected = torch.linalg.svdvals(matrix.double())[:16]
    torch.testing.assert_close(spectrum.values[0, :16].double(), expected, atol=1e-6 * float(expected[0]), rtol=0)


def test_a_batch_of_one_shape_gives_each_module_its_own_truncation():
    matrices = [_matrix(case, 64, 150, seed=i) for i, case in enumerate(("gaussian", "rank 5", "ill-conditioned"))]
    terms = {f"m{i}": DenseTerm(m, (64, 150)) for i, m in enumerate(matrices)}
    together = rerank_terms(terms, RankPolicy(new_rank=6))
    for (name, term), matrix in zip(terms.items(), matrices):
        up, down = together[name]
        assert abs(_error(matrix, up, down) - _svd_error(matrix, min(6, 5 if name == "m1" else 6))) <= TOLERANCE
        alone = rerank_terms({name: term}, RankPolicy(new_rank=6))[name]
        torch.testing.assert_close(alone[0] @ alone[1], up @ down, atol=1e-6, rtol=0)


def test_conv_deltas_keep_their_flattened_layout():
    matrix = _matrix("ill-conditioned", 24, 16 * 9)
    policy = RankPolicy(new_rank=8, new_conv_rank=4)
    up, down = rerank_terms({"conv": DenseTerm(matrix, (24, 16, 3, 3))}, policy)["conv"]
    assert up.shape == (24, 4) and down.shape == (4, 144)
    assert abs(_error(matrix, up, down) - _svd_error(matrix, 4)) <= TOLERANCE


@pytest.mark.parametrize("energy", (0.5, 0.9, 0.999))
def test_the_energy_policy_picks_the_rank_the_full_svd_would(energy):
    # σᵢ² = 10^(−2i/7): no cumulative share lands within float32 rounding of 0.5, 0.9 or 0.999 (no ties)
    matrix = _with_spectrum(80, 60, 10 ** (-torch.arange(60, dtype=torch.float64) / 7), seed=3)
    policy = RankPolicy(energy=energy)
    expected = policy.choose_rank(torch.linalg.svdvals(matrix), (80, 60))
    up, down = rerank_terms({"m": DenseTerm(matrix, (80, 60))}, policy)["m"]
    assert up.shape[1] == expected and abs(_error(matrix, up, down) - _svd_error(matrix, expected)) <= TOLERANCE


def test_full_rank_is_lossless():
    matrix = _matrix("gaussian", 40, 30)
    up, down = rerank_terms({"m": DenseTerm(matrix, (40, 30))}, RankPolicy(new_rank=30))["m"]
    torch.testing.assert_close(up @ down, matrix, atol=1e-5, rtol=0)


@pytest.mark.parametrize("magnitude", (1e-30, 1e25))
def test_tiny_and_huge_deltas_whose_gram_leaves_float32_re_rank_the_same(magnitude):
    matrix = _matrix("ill-conditioned", 50, 30)
    up, down = rerank_terms({"m": DenseTerm(matrix * magnitude, (50, 30))}, RankPolicy(new_rank=4))["m"]
    assert torch.isfinite(up).all() and torch.isfinite(down).all()
    assert abs(_error(matrix * magnitude, up, down) - _svd_error(matrix, 4)) <= TOLERANCE
