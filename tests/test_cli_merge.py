"""`python -m lib_copylora merge`: the file round trip, and every bad input exits non-zero leaving no output."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lib_copylora.cli import build_parser, main
from lib_copylora.core.formats import read_lora

REPO = Path(__file__).resolve().parents[1]
TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
ATTN = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # block IN01
RES = "lora_unet_up_blocks_3_resnets_0_conv1"  # block OUT09, 3×3 conv


def write_kohya(path, seed, rank=2, alpha=1.0, te_prefix="lora_te_", version="sd_v1", unet_names=(ATTN, RES)):
    g = torch.Generator().manual_seed(seed)
    tensors = {}

    def module(name, out_dim, in_dim, kernel=None):
        down_shape = (rank, in_dim) if kernel is None else (rank, in_dim, *kernel)
        up_shape = (out_dim, rank) if kernel is None else (out_dim, rank, 1, 1)
        tensors[f"{name}.lora_down.weight"] = torch.randn(down_shape, generator=g).half()
        tensors[f"{name}.lora_up.weight"] = torch.randn(up_shape, generator=g).half()
        tensors[f"{name}.alpha"] = torch.tensor(alpha)

    module(TE.replace("lora_te_", te_prefix), 8, 6)
    module(unet_names[0], 10, 10)
    module(unet_names[1], 6, 4, kernel=(3, 3))
    save_file(tensors, str(path), metadata={"ss_base_model_version": version})
    return path


@pytest.fixture
def pair(tmp_path):
    return write_kohya(tmp_path / "B.safetensors", 1), write_kohya(tmp_path / "A.safetensors", 2, rank=3, alpha=2.0)


def run_merge(*argv):
    return main(["merge", *map(str, argv)])


def test_b_minus_a_round_trip_is_exact(pair, tmp_path, capsys):
    b, a = pair
    out = tmp_path / "diff.safetensors"
    assert run_merge("--models", b, a, "--ratios", 1, -1, "--save_to", out, "--save_precision", "float") == 0
    printed = capsys.readouterr().out
    assert "merged 3 modules" in printed and "rank 5: 3" in printed and "wrote" in printed
    merged, lb, la = read_lora(out), read_lora(b), read_lora(a)
    for name, layer in merged.layers.items():
        expected = lb.layers[name].delta() - la.layers[name].delta()
        assert torch.allclose(layer.delta(), expected, atol=1e-5 * expected.abs().max())
    recipe = json.loads(merged.metadata["copylora"])
    assert [i["file"] for i in recipe["inputs"]] == ["B.safetensors", "A.safetensors"]
    assert recipe["ratios"] == [1.0, -1.0] and recipe["rank"] == {"mode": "concat"}
    assert merged.metadata["ss_output_name"] == "diff" and merged.metadata["sshs_model_hash"]


def test_svd_merge_takes_kohyas_flags(pair, tmp_path, capsys):
    b, a = pair
    out = tmp_path / "svd.safetensors"
    code = run_merge("--models", b, a, "--ratios", 1, -1, "--save_to", out, "--new_rank", 4, "--new_conv_rank", 2,
                     "--device", "cpu", "--save_precision", "fp16", "--precision", "fp16")
    assert code == 0
    assert "float32" in capsys.readouterr().out  # --precision is accepted but says the math is float32
    merged = read_lora(out)
    assert merged.layers[ATTN].rank == 4 and merged.layers[RES].rank == 2
    assert merged.layers[RES].down.dtype == torch.float16


def test_te_and_unet_ratios(pair, tmp_path):
    b, a = pair
    out = tmp_path / "te.safetensors"
    assert run_merge("--models", b, a, "--ratios", 1, -1, "--te_ratios", 0, 1, "--unet_ratios", 1, 0,
                     "--save_to", out, "--save_precision", "float") == 0
    merged, lb, la = read_lora(out), read_lora(b), read_lora(a)
    assert torch.allclose(merged.layers[TE].delta(), la.layers[TE].delta(), atol=1e-4)
    assert torch.allclose(merged.layers[ATTN].delta(), lb.layers[ATTN].delta(), atol=1e-4)


def test_block_weights_per_model(pair, tmp_path):
    b, a = pair
    out = tmp_path / "blocks.safetensors"
    only_base = ",".join(["1"] + ["0"] * 16)  # SD1, 17 values: keep the text encoder only
    assert run_merge("--models", b, a, "--ratios", 1, -1, "--blocks", only_base, "-", "--save_to", out,
                     "--save_precision", "float") == 0
    merged, lb, la = read_lora(out), read_lora(b), read_lora(a)
    assert torch.allclose(merged.layers[TE].delta(), lb.layers[TE].delta() - la.layers[TE].delta(), atol=1e-4)
    assert torch.allclose(merged.layers[ATTN].delta(), -la.layers[ATTN].delta(), atol=1e-4)
    assert json.loads(merged.metadata["copylora"])["blocks"][1] is None


def test_block_presets_from_a_file(pair, tmp_path):
    b, a = pair
    presets = tmp_path / "presets.txt"
    presets.write_text("TEONLY:" + ",".join(["1"] + ["0"] * 16) + "\n", encoding="utf-8")
    out = tmp_path / "preset.safetensors"
    assert run_merge("--models", b, a, "--ratios", 1, -1, "--blocks", "TEONLY", "TEONLY", "--presets", presets,
                     "--save_to", out) == 0
    merged = read_lora(out)
    assert set(merged.layers) == {TE}
    assert json.loads(merged.metadata["copylora"])["blocks"] == ["TEONLY", "TEONLY"]


def _expect_failure(capsys, argv, out, fragment):
    code = run_merge(*argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("error: ") and "\n" not in err and fragment.lower() in err.lower(), err
    assert not out.exists() or out.read_bytes() == b"keep me"
    assert not list(out.parent.glob("*.tmp*"))


def test_truncated_input_is_refused(pair, tmp_path, capsys):
    b, a = pair
    data = b.read_bytes()
    b.write_bytes(data[: len(data) - 40])
    out = tmp_path / "o.safetensors"
    _expect_failure(capsys, ["--models", b, a, "--ratios", 1, -1, "--save_to", out], out, "B.safetensors")


def test_corrupt_header_is_refused(pair, tmp_path, capsys):
    b, a = pair
    b.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    out = tmp_path / "o.safetensors"
    _expect_failure(capsys, ["--models", b, a, "--ratios", 1, -1, "--save_to", out], out, "B.safetensors")


def test_file_without_lora_keys_is_refused(pair, tmp_path, capsys):
    b, a = pair
    save_file({"model.diffusion_model.weight": torch.zeros(2, 2)}, str(b))
    out = tmp_path / "o.safetensors"
    _expect_failure(capsys, ["--models", b, a, "--ratios", 1, -1, "--save_to", out], out, "no LoRA keys")


def test_missing_input_is_refused(pair, tmp_path, capsys):
    _, a = pair
    out = tmp_path / "o.safetensors"
    _expect_failure(capsys, ["--models", tmp_path / "nope.safetensors", a, "--ratios", 1, -1, "--save_to", out],
                    out, "no such file")


def test_different_families_are_refused(pair, tmp_path, capsys):
    b, _ = pair
    xl = write_kohya(tmp_path / "XL.safetensors", 3, te_prefix="lora_te1_", version="sdxl_base_v1-0",
                     unet_names=("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                                 "lora_unet_output_blocks_0_0_in_layers_2"))
    out = tmp_path / "o.safetensors"
    _expect_failure(capsys, ["--models", b, xl, "--ratios", 1, -1, "--save_to", out], out, "SDXL")


def test_ratio_count_must_match_model_count(pair, tmp_path, capsys):
    b, a = pair
    out = tmp_path / "o.safetensors"
    _expect_failure(capsys, ["--models", b, a, "--ratios", 1, "--save_to", out], out, "2 models but 1 ratios")


@pytest.mark.parametrize("flags", [["--new_rank", 0], ["--new_rank", -2], ["--new_rank", 4, "--new_conv_rank", 0]])
def test_rank_must_be_positive(pair, tmp_path, capsys, flags):
    b, a = pair
    out = tmp_path / "o.safetensors"
    _expect_failure(capsys, ["--models", b, a, "--ratios", 1, -1, "--save_to", out, *flags], out, "rank")


def test_unknown_preset_is_refused(pair, tmp_path, capsys):
    b, a = pair
    out = tmp_path / "o.safetensors"
    _expect_failure(capsys, ["--models", b, a, "--ratios", 1, -1, "--blocks", "NO_SUCH_PRESET", "-",
                             "--save_to", out], out, "NO_SUCH_PRESET")


def test_block_spec_of_the_wrong_length_is_refused(pair, tmp_path, capsys):
    b, a = pair
    out = tmp_path / "o.safetensors"
    _expect_failure(capsys, ["--models", b, a, "--ratios", 1, -1, "--blocks", "1,0,1", "-", "--save_to", out],
                    out, "3 values")


def test_existing_output_needs_overwrite(pair, tmp_path, capsys):
    b, a = pair
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    _expect_failure(capsys, ["--models", b, a, "--ratios", 1, -1, "--save_to", out], out, "--overwrite")
    assert run_merge("--models", b, a, "--ratios", 1, -1, "--save_to", out, "--overwrite") == 0
    assert read_lora(out).layers[ATTN].rank == 5


def test_help_explains_every_flag():
    parser = build_parser()
    merge = parser._subparsers._group_actions[0].choices["merge"]
    text = merge.format_help()
    for action in merge._actions:
        assert action.help, action.option_strings
        for flag in action.option_strings:
            assert flag in text


def test_module_entry_point_runs(pair, tmp_path):
    b, a = pair
    out = tmp_path / "cli.safetensors"
    done = subprocess.run([sys.executable, "-m", "lib_copylora", "merge", "--models", str(b), str(a),
                           "--ratios", "1", "-1", "--save_to", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and "merged 3 modules" in done.stdout
