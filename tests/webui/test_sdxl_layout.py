"""The SDXL fixture's layout, checked without a WebUI (part of the default run, well under a second)."""

from __future__ import annotations

import numpy as np

from .fixtures import sd15_layout as sd1
from .fixtures import sdxl_layout as layout
from .fixtures.make_checkpoint import sdxl_checkpoint_entries


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
