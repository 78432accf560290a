"""Module naming: diffusers <-> compvis for the real SD1.5 / SD2 / SDXL UNets, kohya names, the WebUI's names."""

from __future__ import annotations

import functools

import pytest
import torch

from lib_copylora.core.errors import FormatError
from lib_copylora.core.family import Family
from lib_copylora.core.naming import (
    kohya_name,
    kohya_name_from_webui_layer,
    kohya_unet_name,
    split_kohya_name,
    unet_path_compvis_to_diffusers,
    unet_path_diffusers_to_compvis,
    webui_layer_name,
)

# The real UNet configs (the fields that shape the module tree); built on the meta device, nothing is downloaded.
SD15_UNET = dict(
    attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768, layers_per_block=2,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], sample_size=64,
)
SD2_UNET = dict(SD15_UNET, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True)
SDXL_UNET = dict(
    addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], layers_per_block=2,
    projection_class_embeddings_input_dim=2816, sample_size=128, transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], use_linear_projection=True,
)
UNET_CONFIGS = {Family.SD1: SD15_UNET, Family.SD2: SD2_UNET, Family.SDXL: SDXL_UNET}


@functools.cache
def unet_on_meta(family: Family):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**UNET_CONFIGS[family])


def weighted_paths(model) -> tuple[str, ...]:
    """Modules that own parameters: the ones a LoRA can target."""
    return tuple(name for name, module in model.named_modules() if list(module.parameters(recurse=False)))


def unet_paths(family: Family) -> tuple[str, ...]:
    return weighted_paths(unet_on_meta(family))


@functools.cache
def clip_text_paths() -> tuple[str, ...]:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                            projection_dim=32)
    with torch.device("meta"):
        return weighted_paths(CLIPTextModelWithProjection(config))


# Hand-checked against the compvis UNet source (ldm openaimodel / kohya's sdxl_original_unet).
WORKED = [
    (Family.SD1, "down_blocks.0.attentions.0.proj_in", "input_blocks.1.1.proj_in"),
    (Family.SD1, "down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
    (Family.SD1, "down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
    (Family.SD1, "down_blocks.2.downsamplers.0.conv", "input_blocks.9.0.op"),
    (Family.SD1, "down_blocks.3.resnets.1.time_emb_proj", "input_blocks.11.0.emb_layers.1"),
    (Family.SD1, "mid_block.resnets.1.norm2", "middle_block.2.out_layers.0"),
    (Family.SD1, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
     "middle_block.1.transformer_blocks.0.attn2.to_k"),
    (Family.SD1, "up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),
    (Family.SD1, "up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    (Family.SD1, "up_blocks.1.resnets.2.conv2", "output_blocks.5.0.out_layers.3"),
    (Family.SD1, "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj",
     "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj"),
    (Family.SD1, "conv_in", "input_blocks.0.0"),
    (Family.SD1, "time_embedding.linear_2", "time_embed.2"),
    (Family.SD1, "conv_norm_out", "out.0"),
    (Family.SD1, "conv_out", "out.2"),
    (Family.SD2, "down_blocks.2.attentions.1.proj_out", "input_blocks.8.1.proj_out"),
    (Family.SDXL, "down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    (Family.SDXL, "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q",
     "input_blocks.4.1.transformer_blocks.1.attn1.to_q"),
    (Family.SDXL, "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2",
     "input_blocks.8.1.transformer_blocks.9.ff.net.2"),
    (Family.SDXL, "up_blocks.0.attentions.2.proj_in", "output_blocks.2.1.proj_in"),
    (Family.SDXL, "up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
    (Family.SDXL, "up_blocks.2.resnets.2.conv_shortcut", "output_blocks.8.0.skip_connection"),
    (Family.SDXL, "add_embedding.linear_1", "label_emb.0.0"),
    (Family.SDXL, "mid_block.resnets.0.norm1", "middle_block.0.in_layers.0"),
]


@pytest.mark.parametrize("family, diffusers, compvis", WORKED)
def test_worked_examples_both_ways(family, diffusers, compvis):
    assert unet_path_diffusers_to_compvis(diffusers, family) == compvis
    assert unet_path_compvis_to_diffusers(compvis, family) == diffusers


@pytest.mark.parametrize("family", list(Family))
def test_every_unet_module_round_trips(family):
    paths = unet_paths(family)
    compvis = [unet_path_diffusers_to_compvis(p, family) for p in paths]
    assert len(set(compvis)) == len(paths)  # one-to-one
    assert [unet_path_compvis_to_diffusers(c, family) for c in compvis] == list(paths)
    heads = {c.split(".")[0] for c in compvis}
    expected = {"input_blocks", "middle_block", "output_blocks", "time_embed", "out"}
    assert heads == (expected | {"label_emb"} if family is Family.SDXL else expected)


@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL])
def test_diffusers_own_ldm_converter_agrees_on_every_parameter(family):
    """diffusers' single-file loader maps compvis (LDM) checkpoints to diffusers keys: an independent oracle."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    model = unet_on_meta(family)
    checkpoint, expected = {}, {}
    for i, (name, _) in enumerate(model.named_parameters()):
        path, parameter = name.rsplit(".", 1)
        compvis = unet_path_diffusers_to_compvis(path, family)
        checkpoint[f"model.diffusion_model.{compvis}.{parameter}"] = torch.tensor([float(i)])
        expected[name] = i
    converted = convert_ldm_unet_checkpoint(checkpoint, dict(model.config))
    assert {key: int(value.item()) for key, value in converted.items()} == expected


@pytest.mark.parametrize("family", list(Family))
def test_kohya_names_split_back_into_paths(family):
    for path in unet_paths(family):
        for style_path in (path, unet_path_diffusers_to_compvis(path, family)):
            assert split_kohya_name(kohya_name("lora_unet", style_path)) == ("lora_unet", style_path)
    for prefix in ("lora_te", "lora_te1", "lora_te2"):
        for path in clip_text_paths():
            assert split_kohya_name(kohya_name(prefix, path)) == (prefix, path)


def test_kohya_unet_name_uses_the_style_kohya_writes():
    attn = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    sd1_name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    assert kohya_unet_name(attn, Family.SD1, "diffusers") == sd1_name
    assert kohya_unet_name("input_blocks.4.1.transformer_blocks.0.attn1.to_q", Family.SD1, "compvis") == sd1_name
    sdxl_name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert kohya_unet_name(attn, Family.SDXL, "diffusers") == sdxl_name
    assert kohya_unet_name("input_blocks.4.1.transformer_blocks.0.attn1.to_q", Family.SDXL, "compvis") == sdxl_name
    with pytest.raises(ValueError, match="style"):
        kohya_unet_name(attn, Family.SD1, "kohya")


@pytest.mark.parametrize("family, path, style", [
    (Family.SDXL, "down_blocks.0.attentions.0.proj_in", "diffusers"),  # SDXL's first level has no attention
    (Family.SD1, "down_blocks.3.attentions.0.proj_in", "diffusers"),  # SD1's last level has none
    (Family.SD1, "down_blocks.3.downsamplers.0.conv", "diffusers"),  # nor a downsampler
    (Family.SDXL, "up_blocks.2.upsamplers.0.conv", "diffusers"),
    (Family.SD1, "add_embedding.linear_1", "diffusers"),  # SDXL only
    (Family.SD1, "down_blocks.0.resnets.2.conv1", "diffusers"),  # 2 layers per down level
    (Family.SD1, "down_blocks.0.resnets.0.dropout", "diffusers"),
    (Family.SDXL, "output_blocks.2.1.conv", "compvis"),  # SD1's upsampler slot is SDXL's attention
    (Family.SD1, "output_blocks.2.1.proj_in", "compvis"),  # SD1's up level 0 has no attention
    (Family.SD1, "input_blocks.9.1.proj_in", "compvis"),  # block 9 is a downsampler
    (Family.SD1, "input_blocks.12.0.in_layers.2", "compvis"),
    (Family.SDXL, "input_blocks.9.0.in_layers.2", "compvis"),
    (Family.SD1, "middle_block.3.in_layers.0", "compvis"),
    (Family.SD1, "label_emb.0.0", "compvis"),
])
def test_paths_outside_the_unet_are_format_errors(family, path, style):
    convert = unet_path_diffusers_to_compvis if style == "diffusers" else unet_path_compvis_to_diffusers
    with pytest.raises(FormatError, match=rf"{family.label} UNet"):
        convert(path, family)


def test_unknown_prefixes_are_format_errors():
    with pytest.raises(FormatError, match="prefix"):
        kohya_name("lora_vae", "conv_in")
    with pytest.raises(FormatError, match="not a kohya module name"):
        split_kohya_name("unet_conv_in")


@pytest.mark.parametrize("family, kohya, webui", [
    (Family.SD1, "lora_unet_down_blocks_0_attentions_0_proj_in", "diffusion_model_input_blocks_1_1_proj_in"),
    (Family.SD1, "lora_unet_input_blocks_1_1_proj_in", "diffusion_model_input_blocks_1_1_proj_in"),
    (Family.SD1, "lora_unet_down_blocks_0_resnets_0_time_emb_proj", "diffusion_model_input_blocks_1_0_emb_layers_1"),
    (Family.SD1, "lora_unet_time_embedding_linear_1", "diffusion_model_time_embed_0"),
    (Family.SD1, "lora_unet_conv_out", "diffusion_model_out_2"),
    (Family.SDXL, "lora_unet_output_blocks_2_2_conv", "diffusion_model_output_blocks_2_2_conv"),
    (Family.SDXL, "lora_unet_up_blocks_0_upsamplers_0_conv", "diffusion_model_output_blocks_2_2_conv"),
    (Family.SD1, "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
     "transformer_text_model_encoder_layers_0_self_attn_q_proj"),
    (Family.SD1, "lora_te1_text_model_encoder_layers_0_mlp_fc1", "transformer_text_model_encoder_layers_0_mlp_fc1"),
    (Family.SD1, "lora_te_text_model_final_layer_norm", None),  # the WebUI matches only encoder layers there
    (Family.SD2, "lora_te_text_model_encoder_layers_5_self_attn_k_proj", "model_transformer_resblocks_5_attn_k_proj"),
    (Family.SD2, "lora_te_text_model_encoder_layers_5_self_attn_out_proj",
     "model_transformer_resblocks_5_attn_out_proj"),
    (Family.SD2, "lora_te_text_model_encoder_layers_5_mlp_fc1", "model_transformer_resblocks_5_mlp_c_fc"),
    (Family.SD2, "lora_te_text_model_encoder_layers_5_mlp_fc2", "model_transformer_resblocks_5_mlp_c_proj"),
    (Family.SD2, "lora_te_text_model_encoder_layers_5_layer_norm1", None),
    (Family.SD2, "lora_te1_text_model_encoder_layers_5_mlp_fc1", None),
    (Family.SDXL, "lora_te1_text_model_encoder_layers_2_self_attn_v_proj",
     "0_transformer_text_model_encoder_layers_2_self_attn_v_proj"),
    (Family.SDXL, "lora_te2_text_model_encoder_layers_31_self_attn_q_proj",
     "1_model_transformer_resblocks_31_attn_q_proj"),
    (Family.SDXL, "lora_te_text_model_encoder_layers_0_mlp_fc1", None),
    (Family.SDXL, "lora_unet_input_blocks_10_0_in_layers_2", None),
    (Family.SD1, "not_a_lora_name", None),
])
def test_webui_layer_names(family, kohya, webui):
    assert webui_layer_name(kohya, family) == webui


@pytest.mark.parametrize("family", list(Family))
def test_webui_names_map_back_to_the_kohya_name(family):
    names = [kohya_unet_name(p, family, "diffusers") for p in unet_paths(family)]
    prefixes = ("lora_te1", "lora_te2") if family is Family.SDXL else ("lora_te",)
    names += [kohya_name(prefix, p) for prefix in prefixes for p in clip_text_paths()]
    mapped = 0
    for name in names:
        webui = webui_layer_name(name, family)
        if webui is not None:
            assert kohya_name_from_webui_layer(webui, family) == name
            mapped += 1
    assert mapped >= len(unet_paths(family))  # every UNet module has a WebUI name


def test_webui_names_with_no_single_kohya_module():
    assert kohya_name_from_webui_layer("model_transformer_resblocks_0_attn", Family.SD2) is None  # fused q/k/v
    assert kohya_name_from_webui_layer("1_model_transformer_resblocks_0_ln_1", Family.SDXL) is None
    assert kohya_name_from_webui_layer("diffusion_model_input_blocks_0", Family.SD1) is None
    assert kohya_name_from_webui_layer("cond_stage_model", Family.SD1) is None
    assert kohya_name_from_webui_layer("diffusion_model_input_blocks_4_1_proj_in", Family.SDXL) == (
        "lora_unet_input_blocks_4_1_proj_in")
