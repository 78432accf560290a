"""Merging and re-ranking base-aware kinds (DoRA, OFT/BOFT, IA3, GLoRA) against a base checkpoint, and norm layers.

The exact merge stores Σ ratioᵢ · ΔWᵢ(W) per module as a full difference; a re-rank gives its best rank-k
approximation. Without a base, or with one that does not fit, the merge stops with one line naming the module,
and the CLI writes nothing and leaves its inputs as they were.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from lib_copylora.cli import main
from lib_copylora.core.base_weights import open_checkpoint_base
from lib_copylora.core.errors import BaseModelError
from lib_copylora.core.family import Family
from lib_copylora.core.formats import lora_from_state_dict, read_lora
from lib_copylora.core.layers import LayerKind
from lib_copylora.core.merge import MergeSpec, MergeWarning, merge_loras
from lib_copylora.core.safetensors_io import write_safetensors
from lora_factory import BASE_KINDS, NAMES, base_checkpoint, family_metadata, lora_state_dict, make_lora

pytestmark = pytest.mark.filterwarnings("ignore::lib_copylora.core.merge.MergeWarning")


def _write_lora(path, kind, family=Family.SD1, seed=0):
    write_safetensors(path, lora_state_dict(kind, family, seed=seed), family_metadata(family))
    return path


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "base.safetensors"
    save_file(base_checkpoint(Family.SD1), str(path))
    return path


def _base_weight(base, name):
    return base.weight(name).to(torch.float32)


@pytest.mark.parametrize("kind", BASE_KINDS)
def test_one_input_at_ratio_one_is_its_own_delta(kind, checkpoint):
    lora = make_lora(kind)
    base = open_checkpoint_base(checkpoint)
    merged = merge_loras([lora], MergeSpec(ratios=(1.0,)), base)
    assert set(merged.layers) == set(lora.layers)
    for name, layer in lora.layers.items():
        out = merged.layers[name]
        assert out.kind is LayerKind.FULL
        weight = _base_weight(base, name)
        torch.testing.assert_close(out.delta().reshape(weight.shape), layer.delta(weight))


def test_dora_difference_is_b_minus_a_against_the_base(checkpoint):
    b, a = make_lora("dora", seed=1), make_lora("dora", seed=2)
    base = open_checkpoint_base(checkpoint)
    merged = merge_loras([b, a], MergeSpec(ratios=(1.0, -1.0)), base)
    for name in b.layers:
        weight = _base_weight(base, name)
        expected = b.layers[name].delta(weight) - a.layers[name].delta(weight)
        torch.testing.assert_close(merged.layers[name].delta().reshape(weight.shape), expected)
    recipe = json.loads(merged.metadata["copylora"])
    assert recipe["base"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert recipe["base"]["name"] == "base.safetensors"


def test_mixed_with_plain_lora_and_rerank_is_the_best_rank_k(checkpoint):
    dora, plain = make_lora("dora", seed=3), make_lora("lora", seed=4)
    base = open_checkpoint_base(checkpoint)
    merged = merge_loras([dora, plain], MergeSpec(ratios=(1.0, 0.5), new_rank=2), base)
    name = NAMES[Family.SD1]["linear"]
    weight = _base_weight(base, name)
    exact = dora.layers[name].delta(weight) + 0.5 * plain.layers[name].delta()
    u, s, vh = torch.linalg.svd(exact)
    best = u[:, :2] @ torch.diag(s[:2]) @ vh[:2]
    layer = merged.layers[name]
    assert layer.kind is LayerKind.LORA and layer.rank == 2
    torch.testing.assert_close(layer.delta(), best, rtol=1e-4, atol=1e-5)


def test_full_rank_rerank_of_oft_is_lossless(checkpoint):
    lora = make_lora("oft")
    base = open_checkpoint_base(checkpoint)
    merged = merge_loras([lora], MergeSpec(ratios=(-0.7,), new_rank=64), base)
    for name, layer in lora.layers.items():
        weight = _base_weight(base, name)
        torch.testing.assert_close(merged.layers[name].delta().reshape(weight.shape), -0.7 * layer.delta(weight),
                                   rtol=1e-4, atol=1e-5)


def test_norm_layers_merge_exactly_and_stay_full_when_reranking():
    norm, plain = make_lora("norm", seed=5), make_lora("lora", seed=6)
    name = next(iter(norm.layers))
    exact = merge_loras([norm], MergeSpec(ratios=(2.0,)))
    torch.testing.assert_close(exact.layers[name].delta(), 2 * norm.layers[name].delta())
    torch.testing.assert_close(exact.layers[name].diff_b, 2 * norm.layers[name].diff_b)
    with pytest.warns(MergeWarning, match="1-D"):
        reranked = merge_loras([norm, plain], MergeSpec(ratios=(1.0, 1.0), new_rank=2))
    assert reranked.layers[name].kind is LayerKind.FULL


def test_sd2_text_encoder_q_is_the_first_third_of_the_fused_projection(tmp_path):
    tensors = base_checkpoint(Family.SD2)
    path = tmp_path / "sd2.safetensors"
    save_file(tensors, str(path))
    base = open_checkpoint_base(path)
    assert base.family is Family.SD2
    fused = tensors["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
    torch.testing.assert_close(base.weight(NAMES[Family.SD2]["te"]), fused[:6])


# ------------------------------------------------------------------------------------------- the CLI and refusals
def _cli(capsys, *argv):
    code = main(["merge", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _snapshot(*paths):
    return {p: p.read_bytes() for p in paths}


def test_cli_merges_dora_with_base(tmp_path, checkpoint, capsys):
    b, a = _write_lora(tmp_path / "B.safetensors", "dora", seed=1), _write_lora(tmp_path / "A.safetensors", "dora",
                                                                                 seed=2)
    out = tmp_path / "diff.safetensors"
    code, stdout, _ = _cli(capsys, "--models", b, a, "--ratios", 1, -1, "--base", checkpoint, "--save_to", out,
                           "--save_precision", "float")
    assert code == 0 and "full diff: 3" in stdout
    merged = read_lora(out)
    base = open_checkpoint_base(checkpoint)
    name = NAMES[Family.SD1]["conv"]
    weight = _base_weight(base, name)
    expected = read_lora(b).layers[name].delta(weight) - read_lora(a).layers[name].delta(weight)
    torch.testing.assert_close(merged.layers[name].delta(), expected)


@pytest.mark.parametrize("kind", ["dora", "oft", "ia3", "glora", "boft"])
def test_without_a_base_the_merge_names_the_kind_and_the_flag(kind, tmp_path, capsys):
    lora = _write_lora(tmp_path / "in.safetensors", kind)
    before = _snapshot(lora)
    out = tmp_path / "o.safetensors"
    code, _, err = _cli(capsys, "--models", lora, "--ratios", 1, "--save_to", out)
    assert code == 2 and not out.exists() and _snapshot(lora) == before
    line = err.strip()
    assert "\n" not in line and "--base" in line and "Traceback" not in err
    label = {"dora": "LoRA+DoRA", "oft": "OFT", "ia3": "IA3", "glora": "GLoRA", "boft": "BOFT"}[kind]
    assert f" is {label}," in line


def _bad_base(tmp_path, case):
    path = tmp_path / "bad.safetensors"
    if case == "wrong family":
        save_file(base_checkpoint(Family.SDXL), str(path))
    elif case == "missing key":
        tensors = base_checkpoint(Family.SD1)
        del tensors["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"]
        save_file(tensors, str(path))
    elif case == "other shape":
        tensors = base_checkpoint(Family.SD1)
        tensors["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"] = torch.ones(6, 9)
        save_file(tensors, str(path))
    elif case == "a LoRA, not a checkpoint":
        save_file(lora_state_dict("lora"), str(path))
    elif case == "not safetensors":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return path


@pytest.mark.parametrize("case", ["wrong family", "missing key", "other shape", "a LoRA, not a checkpoint",
                                  "not safetensors", "no such file"])
def test_a_base_that_does_not_fit_is_refused(case, tmp_path, capsys):
    lora = _write_lora(tmp_path / "in.safetensors", "dora")
    base = _bad_base(tmp_path, case) if case != "no such file" else tmp_path / "nope.safetensors"
    before = _snapshot(lora, *([base] if base.exists() else []))
    out = tmp_path / "o.safetensors"
    code, _, err = _cli(capsys, "--models", lora, "--ratios", 1, "--base", base, "--save_to", out)
    assert code == 2 and not out.exists() and _snapshot(lora, *([base] if base.exists() else [])) == before
    assert err.count("\n") == 1 and "Traceback" not in err
    if case in ("wrong family", "missing key", "other shape"):
        assert "module lora_" in err  # names the module
    if case == "other shape":
        assert "(6, 9)" in err


def test_a_base_nobody_needs_is_only_noted(tmp_path, checkpoint, capsys):
    lora = _write_lora(tmp_path / "in.safetensors", "lora")
    code, stdout, _ = _cli(capsys, "--models", lora, "--ratios", 1, "--base", checkpoint, "--save_to",
                           tmp_path / "o.safetensors")
    assert code == 0 and "not needed" in stdout


def test_dora_needing_base_is_a_typed_error_in_the_core():
    with pytest.raises(BaseModelError, match="--base"):
        merge_loras([make_lora("dora")], MergeSpec(ratios=(1.0,)))


def test_reading_a_dora_file_uses_every_key():
    lora = lora_from_state_dict(lora_state_dict("dora"), strict=False)
    assert not lora.unused_keys and set(lora.needs_base) == set(lora.layers)
