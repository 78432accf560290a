"""`inspect` names every kind the WebUI loads, per module, with rank/alpha and DoRA, and says what needs a base."""

from __future__ import annotations

import json

import pytest
import torch

from lib_copylora.cli import main
from lib_copylora.core.formats import lora_from_state_dict, read_lora, write_lora
from lora_factory import BASE_KINDS, NAMES, family_metadata, lora_state_dict, make_lora


def _inspect(capsys, *args):
    code = main(["inspect", *map(str, args)])
    return code, capsys.readouterr().out


def _line(out: str, start: str) -> str:
    return next(line.strip() for line in out.splitlines() if line.strip().startswith(start))


@pytest.mark.parametrize("kind, label", [("dora", "LoCon (LoRA with conv layers), with DoRA (dora_scale) on every "
                                                  "module"), ("oft", "OFT"), ("boft", "BOFT"), ("ia3", "IA3"),
                                         ("glora", "GLoRA"), ("norm", "norm"), ("dora_loha", "LoHa, with DoRA "
                                                                                             "(dora_scale) on every "
                                                                                             "module")])
def test_each_kind_is_named(kind, label, tmp_path, capsys):
    path = write_lora(make_lora(kind), tmp_path / f"{kind}.safetensors")
    code, out = _inspect(capsys, path)
    assert code == 0 and _line(out, "kind:") == f"kind:    {label}"
    if kind in BASE_KINDS:
        assert "needs the base model (merge --base CHECKPOINT)" in _line(out, "base:")
    else:
        assert "base:" not in out


def test_mixed_file_lists_each_module(tmp_path, capsys):
    tensors = {**lora_state_dict("boft"), **lora_state_dict("norm"),
               **{k: v for k, v in lora_state_dict("ia3").items() if "attn2" in k}}
    dora = lora_state_dict("dora", seed=3)
    conv = NAMES[next(iter(NAMES))]["conv"]
    tensors.update({k: v for k, v in dora.items() if k.startswith(conv + ".")})
    path = tmp_path / "mixed.safetensors"
    write_lora(lora_from_state_dict(tensors, family_metadata(next(iter(NAMES)))), path)
    code, out = _inspect(capsys, path)
    assert code == 0
    assert _line(out, "kind:") == "kind:    mixed: BOFT, IA3, LoCon (LoRA with conv layers), norm, with DoRA " \
                                  "(dora_scale) on 1 module(s)"
    assert _line(out, f"{conv}:") == f"{conv}: LoRA+DoRA, rank 4, alpha 2"
    assert _line(out, "lora_unet_down_blocks_0_attentions_0").endswith(
        "BOFT, 3 blocks of 2 in 1 butterfly stages, alpha 2 (constraint per channel)")
    assert _line(out, "lora_unet_up_blocks_3").endswith("IA3, 8 input scales, alpha none")
    assert _line(out, "lora_unet_down_blocks_0_resnets_0_norm1").endswith("norm, rank none, alpha none (scale 1)")
    assert "3 module(s) change with the weight they modify" in out
    _, text = _inspect(capsys, path, "--json")
    described = json.loads(text)
    assert described["dora_modules"] == 1 and len(described["needs_base"]) == 3
    assert {m["kind"] for m in described["per_module"]} == {"BOFT", "IA3", "norm", "LoRA+DoRA"}


def test_lenient_loha_read_is_said(tmp_path, capsys):
    name = NAMES[next(iter(NAMES))]["conv"]
    gen = torch.Generator().manual_seed(1)
    tensors = {f"{name}.hada_w1_a": torch.randn(6, 2, generator=gen), f"{name}.hada_w2_a": torch.randn(6, 2),
               f"{name}.hada_w1_b": torch.randn(2, 4, 3, 3), f"{name}.hada_w2_b": torch.randn(2, 4, 3, 3)}
    path = tmp_path / "loha4d.safetensors"
    from safetensors.torch import save_file
    save_file(tensors, str(path))
    before = path.read_bytes()
    code, out = _inspect(capsys, path)
    assert code == 0 and "store a conv factor 4-D; read flattened, as the WebUI reads them" in _line(out, "note:")
    assert path.read_bytes() == before
    assert read_lora(path).layers[name].shape == (6, 4, 3, 3)


def test_written_dora_file_says_so_in_its_metadata(tmp_path):
    path = write_lora(make_lora("dora"), tmp_path / "d.safetensors")
    meta = read_lora(path).metadata
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "2.0", "dora_wd": "True",
                                                   "algo": "locon"}
