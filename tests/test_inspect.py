"""`python -m lib_copylora inspect`: what it prints for a few small files."""

from __future__ import annotations

import json

import torch

from lib_copylora.cli import main
from lib_copylora.core.family import Family
from lib_copylora.core.formats import lora_from_state_dict, write_lora
from lib_copylora.core.layers import LowRankLayer
from lora_factory import family_metadata, lora_state_dict, make_lora


def _inspect(capsys, *args) -> tuple[int, str, str]:
    code = main(["inspect", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _line(out: str, start: str) -> str:
    return next(line.strip() for line in out.splitlines() if line.strip().startswith(start))


def test_plain_sd1_lora(tmp_path, capsys):
    path = write_lora(make_lora("lora", Family.SD1, rank=8, alpha=1.0), tmp_path / "shirt.safetensors")
    code, out, _ = _inspect(capsys, path)
    assert code == 0
    assert _line(out, "kind:") == "kind:    LoRA"
    assert _line(out, "family:").startswith("family:  SD1 (metadata: ss_base_model_version=sd_v1")
    assert _line(out, "rank:") == "rank:    rank 8, alpha 1"
    assert _line(out, "modules:") == "modules: 3 (1 text encoder, 2 UNet)"
    assert _line(out, "26 values:") == "26 values: BASE IN01 OUT11"
    assert _line(out, "17 values:") == "17 values: BASE IN01 OUT11"
    assert _line(out, "ss_output_name:") == "ss_output_name: shirt"
    assert _line(out, "ss_network_module:") == "ss_network_module: networks.lora"


def test_blocks_outside_the_short_format_and_in_no_block(tmp_path, capsys):
    tensors = lora_state_dict("locon")  # IN01 (attention, resnet) and OUT03 (resnet shortcut)
    gen = torch.Generator().manual_seed(1)
    for name in ("lora_unet_conv_in", "lora_unet_conv_out", "lora_unet_down_blocks_1_downsamplers_0_conv"):
        tensors[f"{name}.lora_down.weight"] = torch.randn(2, 4, 3, 3, generator=gen)
        tensors[f"{name}.lora_up.weight"] = torch.randn(4, 2, 1, 1, generator=gen)
    lora = lora_from_state_dict(tensors, family_metadata(Family.SD1))
    code, out, _ = _inspect(capsys, write_lora(lora, tmp_path / "convs.safetensors"))
    assert code == 0
    assert _line(out, "kind:") == "kind:    LoCon (LoRA with conv layers)"
    assert _line(out, "26 values:") == "26 values: IN00 IN01 IN06 OUT03"
    assert _line(out, "17 values:") == "17 values: IN01 OUT03   [not in this format, so left at 0: IN00 IN06]"
    assert _line(out, "in no block:") == "in no block: 1 module(s), e.g. lora_unet_conv_out"


def test_varying_ranks_are_listed_per_module(tmp_path, capsys):
    lora = make_lora("lora", Family.SDXL, rank=4, alpha=2.0)
    lora.layers["lora_unet_middle_block_1_proj_in"] = LowRankLayer(torch.ones(2, 8), torch.ones(6, 2), alpha=None)
    code, out, _ = _inspect(capsys, write_lora(lora, tmp_path / "xl.safetensors"))
    assert code == 0
    assert _line(out, "rank:") == "rank:    varies by module"
    assert _line(out, "lora_unet_middle_block_1_proj_in:") == (
        "lora_unet_middle_block_1_proj_in: LoRA, rank 2, alpha none (scale 1)")
    assert _line(out, "lora_te1_text_model_encoder_layers_0_self_attn_q_proj:").endswith("LoRA, rank 4, alpha 2")
    assert _line(out, "20 values:") == "20 values: BASE IN04 MID OUT02"
    assert _line(out, "12 values:") == "12 values: BASE IN04 MID OUT02"


def test_json_output_for_a_mixed_file(tmp_path, capsys):
    lora = make_lora("loha", Family.SDXL)
    lora.layers.update(make_lora("full", Family.SDXL).layers)
    lora.metadata["ss_tag_frequency"] = json.dumps({"shirt": {f"tag{i}": i for i in range(100)}})
    path = write_lora(lora, tmp_path / "mixed.safetensors")
    code, out, _ = _inspect(capsys, path, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["kind"] == "mixed: LoHa, full"
    assert report["family"] == "sdxl" and report["family_assumed"] is False
    assert report["blocks"]["20"]["touched"] == ["BASE", "IN01", "IN04", "OUT03"]
    assert report["blocks"]["12"]["outside_format"] == ["IN01"]
    assert report["metadata"]["ss_tag_frequency"] == lora.metadata["ss_tag_frequency"]  # full value in JSON

    code, out, _ = _inspect(capsys, path)
    shown = _line(out, "ss_tag_frequency:")
    assert len(shown) < 120 and shown.endswith(f"({len(lora.metadata['ss_tag_frequency'])} chars)")


def test_fallback_family_is_reported_as_an_assumption(tmp_path, capsys):
    lora = lora_from_state_dict(lora_state_dict("lora"))  # no metadata, tiny shapes: nothing decides
    lora.metadata = {}
    path = write_lora(lora, tmp_path / "bare.safetensors")
    # write_lora filled ss_base_model_version in; strip it to see the fallback as a reader would
    from lib_copylora.core.safetensors_io import read_safetensors, write_safetensors
    tensors, _ = read_safetensors(path)
    write_safetensors(path, tensors, {}, overwrite=True)
    code, out, _ = _inspect(capsys, path)
    assert code == 0 and "assuming SD1" in _line(out, "family:")


def test_bad_files_are_errors_with_exit_code_2(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    code, out, err = _inspect(capsys, junk)
    assert code == 2 and out == ""
    assert err.startswith("error: junk.safetensors: ")


def test_lenient_inspect_lists_unknown_keys(tmp_path, capsys):
    tensors = lora_state_dict("lora")
    tensors["lora_unet_mystery.dora_scale"] = torch.ones(2)
    from lib_copylora.core.safetensors_io import write_safetensors
    path = write_safetensors(tmp_path / "odd.safetensors", tensors, family_metadata(Family.SD1))
    assert _inspect(capsys, path)[0] == 2
    code, out, _ = _inspect(capsys, path, "--lenient")
    assert code == 0 and _line(out, "unused keys:") == "unused keys: 1, e.g. lora_unet_mystery.dora_scale"


def test_sd1_lora_with_only_1x1_projection_convs_is_plain_lora(tmp_path, capsys):
    """kohya's plain SD1 LoRA has proj_in/proj_out as 1×1 convs: that is not a LoCon."""
    gen = torch.Generator().manual_seed(2)
    tensors = {}
    for name in ("lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_down_blocks_0_attentions_0_transformer_"
                 "blocks_0_attn1_to_q"):
        conv = name.endswith("proj_in")
        tensors[f"{name}.lora_down.weight"] = torch.randn(*((2, 4, 1, 1) if conv else (2, 4)), generator=gen)
        tensors[f"{name}.lora_up.weight"] = torch.randn(*((4, 2, 1, 1) if conv else (4, 2)), generator=gen)
    lora = lora_from_state_dict(tensors, family_metadata(Family.SD1))
    code, out, _ = _inspect(capsys, write_lora(lora, tmp_path / "plain.safetensors"))
    assert code == 0 and _line(out, "kind:") == "kind:    LoRA"
