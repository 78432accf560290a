"""Block formats and the block of every module of the real SD1.5 / SD2 / SDXL UNets."""

from __future__ import annotations

import re

import pytest
from test_naming import clip_text_paths, unet_on_meta, unet_paths

from lib_copylora.core.blocks import BLOCK_FORMATS, accepted_counts, all_blocks, block_of, format_for
from lib_copylora.core.family import Family
from lib_copylora.core.naming import kohya_name, kohya_unet_name, unet_path_diffusers_to_compvis, webui_layer_name

IN = [f"IN{n:02d}" for n in range(12)]
OUT = [f"OUT{n:02d}" for n in range(12)]
SD_17 = ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID"] + OUT[3:]
SD_26 = ["BASE"] + IN + ["MID"] + OUT
SDXL_12 = ["BASE", "IN04", "IN05", "IN07", "IN08", "MID"] + OUT[:6]
SDXL_20 = ["BASE"] + IN[:9] + ["MID"] + OUT[:9]


def test_format_orders_are_the_established_ones():
    for family in (Family.SD1, Family.SD2):
        assert [list(f.blocks) for f in BLOCK_FORMATS[family]] == [SD_17, SD_26]
        assert accepted_counts(family) == (17, 26)
    assert [list(f.blocks) for f in BLOCK_FORMATS[Family.SDXL]] == [SDXL_12, SDXL_20]
    assert all(f.count == len(f.blocks) for formats in BLOCK_FORMATS.values() for f in formats)
    assert format_for(Family.SDXL, 17) is None and format_for(Family.SD1, 12) is None
    assert list(all_blocks(Family.SDXL)) == SDXL_20


@pytest.mark.parametrize("family, name, block", [
    (Family.SD1, "lora_unet_down_blocks_0_attentions_0_proj_in", "IN01"),
    (Family.SD1, "lora_unet_down_blocks_0_resnets_1_conv2", "IN02"),
    (Family.SD1, "lora_unet_down_blocks_0_downsamplers_0_conv", "IN03"),
    (Family.SD1, "lora_unet_down_blocks_3_resnets_1_conv1", "IN11"),
    (Family.SD1, "lora_unet_conv_in", "IN00"),
    (Family.SD1, "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v", "MID"),
    (Family.SD1, "lora_unet_mid_block_resnets_1_conv2", "MID"),
    (Family.SD1, "lora_unet_up_blocks_0_resnets_0_conv1", "OUT00"),
    (Family.SD1, "lora_unet_up_blocks_0_upsamplers_0_conv", "OUT02"),
    (Family.SD1, "lora_unet_up_blocks_3_attentions_2_proj_out", "OUT11"),
    (Family.SD1, "lora_unet_input_blocks_7_1_proj_in", "IN07"),  # compvis-style SD1 file
    (Family.SD1, "lora_unet_output_blocks_11_1_proj_out", "OUT11"),
    (Family.SD1, "lora_unet_middle_block_1_proj_in", "MID"),
    (Family.SD2, "lora_unet_up_blocks_2_attentions_1_transformer_blocks_0_ff_net_2", "OUT07"),
    (Family.SD1, "lora_te_text_model_encoder_layers_0_self_attn_q_proj", "BASE"),
    (Family.SD1, "lora_te_text_model_embeddings_token_embedding", "BASE"),
    (Family.SDXL, "lora_te1_text_model_encoder_layers_0_mlp_fc1", "BASE"),
    (Family.SDXL, "lora_te2_text_model_encoder_layers_31_mlp_fc2", "BASE"),
    (Family.SDXL, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "IN04"),
    (Family.SDXL, "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_out_0", "IN08"),
    (Family.SDXL, "lora_unet_input_blocks_6_0_op", "IN06"),
    (Family.SDXL, "lora_unet_output_blocks_2_2_conv", "OUT02"),
    (Family.SDXL, "lora_unet_output_blocks_8_0_skip_connection", "OUT08"),
    (Family.SDXL, "lora_unet_down_blocks_1_attentions_0_proj_in", "IN04"),  # diffusers-style SDXL file
    (Family.SDXL, "lora_unet_up_blocks_0_upsamplers_0_conv", "OUT02"),
    # in no block
    (Family.SD1, "lora_unet_time_embedding_linear_1", None),
    (Family.SD1, "lora_unet_conv_out", None),
    (Family.SD1, "lora_unet_conv_norm_out", None),
    (Family.SDXL, "lora_unet_time_embed_0", None),
    (Family.SDXL, "lora_unet_label_emb_0_2", None),
    (Family.SDXL, "lora_unet_out_2", None),
    # not in this family's UNet
    (Family.SDXL, "lora_unet_input_blocks_10_0_in_layers_2", None),
    (Family.SDXL, "lora_unet_down_blocks_3_resnets_0_conv1", None),
    (Family.SDXL, "lora_unet_up_blocks_2_upsamplers_0_conv", None),
    (Family.SD1, "lora_unet_down_blocks_0_resnets_2_conv1", None),
    (Family.SD1, "lora_unet_up_blocks_0_downsamplers_0_conv", None),
    (Family.SD1, "something_else", None),
])
def test_worked_examples(family, name, block):
    assert block_of(name, family) == block


_LBW_BLOCK = re.compile(r"diffusion_model_(input_blocks|middle_block|output_blocks)_(?:(\d+)_)?")


def lbw_block(webui_name: str) -> str | None:
    """The LoRA Block Weight extension's rule, restated: the block whose WebUI name prefix the layer name contains."""
    match = _LBW_BLOCK.match(webui_name)
    if match is None:
        return None
    if match.group(1) == "middle_block":
        return "MID"
    return f"{'IN' if match.group(1) == 'input_blocks' else 'OUT'}{int(match.group(2)):02d}"


@pytest.mark.parametrize("family", list(Family))
def test_every_unet_module_gets_the_block_of_its_webui_name(family):
    seen = set()
    for path in unet_paths(family):
        compvis = unet_path_diffusers_to_compvis(path, family)
        expected = lbw_block(webui_layer_name(kohya_name("lora_unet", compvis), family))
        for name in (kohya_name("lora_unet", path), kohya_name("lora_unet", compvis)):
            assert block_of(name, family) == expected, name
        seen.add(expected)
    assert seen == set(all_blocks(family)) - {"BASE"} | {None}  # all blocks reachable; some modules in none


@pytest.mark.parametrize("family", list(Family))
def test_text_encoder_modules_are_base(family):
    prefixes = ("lora_te1", "lora_te2") if family is Family.SDXL else ("lora_te",)
    assert {block_of(kohya_name(p, path), family) for p in prefixes for path in clip_text_paths()} == {"BASE"}


@pytest.mark.parametrize("family", list(Family))
def test_short_format_names_exactly_the_blocks_with_attention(family):
    """The short formats list BASE plus the blocks a default LoRA (attention layers only) can touch."""
    attention_blocks = {
        block_of(kohya_unet_name(name, family, "diffusers"), family)
        for name, module in unet_on_meta(family).named_modules()
        if type(module).__name__ == "Transformer2DModel"
    }
    short = min(BLOCK_FORMATS[family], key=lambda f: f.count)
    assert set(short.blocks) == attention_blocks | {"BASE"}
    assert list(short.blocks) == [b for b in all_blocks(family) if b in short.blocks]  # same order as the long one
