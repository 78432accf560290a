"""SVD re-rank: the QR-core route equals a dense truncated SVD, full rank is lossless, the policies pick ranks."""

import pytest
import torch

from lib_copylora.core.errors import MergeError
from lib_copylora.core.rerank import (
    DenseTerm, LowRankTerm, RankPolicy, dense_svd, low_rank_svd, rerank_terms, truncate)


def _factors(out_dim, rank, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_dim, rank, generator=g), torch.randn(rank, n, generator=g)


def _best_rank_k(delta, k):
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return (u[:, :k] * s[:k]) @ vh[:k]


def test_low_rank_svd_matches_dense_svd_singular_values():
    up, down = _factors(12, 5, 9, seed=0)
    spectrum = low_rank_svd(up[None], down[None])
    dense = torch.linalg.svdvals(up @ down)
    assert torch.allclose(spectrum.values[0], dense[:5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_truncation_equals_best_rank_k_approximation(k):
    up, down = _factors(16, 6, 10, seed=k)
    spectrum = low_rank_svd(up[None], down[None])
    one = spectrum._make(t[0] for t in spectrum)
    u, d = truncate(one, k)
    assert u.shape == (16, k) and d.shape == (k, 10)
    expected = _best_rank_k(up @ down, k)
    err = (u @ d).double() - expected
    assert err.norm() / expected.norm() < 1e-5


def test_full_rank_rerank_is_lossless():
    up, down = _factors(8, 4, 7, seed=3)
    terms = {"m": LowRankTerm(up, down, (8, 7))}
    (u, d), = rerank_terms(terms, RankPolicy(new_rank=4)).values()
    assert torch.allclose(u @ d, up @ down, rtol=1e-5, atol=1e-5)


def test_rank_above_the_available_rank_is_capped():
    up, down = _factors(8, 3, 7, seed=4)
    (u, d), = rerank_terms({"m": LowRankTerm(up, down, (8, 7))}, RankPolicy(new_rank=50)).values()
    assert u.shape == (8, 3) and torch.allclose(u @ d, up @ down, rtol=1e-5, atol=1e-5)


def test_batched_group_equals_one_at_a_time():
    terms = {f"m{i}": LowRankTerm(*_factors(10, 4, 6, seed=10 + i), (10, 6)) for i in range(3)}
    together = rerank_terms(terms, RankPolicy(new_rank=2))
    for name, term in terms.items():
        (u, d), = rerank_terms({name: term}, RankPolicy(new_rank=2)).values()
        assert torch.allclose(u @ d, together[name][0] @ together[name][1], atol=1e-5)


def test_dense_terms_take_the_dense_route_with_the_same_result():
    up, down = _factors(9, 5, 11, seed=7)
    low = rerank_terms({"m": LowRankTerm(up, down, (9, 11))}, RankPolicy(new_rank=2))["m"]
    dense = rerank_terms({"m": DenseTerm(up @ down, (9, 11))}, RankPolicy(new_rank=2))["m"]
    assert torch.allclose(low[0] @ low[1], dense[0] @ dense[1], atol=1e-4)
    assert torch.allclose(dense_svd((up @ down)[None]).values[0][:5], low_rank_svd(up[None], down[None]).values[0],
                          atol=1e-4)


def test_conv_rank_applies_to_kxk_convs_only():
    policy = RankPolicy(new_rank=4, new_conv_rank=2)
    assert policy.cap_for((8, 4, 3, 3)) == 2
    assert policy.cap_for((8, 4, 1, 1)) == 4
    assert policy.cap_for((8, 4)) == 4
    assert RankPolicy(new_rank=4).cap_for((8, 4, 3, 3)) == 4


def test_energy_policy_keeps_the_smallest_rank_holding_the_share():
    values = torch.tensor([3.0, 2.0, 1.0, 0.5])  # squares 9, 4, 1, 0.25 of 14.25
    assert RankPolicy(energy=0.6).choose_rank(values, (4, 4)) == 1  # 9 / 14.25 = 0.63
    assert RankPolicy(energy=0.7).choose_rank(values, (4, 4)) == 2  # 13 / 14.25 = 0.91
    assert RankPolicy(energy=0.95).choose_rank(values, (4, 4)) == 3  # 14 / 14.25 = 0.98
    assert RankPolicy(energy=1.0).choose_rank(values, (4, 4)) == 4
    assert RankPolicy(new_rank=2, energy=0.99).choose_rank(values, (4, 4)) == 2  # capped
    assert RankPolicy(energy=0.9).choose_rank(torch.zeros(4), (4, 4)) == 1  # a zero delta keeps one direction


@pytest.mark.parametrize("kwargs", [{"new_rank": 0}, {"new_rank": -3}, {"new_conv_rank": 0}, {"energy": 0.0},
                                    {"energy": 1.5}, {"new_rank": 2.5}])
def test_bad_policies_are_refused(kwargs):
    with pytest.raises(MergeError):
        RankPolicy(**kwargs)


def test_non_finite_input_is_refused_naming_the_module():
    up, down = _factors(6, 2, 5, seed=1)
    up[0, 0] = float("nan")
    with pytest.raises(MergeError, match="lora_unet_bad"):
        rerank_terms({"lora_unet_bad": LowRankTerm(up, down, (6, 5))}, RankPolicy(new_rank=1))
