"""merge_loras: linear in its ratios, exact when concatenating, best rank-k when re-ranking, typed errors."""

import hashlib
import json
import warnings

import pytest
import torch

from lib_copylora.core.block_spec import parse_block_spec
from lib_copylora.core.errors import FamilyMismatch, MergeError, ShapeMismatch
from lib_copylora.core.family import Family
from lib_copylora.core.formats import read_lora, write_lora
from lib_copylora.core.layers import FullLayer, LohaLayer, LokrLayer, LowRankLayer
from lib_copylora.core.lorafile import LoraFile
from lib_copylora.core.merge import Component, MergeSpec, MergeWarning, component_of, merge_loras
from lib_copylora.core.presets import load_presets

TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
ATTN = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
PROJ = "lora_unet_down_blocks_1_attentions_0_proj_in"  # 1×1 conv in SD1, block IN04
RES = "lora_unet_up_blocks_1_resnets_0_conv1"  # 3×3 conv, block OUT03


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def low_rank(out_dim, in_dim, rank, seed, alpha=None, kernel=None, tucker=False):
    g = _gen(seed)
    if kernel is None:
        return LowRankLayer(down=torch.randn(rank, in_dim, generator=g), up=torch.randn(out_dim, rank, generator=g),
                            alpha=alpha)
    if tucker:
        return LowRankLayer(down=torch.randn(rank, in_dim, 1, 1, generator=g),
                            up=torch.randn(out_dim, rank, 1, 1, generator=g), alpha=alpha,
                            mid=torch.randn(rank, rank, *kernel, generator=g))
    return LowRankLayer(down=torch.randn(rank, in_dim, *kernel, generator=g),
                        up=torch.randn(out_dim, rank, 1, 1, generator=g), alpha=alpha)


def lora_set(seed, rank=3, alpha=1.0, family=Family.SD1, name="a"):
    layers = {
        TE: low_rank(8, 6, rank, seed, alpha),
        ATTN: low_rank(10, 10, rank, seed + 1, alpha),
        PROJ: low_rank(10, 10, rank, seed + 2, alpha, kernel=(1, 1)),
        RES: low_rank(6, 4, rank, seed + 3, alpha, kernel=(3, 3)),
    }
    return LoraFile(layers=layers, family=family, metadata={"ss_output_name": name})


def merge_quiet(loras, **spec):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MergeWarning)
        return merge_loras(loras, MergeSpec(**spec))


def close(actual, expected, rtol=1e-5):
    return (actual - expected).norm() <= rtol * max(expected.norm(), 1e-12)


def test_merge_is_linear_in_its_ratios_including_negative_ones():
    a, b = lora_set(0), lora_set(10, rank=2, alpha=4.0)
    merged = merge_quiet([a, b], ratios=(0.7, -1.3))
    for name in a.layers:
        expected = 0.7 * a.layers[name].delta() + -1.3 * b.layers[name].delta()
        assert close(merged.layers[name].delta(), expected), name


def test_one_lora_at_ratio_one_is_the_identity():
    a = lora_set(1, rank=4, alpha=2.0)
    merged = merge_quiet([a], ratios=(1.0,))
    for name, layer in a.layers.items():
        out = merged.layers[name]
        assert out.rank == layer.rank and out.alpha == out.rank  # scale folded into the factors
        assert out.delta().shape == layer.delta().shape
        assert close(out.delta(), layer.delta(), rtol=1e-6)


def test_difference_b_minus_a_is_exact_to_float32_precision():
    a, b = lora_set(2), lora_set(20)
    merged = merge_quiet([b, a], ratios=(1.0, -1.0))
    for name in a.layers:
        expected = b.layers[name].delta().double() - a.layers[name].delta().double()
        assert close(merged.layers[name].delta().double(), expected, rtol=1e-6), name
        assert merged.layers[name].rank == 6 and merged.layers[name].alpha == 6.0


def test_a_negative_ratio_is_not_squared():
    a = lora_set(3)
    merged = merge_quiet([a], ratios=(-2.0,))
    assert close(merged.layers[ATTN].delta(), -2.0 * a.layers[ATTN].delta())


def test_scale_is_split_between_the_factors():
    layer = low_rank(6, 5, 2, seed=4, alpha=1e-4 * 2)  # scale 1e-4
    merged = merge_quiet([LoraFile({ATTN: layer}, Family.SD1)], ratios=(1.0,))
    out = merged.layers[ATTN]
    assert torch.allclose(out.up.norm(), layer.up.norm() * 1e-2, rtol=1e-5)
    assert torch.allclose(out.down.norm(), layer.down.norm() * 1e-2, rtol=1e-5)


def test_modules_present_in_only_some_inputs_are_kept():
    a = LoraFile({ATTN: low_rank(10, 10, 2, 5), TE: low_rank(8, 6, 2, 6)}, Family.SD1)
    b = LoraFile({ATTN: low_rank(10, 10, 3, 7), PROJ: low_rank(10, 10, 2, 8, kernel=(1, 1))}, Family.SD1)
    merged = merge_quiet([a, b], ratios=(1.0, 0.5))
    assert set(merged.layers) == {ATTN, TE, PROJ}
    assert close(merged.layers[TE].delta(), a.layers[TE].delta())
    assert close(merged.layers[PROJ].delta(), 0.5 * b.layers[PROJ].delta())
    assert merged.layers[PROJ].up.shape == (10, 2, 1, 1) and merged.layers[PROJ].down.shape == (2, 10, 1, 1)


# SD1, 17 values: BASE, IN01, IN02, IN04, IN05, IN07, IN08, MID, OUT03 ... OUT11
HALF_IN01_ZERO_IN04_NEG_OUT03 = "1,0.5,1,0,1,1,1,1,-1,1,1,1,1,1,1,1,1"


def sd1_blocks(text):
    return parse_block_spec(text, Family.SD1, load_presets())


def test_block_weights_multiply_each_modules_ratio():
    a, b = lora_set(30), lora_set(40)
    blocks_a = sd1_blocks(HALF_IN01_ZERO_IN04_NEG_OUT03)
    merged = merge_quiet([a, b], ratios=(2.0, 1.0), blocks=(blocks_a, None))
    factors = {TE: 1.0, ATTN: 0.5, PROJ: 0.0, RES: -1.0}
    for name in a.layers:
        expected = 2.0 * factors[name] * a.layers[name].delta() + b.layers[name].delta()
        assert close(merged.layers[name].delta(), expected), name
    assert merged.layers[PROJ].rank == 3  # a's part had weight 0 and is left out


def test_all_ones_block_weights_change_nothing():
    a, b = lora_set(31), lora_set(41)
    ones = sd1_blocks("ALL")
    plain = merge_quiet([a, b], ratios=(1.0, -1.0))
    blocked = merge_quiet([a, b], ratios=(1.0, -1.0), blocks=(ones, ones))
    for name in a.layers:
        assert torch.equal(plain.layers[name].delta(), blocked.layers[name].delta())


def test_a_short_block_format_warns_about_the_blocks_it_zeroes():
    outer = "lora_unet_up_blocks_0_resnets_0_conv1"  # OUT00, not in the 17-value format
    a = LoraFile({outer: low_rank(6, 4, 2, 42, kernel=(3, 3)), ATTN: low_rank(10, 10, 2, 43)}, Family.SD1)
    with pytest.warns(MergeWarning, match="OUT00"):
        merged = merge_loras([a], MergeSpec(ratios=(1.0,), blocks=(sd1_blocks("ALL"),)))
    assert set(merged.layers) == {ATTN}


def test_te_and_unet_ratios_override_ratios_per_component():
    a, b = lora_set(50), lora_set(60)
    merged = merge_quiet([a, b], ratios=(1.0, -1.0), te_ratios=(0.25, 0.0))
    assert close(merged.layers[TE].delta(), 0.25 * a.layers[TE].delta())
    assert close(merged.layers[ATTN].delta(), a.layers[ATTN].delta() - b.layers[ATTN].delta())
    merged = merge_quiet([a, b], ratios=(1.0, -1.0), unet_ratios=(0.5, 0.5))
    assert close(merged.layers[TE].delta(), a.layers[TE].delta() - b.layers[TE].delta())
    assert close(merged.layers[RES].delta(), 0.5 * (a.layers[RES].delta() + b.layers[RES].delta()))


@pytest.mark.parametrize("name, component", [
    (TE, Component.TEXT_ENCODER), ("lora_te1_text_model_encoder_layers_0_mlp_fc1", Component.TEXT_ENCODER),
    ("lora_te2_text_model_encoder_layers_0_mlp_fc1", Component.TEXT_ENCODER), (ATTN, Component.UNET),
    ("lora_unet_input_blocks_4_1_proj_in", Component.UNET), ("lora_unetx_a", None), ("lora_tex_a", None),
])
def test_component_of_reads_the_kohya_prefix(name, component):
    assert component_of(name) is component


def test_te_ratios_refuse_a_module_of_neither_component():
    odd = LoraFile({"lora_other_thing": low_rank(4, 4, 1, 0)}, Family.SD1)
    with pytest.raises(MergeError, match="lora_other_thing"):
        merge_loras([odd], MergeSpec(ratios=(1.0,), te_ratios=(0.5,)))


def test_all_tucker_parts_concat_with_a_block_diagonal_mid():
    a = LoraFile({RES: low_rank(6, 4, 2, 70, alpha=1.0, kernel=(3, 3), tucker=True)}, Family.SD1)
    b = LoraFile({RES: low_rank(6, 4, 3, 71, alpha=2.0, kernel=(3, 3), tucker=True)}, Family.SD1)
    out = merge_quiet([a, b], ratios=(1.0, -0.5)).layers[RES]
    assert out.mid is not None and out.mid.shape == (5, 5, 3, 3)
    assert torch.count_nonzero(out.mid[:2, 2:]) == 0 and torch.count_nonzero(out.mid[2:, :2]) == 0
    assert close(out.delta(), a.layers[RES].delta() - 0.5 * b.layers[RES].delta())


def test_tucker_mixed_with_plain_folds_mid_into_down():
    a = LoraFile({RES: low_rank(6, 4, 2, 72, alpha=1.0, kernel=(3, 3), tucker=True)}, Family.SD1)
    b = LoraFile({RES: low_rank(6, 4, 3, 73, alpha=3.0, kernel=(3, 3))}, Family.SD1)
    out = merge_quiet([a, b], ratios=(1.0, -1.0)).layers[RES]
    assert out.mid is None and out.down.shape == (5, 4, 3, 3) and out.up.shape == (6, 5, 1, 1)
    assert close(out.delta(), a.layers[RES].delta() - b.layers[RES].delta())


def _mixed_kinds():
    g = _gen(80)
    loha = LohaLayer(w1a=torch.randn(10, 2, generator=g), w1b=torch.randn(2, 10, generator=g),
                     w2a=torch.randn(10, 2, generator=g), w2b=torch.randn(2, 10, generator=g), shape=(10, 10),
                     alpha=1.0)
    lokr = LokrLayer(shape=(10, 10), w1=torch.randn(2, 5, generator=g), w2=torch.randn(5, 2, generator=g))
    full = FullLayer(diff=torch.randn(10, 10, generator=g), diff_b=torch.randn(10, generator=g))
    return loha, lokr, full


def test_kinds_without_low_rank_form_become_an_exact_full_diff_with_a_warning():
    loha, lokr, full = _mixed_kinds()
    lora = low_rank(10, 10, 2, 81, alpha=1.0)
    inputs = [LoraFile({ATTN: layer}, Family.SD1) for layer in (lora, loha, lokr, full)]
    with pytest.warns(MergeWarning, match="full weight differences"):
        merged = merge_loras(inputs, MergeSpec(ratios=(1.0, -1.0, 0.5, 2.0)))
    out = merged.layers[ATTN]
    assert isinstance(out, FullLayer)
    expected = lora.delta() - loha.delta() + 0.5 * lokr.delta() + 2.0 * full.delta()
    assert close(out.delta(), expected)
    assert torch.allclose(out.diff_b, 2.0 * full.diff_b)


def test_kinds_without_low_rank_form_rerank_through_a_dense_svd():
    loha, lokr, _ = _mixed_kinds()
    inputs = [LoraFile({ATTN: layer}, Family.SD1) for layer in (loha, lokr)]
    out = merge_quiet(inputs, ratios=(1.0, -1.0), new_rank=3).layers[ATTN]
    assert isinstance(out, LowRankLayer) and out.rank == 3
    exact = (loha.delta() - lokr.delta()).double()
    u, s, vh = torch.linalg.svd(exact)
    assert close(out.delta().double(), (u[:, :3] * s[:3]) @ vh[:3], rtol=1e-5)


def _best_rank_k(delta, k):
    flat = delta.double().reshape(delta.shape[0], -1)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    return ((u[:, :k] * s[:k]) @ vh[:k]).reshape(delta.shape)


def test_rerank_equals_the_dense_truncated_svd_of_the_exact_delta():
    a, b = lora_set(90), lora_set(91)
    merged = merge_quiet([b, a], ratios=(1.0, -1.0), new_rank=4, new_conv_rank=2)
    for name in a.layers:
        exact = b.layers[name].delta() - a.layers[name].delta()
        k = 2 if name == RES else 4
        out = merged.layers[name]
        assert out.rank == k and out.alpha == k, name
        assert close(out.delta().double(), _best_rank_k(exact, k), rtol=1e-5), name
    assert merged.layers[RES].down.shape == (2, 4, 3, 3) and merged.layers[RES].up.shape == (6, 2, 1, 1)
    assert merged.layers[PROJ].down.shape == (4, 10, 1, 1)


def test_full_rank_rerank_is_lossless():
    a, b = lora_set(92), lora_set(93)
    merged = merge_quiet([b, a], ratios=(1.0, -1.0), new_rank=6)
    for name in a.layers:
        exact = b.layers[name].delta() - a.layers[name].delta()
        assert close(merged.layers[name].delta(), exact, rtol=1e-5), name


def test_energy_policy_keeps_fewer_directions_for_a_concentrated_delta():
    g = _gen(94)
    up = torch.randn(10, 3, generator=g) * torch.tensor([10.0, 0.1, 0.01])
    layer = LowRankLayer(down=torch.linalg.qr(torch.randn(10, 3, generator=g))[0].T.contiguous(), up=up)
    merged = merge_quiet([LoraFile({ATTN: layer}, Family.SD1)], ratios=(1.0,), new_rank=3, energy=0.99)
    assert merged.layers[ATTN].rank == 1


def test_wrong_ratio_count_is_refused():
    with pytest.raises(MergeError, match="2 models but 1 ratios"):
        merge_loras([lora_set(0), lora_set(1)], MergeSpec(ratios=(1.0,)))


def test_different_families_are_refused_naming_both():
    a = lora_set(0, name="shirt")
    b = lora_set(1, family=Family.SDXL, name="text")
    with pytest.raises(FamilyMismatch, match=r"shirt is a SD1 .* text is SDXL"):
        merge_loras([a, b], MergeSpec(ratios=(1.0, -1.0)))


def test_shapes_that_disagree_are_refused_naming_the_module():
    a = LoraFile({ATTN: low_rank(10, 10, 2, 1)}, Family.SD1)
    b = LoraFile({ATTN: low_rank(10, 12, 2, 2)}, Family.SD1)
    with pytest.raises(ShapeMismatch, match=ATTN):
        merge_loras([a, b], MergeSpec(ratios=(1.0, -1.0)))


@pytest.mark.parametrize("spec", [
    dict(ratios=(1.0,), new_rank=0), dict(ratios=(1.0,), new_rank=-1), dict(ratios=(1.0,), new_rank=2,
                                                                          new_conv_rank=0),
    dict(ratios=()), dict(ratios=(1.0, 2.0), te_ratios=(1.0,)), dict(ratios=(float("nan"),)),
    dict(ratios=(1.0,), energy=2.0), dict(ratios=(1.0,), device="tpu"),
])
def test_inconsistent_specs_are_refused(spec):
    with pytest.raises(MergeError):
        MergeSpec(**spec)


def test_nothing_to_merge_is_refused():
    with pytest.raises(MergeError, match="nothing to merge"):
        merge_loras([lora_set(0)], MergeSpec(ratios=(0.0,)))


def test_non_finite_input_is_refused_naming_the_module():
    a = lora_set(0)
    a.layers[ATTN].up[0, 0] = float("inf")
    with pytest.raises(MergeError, match=ATTN):
        merge_loras([a], MergeSpec(ratios=(1.0,)))


def test_recipe_metadata_records_inputs_ratios_blocks_and_rank(tmp_path):
    path = tmp_path / "b.safetensors"
    write_lora(lora_set(0, name="b"), path)
    b = read_lora(path)  # the reader hashes the bytes it reads; the merge reads no file
    b.metadata["sshs_model_hash"] = "abc123"
    a = lora_set(1, name="a")
    blocks = sd1_blocks("OUTALL")
    merged = merge_quiet([b, a], ratios=(1.0, -1.0), unet_ratios=(1.0, -0.5), blocks=(None, blocks), new_rank=4,
                         output_name="diff")
    recipe = json.loads(merged.metadata["copylora"])
    assert recipe["ratios"] == [1.0, -1.0] and recipe["unet_ratios"] == [1.0, -0.5] and recipe["te_ratios"] is None
    first, second = recipe["inputs"]
    assert first["file"] == "b.safetensors" and first["sshs_model_hash"] == "abc123"
    assert first["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert second["sha256"] is None and second["name"] == "a"
    assert recipe["blocks"] == [None, "OUTALL"]
    assert recipe["rank"] == {"mode": "svd", "new_rank": 4, "new_conv_rank": None, "energy": None}
    assert merged.metadata["ss_output_name"] == "diff"
    assert merged.family is Family.SD1
