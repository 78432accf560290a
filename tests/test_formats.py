"""Reading and writing LoRA files: round trips, strictness, typed errors, atomic and reproducible writes, hashes."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import safetensors.torch
import torch

from lib_copylora.core import safetensors_io
from lib_copylora.core.detect import detect_family
from lib_copylora.core.errors import FormatError, OutputExists
from lib_copylora.core.family import Family
from lib_copylora.core.formats import lora_from_state_dict, lora_to_state_dict, read_lora, write_lora
from lib_copylora.core.layers import LayerKind, LowRankLayer
from lib_copylora.core.lorafile import LoraFile
from lib_copylora.core.metadata import RECIPE_KEY, standard_metadata, with_recipe
from lora_factory import KINDS, NAMES, family_metadata, lora_state_dict, make_lora


def _deltas(lora: LoraFile) -> dict[str, torch.Tensor]:
    return {name: layer.delta() for name, layer in lora.layers.items()}


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL])
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_keeps_every_delta(tmp_path, kind, family):
    lora = make_lora(kind, family, seed=3)
    path = write_lora(lora, tmp_path / "out.safetensors", dtype=torch.float32)
    back = read_lora(path)
    assert back.family is family
    assert set(back.layers) == set(lora.layers)
    for name, delta in _deltas(lora).items():
        assert back.layers[name].kind is lora.layers[name].kind
        assert back.layers[name].alpha == lora.layers[name].alpha
        torch.testing.assert_close(back.layers[name].delta(), delta, rtol=0, atol=0)


def test_fp16_round_trip_is_close_and_alpha_stays_exact(tmp_path):
    lora = make_lora("locon_tucker", alpha=0.1)
    back = read_lora(write_lora(lora, tmp_path / "half.safetensors"))
    for name, delta in _deltas(lora).items():
        assert back.layers[name].alpha == pytest.approx(0.1, abs=1e-8)  # float32 alpha, not rounded to fp16
        torch.testing.assert_close(back.layers[name].delta(), delta, rtol=1e-2, atol=1e-3)


def test_state_dict_uses_kohya_keys_and_a_0_dim_alpha():
    lora = make_lora("locon_tucker")
    conv = NAMES[Family.SD1]["conv"]
    sd = lora_to_state_dict(lora, torch.bfloat16)
    assert {k for k in sd if k.startswith(conv + ".")} == {
        f"{conv}.lora_down.weight", f"{conv}.lora_mid.weight", f"{conv}.lora_up.weight", f"{conv}.alpha"}
    assert sd[f"{conv}.alpha"].dim() == 0 and sd[f"{conv}.alpha"].item() == 2.0
    assert sd[f"{conv}.lora_up.weight"].dtype is torch.bfloat16


# ------------------------------------------------------------------------------------------ formats and shapes
def test_kohya_layouts_are_read_as_stored():
    raw = lora_state_dict("locon_tucker", seed=5)
    lora = lora_from_state_dict(raw)
    conv = NAMES[Family.SD1]["conv"]
    layer = lora.layers[conv]
    assert torch.equal(layer.mid, raw[f"{conv}.lora_mid.weight"]) and layer.shape == (6, 4, 3, 3)


def test_peft_names_map_to_kohya_names_sd1():
    lora = lora_from_state_dict(lora_state_dict("peft", alpha=2.0))
    assert sorted(lora.layers) == [
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_up_blocks_1_resnets_0_conv1",
    ]
    assert all(layer.alpha == 2.0 for layer in lora.layers.values())


def test_peft_sdxl_names_become_kohya_sdxl_names():
    lora = lora_from_state_dict(lora_state_dict("peft", Family.SDXL, alpha=None))
    assert lora.family is Family.SDXL
    assert sorted(lora.layers) == [
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_output_blocks_3_0_in_layers_2",
    ]
    layer = lora.layers["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"]
    torch.testing.assert_close(layer.delta(), layer.up @ layer.down)  # no alpha key: scale 1, as PEFT means


def test_peft_wrapper_prefix():
    down, up = torch.randn(2, 8), torch.randn(6, 2)
    lora = lora_from_state_dict({
        "base_model.model.text_model.encoder.layers.1.mlp.fc1.lora_A.weight": down,
        "base_model.model.text_model.encoder.layers.1.mlp.fc1.lora_B.weight": up,
        "base_model.model.mid_block.attentions.0.proj_out.lora_A.weight": down,
        "base_model.model.mid_block.attentions.0.proj_out.lora_B.weight": up,
    })
    assert sorted(lora.layers) == ["lora_te_text_model_encoder_layers_1_mlp_fc1",
                                   "lora_unet_mid_block_attentions_0_proj_out"]


def test_flattened_conv_kernels_come_from_module_names():
    loha = make_lora("loha")
    assert loha.layers[NAMES[Family.SD1]["conv"]].shape == (6, 4, 3, 3)
    assert loha.layers[NAMES[Family.SD1]["conv1x1"]].shape == (6, 4, 1, 1)
    assert loha.layers[NAMES[Family.SD1]["te"]].shape == (6, 8)
    lokr = make_lora("lokr", Family.SDXL)
    assert lokr.layers[NAMES[Family.SDXL]["conv"]].shape == (6, 4, 3, 3)


@pytest.mark.parametrize("family, shape", [(Family.SD1, (6, 8, 1, 1)), (Family.SDXL, (6, 8))])
def test_loha_proj_in_is_a_conv_only_in_sd1(family, shape):
    gen = torch.Generator().manual_seed(0)
    name = {Family.SD1: "lora_unet_down_blocks_0_attentions_0_proj_in",
            Family.SDXL: "lora_unet_input_blocks_4_1_proj_in"}[family]
    tensors = {f"{name}.{k}": torch.randn(*s, generator=gen) for k, s in
               (("hada_w1_a", (6, 2)), ("hada_w1_b", (2, 8)), ("hada_w2_a", (6, 2)), ("hada_w2_b", (2, 8)))}
    lora = lora_from_state_dict(tensors, family_metadata(family))
    assert lora.layers[name].shape == shape and lora.layers[name].delta().shape == shape


# ------------------------------------------------------------------------------------------ strict and lenient
def _with_unknown_keys(count: int) -> dict[str, torch.Tensor]:
    tensors = lora_state_dict("lora")
    for i in range(count):
        tensors[f"lora_unet_mystery_{i:02d}.dora_scale"] = torch.ones(3)
    return tensors


def test_strict_read_lists_leftover_keys():
    with pytest.raises(FormatError) as info:
        lora_from_state_dict(_with_unknown_keys(12))
    message = str(info.value)
    assert "12 key(s)" in message and "and 2 more" in message
    assert "lora_unet_mystery_00.dora_scale" in message and "lora_unet_mystery_09.dora_scale" in message
    assert "lora_unet_mystery_10.dora_scale" not in message


def test_lenient_read_keeps_unused_keys():
    lora = lora_from_state_dict(_with_unknown_keys(3), strict=False)
    assert lora.unused_keys == [f"lora_unet_mystery_{i:02d}.dora_scale" for i in range(3)]
    assert len(lora.layers) == 3


def test_incomplete_module_is_a_leftover_not_a_layer():
    tensors = lora_state_dict("lora")
    tensors["lora_unet_conv_in.lora_down.weight"] = torch.ones(2, 4, 3, 3)  # its lora_up is missing
    with pytest.raises(FormatError, match="lora_unet_conv_in.lora_down.weight"):
        lora_from_state_dict(tensors)
    assert "lora_unet_conv_in" not in lora_from_state_dict(tensors, strict=False).layers


def test_module_stored_in_two_formats_is_refused():
    tensors = lora_state_dict("lora")
    tensors.update({"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 8),
                    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(6, 2)})
    with pytest.raises(FormatError, match="stored twice"):
        lora_from_state_dict(tensors)


def test_shape_mismatch_inside_a_module_is_a_format_error():
    tensors = {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(4, 8),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.ones(6, 3)}
    with pytest.raises(FormatError, match="lora_te_text_model_encoder_layers_0_mlp_fc1"):
        lora_from_state_dict(tensors)


# ----------------------------------------------------------------------------------------------- bad files
def _good_file(tmp_path):
    return write_lora(make_lora("lora"), tmp_path / "good.safetensors")


def test_truncated_file(tmp_path):
    data = _good_file(tmp_path).read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:-10])
    with pytest.raises(FormatError, match=r"^cut\.safetensors: .*truncated"):
        read_lora(bad)
    with pytest.raises(FormatError, match="truncated"):
        safetensors_io.read_safetensors_metadata(bad)


@pytest.mark.parametrize("content, reason", [
    (b"", "too short"),
    (os.urandom(64) + b"\xff" * 8, "header length"),
    ((19).to_bytes(8, "little") + b"{not json at all!!!", "not valid JSON"),
    ((2).to_bytes(8, "little") + b"[]", "not a JSON object"),
])
def test_garbage_files(tmp_path, content, reason):
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(content)
    with pytest.raises(FormatError, match=reason) as info:
        read_lora(bad)
    assert str(info.value).startswith("junk.safetensors: ") and "\n" not in str(info.value)


def test_missing_file_is_a_format_error(tmp_path):
    with pytest.raises(FormatError, match="cannot be read"):
        read_lora(tmp_path / "nope.safetensors")


def test_file_without_lora_keys(tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"model.diffusion_model.out.2.weight": torch.ones(2, 2)}, str(path))
    with pytest.raises(FormatError, match="no LoRA keys"):
        read_lora(path)


# ------------------------------------------------------------------------------------------------- writing
def test_existing_output_is_not_overwritten(tmp_path):
    path = _good_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(OutputExists):
        write_lora(make_lora("loha"), path)
    assert path.read_bytes() == before and _files(tmp_path) == ["good.safetensors"]
    write_lora(make_lora("loha"), path, overwrite=True)
    assert read_lora(path).kinds == {LayerKind.LOHA}


@pytest.mark.parametrize("overwrite", [False, True])
def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch, overwrite):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", fail)
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(FormatError, match="No space left"):
        write_lora(make_lora("lora"), tmp_path / "out.safetensors", overwrite=overwrite)
    assert _files(tmp_path) == []


def test_file_systems_without_hard_links_still_get_the_file(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = write_lora(make_lora("lora"), tmp_path / "out.safetensors")
    assert _files(tmp_path) == ["out.safetensors"] and read_lora(path).layers


@pytest.mark.parametrize("value, dtype", [(float("nan"), torch.float32), (1e6, torch.float16)])
def test_non_finite_tensors_are_refused(tmp_path, value, dtype):
    lora = make_lora("lora")
    name = NAMES[Family.SD1]["linear"]
    lora.layers[name].up[0, 0] = value
    with pytest.raises(FormatError, match=name):
        write_lora(lora, tmp_path / "bad.safetensors", dtype=dtype)
    assert _files(tmp_path) == []


def test_output_is_byte_reproducible(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = make_lora("loha_tucker", seed=1)
    first.metadata.update({"zeta": "1", "alpha_note": "2"})
    second = make_lora("loha_tucker", seed=1)
    second.metadata = {"alpha_note": "2", **dict(reversed(list(first.metadata.items())))}
    a = write_lora(first, tmp_path / "a" / "x.safetensors").read_bytes()
    b = write_lora(second, tmp_path / "b" / "x.safetensors").read_bytes()
    assert a == b


def test_serialiser_matches_the_safetensors_layout():
    tensors = {"b.w": torch.randn(3, 2).to(torch.float16), "a.w": torch.randn(5).to(torch.bfloat16),
               "c.alpha": torch.tensor(2.0), "d.n": torch.arange(3)}
    ours = safetensors_io.serialize_safetensors(tensors, {"k": "v"})
    theirs = safetensors.torch.save(tensors, {"k": "v"})
    assert len(ours) == len(theirs) and ours[8:].endswith(theirs[-30:])
    assert safetensors_io.payload_sha256(ours) == safetensors_io.payload_sha256(theirs)
    loaded = safetensors.torch.load(ours)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def _kohya_reference_hashes(tensors, metadata) -> tuple[str, str]:
    """kohya's precalculate_safetensors_hashes, restated: ss_* metadata only, library serialisation."""
    data = safetensors.torch.save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    start = 8 + int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[start:]).hexdigest(), hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def test_sshs_hashes_are_kohyas(tmp_path):
    gen = torch.Generator().manual_seed(0)
    name = NAMES[Family.SD1]["te"]
    layer = LowRankLayer(down=torch.randn(8, 80_000, generator=gen), up=torch.randn(6, 8, generator=gen), alpha=4.0)
    lora = LoraFile({name: layer}, Family.SD1, metadata={"user_note": "not hashed", "ss_seed": "7"})
    path = write_lora(lora, tmp_path / "big.safetensors")
    data = path.read_bytes()
    tensors, metadata = safetensors_io.read_safetensors(path)
    assert len(data) > 0x110000
    model_hash, legacy = _kohya_reference_hashes(tensors, metadata)
    assert metadata["sshs_model_hash"] == model_hash == safetensors_io.payload_sha256(data)
    assert metadata["sshs_legacy_hash"] == legacy != hashlib.sha256(b"").hexdigest()[:8]
    assert metadata["user_note"] == "not hashed"


def test_write_fills_missing_metadata_and_keeps_the_rest(tmp_path):
    lora = make_lora("loha", Family.SD1)
    lora.metadata = {"ss_output_name": "kept", "sshs_model_hash": "stale"}
    metadata = read_lora(write_lora(lora, tmp_path / "new.safetensors")).metadata
    assert metadata["ss_output_name"] == "kept"
    assert metadata["ss_network_module"] == "lycoris.kohya"
    assert json.loads(metadata["ss_network_args"])["algo"] == "loha"
    assert metadata["sshs_model_hash"] != "stale"
    assert safetensors_io.read_safetensors_metadata(tmp_path / "new.safetensors") == metadata


# ------------------------------------------------------------------------------------------------ metadata
def test_standard_metadata_for_lora_and_locon():
    lora = standard_metadata(make_lora("lora", alpha=1.0, rank=8), "out")
    assert lora == {"ss_output_name": "out", "ss_base_model_version": "sd_v1", "ss_v2": "False",
                    "ss_network_module": "networks.lora", "ss_network_dim": "8", "ss_network_alpha": "1.0"}
    locon = standard_metadata(make_lora("locon", Family.SDXL), "out")
    assert locon["ss_base_model_version"] == "sdxl_base_v1-0"
    assert json.loads(locon["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "2.0"}


def test_standard_metadata_for_sd2_lokr_and_varying_ranks():
    lokr = make_lora("lokr_factored", Family.SD2)
    fields = standard_metadata(lokr, "x")
    assert fields["ss_v2"] == "True" and fields["ss_base_model_version"] == "sd_v2"
    assert fields["ss_network_module"] == "lycoris.kohya"
    assert json.loads(fields["ss_network_args"]) == {"algo": "lokr", "conv_dim": "4", "conv_alpha": "2.0"}
    mixed = make_lora("lora")
    mixed.layers["lora_te_text_model_encoder_layers_1_mlp_fc1"] = LowRankLayer(torch.ones(2, 8), torch.ones(6, 2))
    assert standard_metadata(mixed, "x")["ss_network_dim"] == "Dynamic"


def test_with_recipe_stores_json_under_one_key():
    base = {"ss_output_name": "a"}
    out = with_recipe(base, {"route": "difference", "ratios": [1, -1]})
    assert base == {"ss_output_name": "a"}
    assert json.loads(out[RECIPE_KEY]) == {"route": "difference", "ratios": [1, -1]}
    assert set(out) == {"ss_output_name", RECIPE_KEY}


# ------------------------------------------------------------------------------------------------- family
def _wide_layers(name: str, width: int) -> dict:
    return {name: LowRankLayer(down=torch.zeros(1, width), up=torch.zeros(4, 1))}


@pytest.mark.parametrize("layers, metadata, family, assumed", [
    ({"lora_te2_text_model_encoder_layers_0_mlp_fc1": None}, {}, Family.SDXL, False),
    ({"lora_unet_output_blocks_2_1_proj_in": None}, {}, Family.SDXL, False),
    (_wide_layers("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 1024), {}, Family.SD2, False),
    (_wide_layers("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", 768), {}, Family.SD1,
     False),
    ({"lora_unet_up_blocks_1_resnets_0_conv1": None}, {"ss_v2": "True"}, Family.SD2, False),
    ({"lora_unet_up_blocks_1_resnets_0_conv1": None}, {"ss_base_model_version": "sdxl_base_v1-0"}, Family.SDXL,
     False),
    ({"lora_unet_up_blocks_3_resnets_0_conv1": None}, {"ss_base_model_version": "sdxl_base_v1-0"}, Family.SD1,
     True),
    ({"lora_unet_up_blocks_1_resnets_0_conv1": None}, {}, Family.SD1, True),
])
def test_family_detection(layers, metadata, family, assumed):
    guess = detect_family(layers, metadata)
    assert (guess.family, guess.assumed) == (family, assumed)
    assert guess.reason and "\n" not in guess.reason


def test_shapes_outrank_stale_metadata_and_say_so():
    layers = _wide_layers("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 1024)
    guess = detect_family(layers, {"ss_base_model_version": "sd_v1"})
    assert guess.family is Family.SD2 and "metadata says SD1" in guess.reason
