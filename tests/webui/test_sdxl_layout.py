"""The SDXL fixtures' layout and LoRA files, checked without a WebUI (part of the default run, a few seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lib_copylora.core.blocks import block_of, format_for
from lib_copylora.core.family import Family
from lib_copylora.core.formats import read_lora
from lib_copylora.core.layers import LayerKind

from .fixtures import sd15_layout as sd1
from .fixtures import sdxl_layout as layout
from .fixtures.make_checkpoint import sdxl_checkpoint_entries
from .fixtures.make_loras import STRENGTH
from .fixtures.make_sdxl_loras import make_sdxl_lora, sdxl_lora_targets


def _params(specs) -> int:
    return sum(int(np.prod(s.shape)) for s in specs)


def test_layout_has_the_parameter_counts_of_sdxl_base():
    # the counts diffusers, transformers and open_clip report for SDXL base's UNet, CLIP-L and bigG text tower
    assert _params(layout.unet_specs()) == 2_567_463_684
    assert _params(layout.clip_l_specs()) == 123_060_480
    assert _params(layout.big_g_specs()) == 694_659_841  # 694,659,840 plus the logit scale
    assert len(layout.weight_specs()) + len(layout.fixed_arrays()) == 2516  # sgm's state dict, built on meta


def test_unet_walk_places_attention_and_resamplers_as_sgm_does():
    blocks = layout.unet_blocks()
    depths = {t.ldm: t.depth for t in blocks.transformers}
    assert "input_blocks.1.1" not in depths and "output_blocks.8.1" not in depths  # no attention at 320
    assert (depths["input_blocks.4.1"], depths["input_blocks.7.1"], depths["middle_block.1"]) == (2, 10, 10)
    assert [s.ldm for s in blocks.resamplers] == ["input_blocks.3.0.op", "input_blocks.6.0.op",
                                                  "output_blocks.2.2.conv", "output_blocks.5.2.conv"]
    skips = {r.ldm: r.c_in for r in blocks.resblocks}
    assert (skips["output_blocks.2.0"], skips["output_blocks.6.0"]) == (1280 + 640, 640 + 320)


def test_sigmas_are_the_linear_schedules():
    abar = sd1.schedule_arrays()["alphas_cumprod"].astype(np.float64)
    sigmas = layout.fixed_arrays()["denoiser.sigmas"]
    assert sigmas.shape == (1000,) and np.all(np.diff(sigmas) > 0)
    np.testing.assert_allclose(sigmas[[0, -1]], np.sqrt((1 - abar[[0, -1]]) / abar[[0, -1]]), rtol=1e-6)


def test_entries_are_float16_weights_with_exact_buffers():
    entries = sdxl_checkpoint_entries(seed=3)
    key = layout.CLIP_L + "embeddings.position_ids"
    assert entries[key].dtype == np.int64 and entries[key].produce().tolist() == [list(range(77))]
    weights = [e for k, e in entries.items() if k not in layout.fixed_arrays()]
    assert {e.dtype for e in weights} == {np.dtype("float16")}
    gain = entries[layout.BIG_G + "ln_final.weight"].produce()  # redrawn, not ones: every weight is random
    assert gain.shape == (1280,) and 0 < np.abs(gain - 1).mean() < 0.2


@pytest.mark.parametrize("kind, fmt_count", [("lora", 12), ("locon", 20)])
def test_sdxl_fixture_loras_cover_exactly_the_blocks_of_one_format(tmp_path, kind, fmt_count):
    path = tmp_path / f"{kind}.safetensors"
    make_sdxl_lora(path, kind, seed=3)
    lora = read_lora(path, strict=True)  # strict: every key of the file belongs to a layer
    assert lora.family is Family.SDXL
    # every module sits in a block (nothing left at the plain strength), and together they fill the format: the
    # 12-value one for the attention-only LoRA, the 20-value one for the LoCon, both text encoders in BASE
    blocks = {block_of(name, Family.SDXL) for name in lora.layers}
    assert blocks == set(format_for(Family.SDXL, fmt_count).blocks)
    assert {name.split("_text_model_")[0] for name in lora.layers if "_text_model_" in name} == {"lora_te1", "lora_te2"}
    assert lora.kinds == {LayerKind.LORA}
    layer = lora.layers["lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q"]
    # the module's own random weight has std 1/sqrt(fan_in); the delta is about STRENGTH times that
    assert layer.delta().double().std().item() * np.sqrt(1280) == pytest.approx(STRENGTH, rel=0.1)


def test_sdxl_fixture_loras_are_seeded():
    first, again = sdxl_lora_targets(), sdxl_lora_targets()
    assert first == again and len({t.name for t in first}) == len(first)
    groups = [t.group for t in first]
    # 11 transformers × 12 modules; 17 ResNets × 3 + 11 skip connections, 4 samplers, conv_in; 2 encoders × 2 × 6
    assert (groups.count("attention"), groups.count("resnet"), groups.count("text")) == (132, 67, 24)
    with pytest.raises(ValueError, match="no SDXL fixture kind"):
        make_sdxl_lora(Path("unused.safetensors"), "loha", seed=3)
