"""PEFT's DoRA (`lora_magnitude_vector`): read, named by inspect, merged against a base as PEFT merges it.

PEFT rescales each output row of W + s·BA to its magnitude over the row's norm (the WebUI's dora_scale rescales
input columns instead, and the WebUI does not load PEFT's key at all). The expected ΔW below is written from that
definition, independently of our layer code; the magnitude's three stored layouts (linear (out,), conv
(out, 1, 1, 1) and (1, out, 1, 1)) all mean one value per output row.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lib_copylora.cli import main
from lib_copylora.core.base_weights import open_checkpoint_base
from lib_copylora.core.errors import BaseModelError, FormatError
from lib_copylora.core.family import Family
from lib_copylora.core.formats import lora_from_state_dict, lora_to_state_dict, read_lora
from lib_copylora.core.merge import MergeSpec, merge_loras
from lora_factory import NAMES, base_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::lib_copylora.core.merge.MergeWarning")

LINEAR = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # (6, 8) in the base
CONV = "unet.down_blocks.0.resnets.0.conv1"  # (6, 4, 3, 3)
KOHYA = {LINEAR: NAMES[Family.SD1]["linear"], CONV: NAMES[Family.SD1]["conv"]}


def peft_dora(seed=0, conv_layout=(6, 1, 1, 1), alpha=None, suffix=".lora_magnitude_vector"):
    gen = torch.Generator().manual_seed(seed)
    tensors = {f"{LINEAR}.lora_A.weight": torch.randn(2, 8, generator=gen),
               f"{LINEAR}.lora_B.weight": torch.randn(6, 2, generator=gen),
               f"{LINEAR}{suffix}": torch.rand(6, generator=gen) + 0.5,
               f"{CONV}.lora_A.weight": torch.randn(2, 4, 3, 3, generator=gen),
               f"{CONV}.lora_B.weight": torch.randn(6, 2, 1, 1, generator=gen),
               f"{CONV}{suffix}": torch.rand(conv_layout, generator=gen) + 0.5}
    if alpha is not None:
        tensors.update({f"{m}.alpha": torch.tensor(float(alpha)) for m in (LINEAR, CONV)})
    return tensors


def peft_merged_delta(tensors, module, weight, scale=1.0, suffix=".lora_magnitude_vector"):
    """W' − W as PEFT merges a DoRA layer: m · (W + s·BA) / ‖row of (W + s·BA)‖, row by row."""
    a, b = tensors[f"{module}.lora_A.weight"], tensors[f"{module}.lora_B.weight"]
    product = (b.flatten(1) @ a.flatten(1)).reshape(weight.shape) * scale
    combined = weight.double() + product.double()
    rows = combined.flatten(1).norm(dim=1)
    magnitude = tensors[f"{module}{suffix}"].double().flatten()
    scaled = combined * (magnitude / rows).reshape(-1, *[1] * (weight.dim() - 1))
    return (scaled - weight.double()).float()


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base.safetensors"
    save_file(base_checkpoint(Family.SD1), str(path))
    return path


@pytest.mark.parametrize("conv_layout", [(6, 1, 1, 1), (1, 6, 1, 1), (6,)])
@pytest.mark.parametrize("alpha", [None, 1.0])
def test_delta_is_peft_merge(base, conv_layout, alpha):
    tensors = peft_dora(conv_layout=conv_layout, alpha=alpha)
    lora = lora_from_state_dict(tensors)
    checkpoint = open_checkpoint_base(base)
    for module, kohya in KOHYA.items():
        weight = checkpoint.weight(kohya).to(torch.float32)
        expected = peft_merged_delta(tensors, module, weight, scale=1.0 if alpha is None else alpha / 2)
        torch.testing.assert_close(lora.layers[kohya].delta(weight), expected, rtol=1e-5, atol=1e-5)


def test_older_peft_spelling_with_weight_suffix_is_read(base):
    tensors = peft_dora(suffix=".lora_magnitude_vector.weight")
    lora = lora_from_state_dict(tensors)
    weight = open_checkpoint_base(base).weight(KOHYA[LINEAR]).to(torch.float32)
    expected = peft_merged_delta(tensors, LINEAR, weight, suffix=".lora_magnitude_vector.weight")
    torch.testing.assert_close(lora.layers[KOHYA[LINEAR]].delta(weight), expected, rtol=1e-5, atol=1e-5)


def test_inspect_names_peft_dora(tmp_path, capsys):
    path = tmp_path / "peft_dora.safetensors"
    save_file(peft_dora(), str(path))
    assert main(["inspect", str(path)]) == 0
    assert "with DoRA (PEFT's lora_magnitude_vector) on every module" in capsys.readouterr().out


def test_cli_difference_with_a_kohya_lora_against_the_base(tmp_path, base, capsys):
    b, a = tmp_path / "B.safetensors", tmp_path / "A.safetensors"
    save_file(peft_dora(seed=1), str(b))
    gen = torch.Generator().manual_seed(2)
    kohya = KOHYA[LINEAR]
    save_file({f"{kohya}.lora_down.weight": torch.randn(2, 8, generator=gen),
               f"{kohya}.lora_up.weight": torch.randn(6, 2, generator=gen)}, str(a))
    out = tmp_path / "diff.safetensors"
    code = main(["merge", "--models", str(b), str(a), "--ratios", "1", "-1", "--base", str(base), "--save_to",
                 str(out), "--save_precision", "float"])
    assert code == 0, capsys.readouterr().err
    merged = read_lora(out)
    weight = open_checkpoint_base(base).weight(kohya).to(torch.float32)
    expected = read_lora(b).layers[kohya].delta(weight) - read_lora(a).layers[kohya].delta()
    torch.testing.assert_close(merged.layers[kohya].delta(), expected)


def test_without_a_base_the_cli_names_the_flag_and_writes_nothing(tmp_path, capsys):
    path, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_file(peft_dora(), str(path))
    before = path.read_bytes()
    assert main(["merge", "--models", str(path), "--ratios", "1", "--save_to", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--base" in err and "Traceback" not in err
    assert not out.exists() and path.read_bytes() == before


@pytest.mark.parametrize("layout", [(5,), (1, 5, 1, 1), (6, 8)])
def test_a_magnitude_of_the_wrong_size_names_the_module(base, layout):
    tensors = peft_dora()
    tensors[f"{CONV}.lora_magnitude_vector"] = torch.ones(layout)
    lora = lora_from_state_dict(tensors)
    with pytest.raises(BaseModelError, match=f"module {KOHYA[CONV]}: .*lora_magnitude_vector"):
        merge_loras([lora], MergeSpec(ratios=(1.0,)), open_checkpoint_base(base))


def test_two_magnitudes_for_one_module_are_refused():
    both = peft_dora()
    both[f"{LINEAR}.lora_magnitude_vector.weight"] = both[f"{LINEAR}.lora_magnitude_vector"].clone()
    with pytest.raises(FormatError, match="stored twice"):
        lora_from_state_dict(both)
    beside = peft_dora()
    beside[f"{LINEAR}.dora_scale"] = torch.ones(1, 8)
    with pytest.raises(FormatError, match="two DoRA magnitudes"):
        lora_from_state_dict(beside)


def test_peft_magnitudes_are_never_written_as_dora_scale():
    # the WebUI would read them as per-input-column magnitudes: another ΔW
    with pytest.raises(FormatError, match="--base"):
        lora_to_state_dict(lora_from_state_dict(peft_dora()))
