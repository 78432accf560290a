"""The webui tier's fixture generators, checked without a WebUI (part of the default run, a few seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from lib_copylora.core.family import Family
from lib_copylora.core.formats import read_lora
from lib_copylora.core.layers import LayerKind

from .fixtures import sd15_layout as layout
from .fixtures.make_checkpoint import draw_weight
from .fixtures.make_loras import KINDS, STRENGTH, make_lora
from .fixtures.make_tokenizer_cache import byte_symbols
from .fixtures.sorted_safetensors import TensorEntry, write_safetensors


def _params(specs) -> int:
    return sum(int(np.prod(s.shape)) for s in specs)


def test_layout_has_the_parameter_counts_of_sd15():
    # the counts ldm, diffusers and transformers report for SD1.5's UNet, KL VAE and CLIP ViT-L/14 text model
    assert _params(layout.unet_specs()) == 859_520_964
    assert _params(layout.vae_specs()) == 83_653_863
    assert _params(layout.text_specs()) == 123_060_480


def test_lora_targets_are_kohyas_module_counts():
    groups = [t.group for t in layout.lora_targets()]
    # kohya: 192 UNet modules for LoRA, 278 with conv layers (LoCon), 72 text-encoder modules
    assert (groups.count("attention"), groups.count("attention") + groups.count("resnet")) == (192, 278)
    assert groups.count("text") == 72


def test_schedule_starts_and_ends_where_the_linear_schedule_does():
    arrays = layout.schedule_arrays()
    betas = arrays["betas"].astype(np.float64)
    assert betas[0] == pytest.approx(layout.LINEAR_START) and betas[-1] == pytest.approx(layout.LINEAR_END)
    assert np.allclose(arrays["alphas_cumprod"], np.cumprod(1 - betas), rtol=1e-6)


def test_every_weight_is_drawn_nonzero_and_scaled_by_fan_in():
    out_conv = layout.TensorSpec(layout.UNET + "out.2.weight", (4, 320, 3, 3))  # ldm zero-initialises this one
    values = draw_weight(7, out_conv)
    assert values.std() == pytest.approx(1 / np.sqrt(320 * 9), rel=0.1)
    assert not np.array_equal(values, draw_weight(8, out_conv))
    assert np.array_equal(values, draw_weight(7, out_conv))


def test_writer_is_byte_reproducible_sorted_and_readable(tmp_path):
    entries = {name: TensorEntry(np.dtype("float32"), (2, 3), lambda v=v: np.full((2, 3), v, np.float32))
               for v, name in enumerate(["b.weight", "a.weight", "c.bias"])}
    first, second = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    digest = write_safetensors(first, entries, {"z": "1", "a": "2"})
    assert write_safetensors(second, dict(reversed(entries.items())), {"a": "2", "z": "1"}) == digest
    assert first.read_bytes() == second.read_bytes()
    header = json.loads(first.read_bytes()[8 : 8 + int.from_bytes(first.read_bytes()[:8], "little")])
    assert list(header) == sorted(header)
    assert np.array_equal(load_file(first)["b.weight"], np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_fixture_loras_read_strictly_and_are_as_strong_as_intended(tmp_path, kind):
    path = tmp_path / f"{kind}.safetensors"
    make_lora(path, kind, seed=3)
    lora = read_lora(path, strict=True)  # strict: every key of the file belongs to a layer
    assert lora.family is Family.SD1
    expected = {"lora": LayerKind.LORA, "locon": LayerKind.LORA, "loha": LayerKind.LOHA, "lokr": LayerKind.LOKR,
                "dora": LayerKind.LORA, "oft": LayerKind.OFT, "boft": LayerKind.BOFT, "ia3": LayerKind.IA3,
                "glora": LayerKind.GLORA, "norm": LayerKind.NORM}
    assert lora.kinds == {expected[kind]}
    if kind == "norm":
        delta = lora.layers["lora_unet_mid_block_attentions_0_transformer_blocks_0_norm1"].delta().double()
        assert delta.std().item() == pytest.approx(STRENGTH, rel=0.2)
        return
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    layer = lora.layers[name]
    # the module's own random weight has std 1/sqrt(fan_in); the delta should be about STRENGTH times that
    weight = torch.randn(1280, 1280, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / np.sqrt(1280)
    delta = (layer.delta(weight.float()) if layer.needs_base else layer.delta()).double()
    if layer.needs_base:  # the base-aware kinds only roughly: their change depends on W
        assert 0.1 < delta.std().item() * np.sqrt(1280) < 0.8
    else:
        assert delta.std().item() * np.sqrt(1280) == pytest.approx(STRENGTH, rel=0.1)


def test_byte_symbols_cover_every_byte_once():
    symbols = byte_symbols()
    assert len(symbols) == len(set(symbols)) == 256
    assert symbols[0] == "!" and " " not in symbols  # printable first, whitespace moved out of the way
