"""Block-weight specs: parsing numbers / presets / lbw=, every error message, weights per module, sweeps."""

from __future__ import annotations

import dataclasses

import pytest

from lib_copylora.core.block_spec import BlockWeights, format_values, parse_block_spec, sweep_specs
from lib_copylora.core.blocks import BLOCK_FORMATS, format_for
from lib_copylora.core.errors import SpecError
from lib_copylora.core.family import Family
from lib_copylora.core.presets import default_presets

PRESETS = default_presets()


def numbers(count: int) -> tuple[float, ...]:
    """Distinct values, so a value landing on the wrong block shows."""
    return tuple(round(0.1 * (i + 1), 1) for i in range(count))


@pytest.mark.parametrize("family, count", [(Family.SD1, 17), (Family.SD1, 26), (Family.SD2, 17),
                                           (Family.SDXL, 12), (Family.SDXL, 20)])
def test_numbers_give_the_format_with_that_count(family, count):
    text = format_values(numbers(count))
    for written in (text, f"lbw={text}", f"  lbw= {text.replace(',', ' , ')} "):
        spec = parse_block_spec(written, family, PRESETS)
        assert spec.values == numbers(count)
        assert spec.blocks == format_for(family, count).blocks
        assert spec.family is family
        assert spec.describe() == text


def test_presets_by_name_and_behind_lbw():
    for text in ("face", "lbw=face", " lbw=face "):
        spec = parse_block_spec(text, Family.SD1, PRESETS)
        assert spec.values == PRESETS["face"] and spec.source == "face" and spec.describe() == "face"
    custom = {"mine": (1.0,) + (0.5,) * 19}
    assert parse_block_spec("mine", Family.SDXL, custom).values == custom["mine"]


def _error(text: str, family: Family = Family.SD1, presets=PRESETS) -> str:
    with pytest.raises(SpecError) as caught:
        parse_block_spec(text, family, presets)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_wrong_count_names_the_family_and_the_accepted_counts():
    assert _error(format_values(numbers(12))) == "got 12 values for an SD1 model; use 17 or 26"
    assert _error(format_values(numbers(17)), Family.SDXL) == "got 17 values for an SDXL model; use 12 or 20"
    assert _error("0.5", Family.SD2) == "got 1 value for an SD2 model; use 17 or 26"


def test_bad_items_are_named_with_their_position():
    good = ["1"] * 17
    cases = {
        3: ("", "block weight 3 of 17 is empty"),
        5: ("abc", "block weight 5 of 17 ('abc') is not a number"),
        7: ("R", "block weight 7 of 17 ('R') is not a number; write plain numbers like 0.5 (the R, U and X forms"),
        9: ("nan", "block weight 9 of 17 ('nan') is not finite"),
        11: ("-inf", "block weight 11 of 17 ('-inf') is not finite"),
        13: ("1e5", "block weight 13 of 17 (1e5) is out of range; use values with |v| <= 10000"),
        17: ("-20000", "block weight 17 of 17 (-20000) is out of range"),
    }
    for position, (item, expected) in cases.items():
        items = list(good)
        items[position - 1] = item
        assert _error(",".join(items)).startswith(expected)
    assert _error("1,1,").startswith("block weight 3 of 3 is empty")  # a trailing comma
    assert parse_block_spec(",".join(["1e4"] + good[1:]), Family.SD1, PRESETS).values[0] == 1e4  # the limit itself


def test_unknown_preset_lists_known_names_for_the_family():
    message = _error("fcae")
    assert message.startswith("unknown block-weight preset 'fcae'; known SD1 presets: face")
    assert "SDXL-ALL" not in message
    assert "SDXL-ALL" in _error("nope", Family.SDXL)
    assert "no preset fits an SDXL model" in _error("nope", Family.SDXL, {"face": PRESETS["face"]})


def test_preset_of_another_family_is_an_error():
    message = _error("SDXL-ALL", Family.SD1)
    assert message.startswith("preset 'SDXL-ALL' has 12 values (made for SDXL); an SD1 model takes 17 or 26")
    message = _error("face", Family.SDXL)
    assert message.startswith("preset 'face' has 17 values (made for SD1/SD2); an SDXL model takes 12 or 20")
    assert "SDXL-ALL" in message


def test_empty_spec():
    assert _error("") == "empty block-weight spec; give a preset name or 17 or 26 comma-separated numbers"
    assert _error("lbw=", Family.SDXL).endswith("12 or 20 comma-separated numbers")


SD1_MODULES = {  # kohya name -> block (docs/architecture.md §6)
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": "BASE",
    "lora_unet_conv_in": "IN00",
    "lora_unet_down_blocks_0_attentions_1_proj_in": "IN02",
    "lora_unet_down_blocks_0_downsamplers_0_conv": "IN03",
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q": "IN04",
    "lora_unet_down_blocks_3_resnets_0_conv1": "IN10",
    "lora_unet_mid_block_attentions_0_proj_out": "MID",
    "lora_unet_up_blocks_0_resnets_1_conv2": "OUT01",
    "lora_unet_up_blocks_1_attentions_0_proj_in": "OUT03",
    "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2": "OUT11",
}
NO_BLOCK = ["lora_unet_time_embedding_linear_1", "lora_unet_time_embedding_linear_2", "lora_unet_conv_out",
            "lora_unet_conv_norm_out"]


@pytest.mark.parametrize("count", [17, 26])
def test_weight_for_follows_the_block_weight_extension(count):
    spec = parse_block_spec(format_values(numbers(count)), Family.SD1, PRESETS)
    for name, block in SD1_MODULES.items():
        expected = numbers(count)[spec.blocks.index(block)] if block in spec.blocks else 0.0
        assert spec.weight_for(name) == expected, name
    for name in NO_BLOCK:  # in no block: the extension leaves their factor at 1
        assert spec.weight_for(name) == 1.0
    zeros = parse_block_spec(",".join(["0"] * count), Family.SD1, PRESETS)
    assert [zeros.weight_for(name) for name in NO_BLOCK] == [1.0] * len(NO_BLOCK)


def test_weight_for_sdxl_compvis_names():
    spec = parse_block_spec(format_values(numbers(12)), Family.SDXL, PRESETS)
    assert spec.weight_for("lora_te2_text_model_encoder_layers_5_mlp_fc1") == 0.1  # BASE
    assert spec.weight_for("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") == 0.2  # IN04
    assert spec.weight_for("lora_unet_middle_block_1_proj_in") == 0.6  # MID
    assert spec.weight_for("lora_unet_output_blocks_5_1_proj_out") == 1.2  # OUT05
    assert spec.weight_for("lora_unet_output_blocks_6_0_in_layers_2") == 0.0  # OUT06: not in the 12 format
    assert spec.weight_for("lora_unet_input_blocks_1_0_in_layers_2") == 0.0  # IN01: not in the 12 format
    assert spec.weight_for("lora_unet_label_emb_0_0") == 1.0
    assert spec.weight_for("lora_unet_out_2") == 1.0


def test_is_identity_only_for_all_ones_in_the_full_format():
    assert parse_block_spec(",".join(["1"] * 26), Family.SD1, PRESETS).is_identity
    assert parse_block_spec(",".join(["1"] * 20), Family.SDXL, PRESETS).is_identity
    assert not parse_block_spec("ALL", Family.SD1, PRESETS).is_identity  # 17 values zero IN00, IN03, ...
    assert not parse_block_spec(",".join(["1"] * 25 + ["0.5"]), Family.SD1, PRESETS).is_identity
    identity = parse_block_spec(",".join(["1"] * 26), Family.SD1, PRESETS)
    all_names = list(SD1_MODULES) + NO_BLOCK
    assert [identity.weight_for(n) for n in all_names] == [1.0] * len(all_names)


def test_uncovered_blocks_and_per_block():
    short = parse_block_spec("ALL", Family.SD1, PRESETS)
    assert short.uncovered_blocks(list(SD1_MODULES) + NO_BLOCK) == {"IN00", "IN03", "IN10", "OUT01"}
    full = parse_block_spec(",".join(["1"] * 26), Family.SD1, PRESETS)
    assert full.uncovered_blocks(SD1_MODULES) == set()
    per_block = short.per_block()
    assert len(per_block) == 26 and per_block["IN00"] == 0.0 and per_block["IN01"] == 1.0


def test_block_weights_checks_itself():
    blocks = BLOCK_FORMATS[Family.SD1][0].blocks
    with pytest.raises(SpecError, match="one value per block"):
        BlockWeights(Family.SD1, blocks, (1.0,) * 16, "x")
    with pytest.raises(SpecError, match="17 blocks are not an SDXL block format; use 12 or 20"):
        BlockWeights(Family.SDXL, blocks, (1.0,) * 17, "x")
    with pytest.raises(SpecError, match="finite"):
        BlockWeights(Family.SD1, blocks, (float("nan"),) * 17, "x")
    spec = parse_block_spec("face", Family.SD1, PRESETS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.values = ()
    assert spec == parse_block_spec("lbw=face", Family.SD1, PRESETS) and hash(spec)


@pytest.mark.parametrize("family, count", [(Family.SD1, 17), (Family.SD1, 26), (Family.SDXL, 12), (Family.SDXL, 20)])
def test_sweeps(family, count):
    blocks = format_for(family, count).blocks
    only = sweep_specs(family, count, "only")
    without = sweep_specs(family, count, "without")
    assert [label for label, _ in only] == [f"{b} only" for b in blocks]
    assert [label for label, _ in without] == [f"without {b}" for b in blocks]
    for (_, alone), (_, removed), swept in zip(only, without, blocks):
        assert dict(zip(blocks, alone.values)) == {b: float(b in (swept, "BASE")) for b in blocks}
        assert dict(zip(blocks, removed.values)) == {b: float(b != swept) for b in blocks}
        for spec in (alone, removed):  # a sweep item goes into a prompt tag and must read back the same
            assert parse_block_spec(spec.source, family, {}) == spec
    with pytest.raises(SpecError, match="use only or without"):
        sweep_specs(family, count, "alone")
    with pytest.raises(SpecError, match=f"no 13-value block format for {family.label}"):
        sweep_specs(family, 13, "only")
