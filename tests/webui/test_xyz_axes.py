"""Our X/Y/Z plot axes through the WebUI's own script and `/sdapi/v1/txt2img` (`script_name: "x/y/z plot"`)."""

from __future__ import annotations

import numpy as np
import pytest

from .client import XYZ_SCRIPT

pytestmark = pytest.mark.webui

PROMPT = "a red cube on a wooden table"
SEED = 777
AXES = ("CopyLoRA: strength", "CopyLoRA: block preset", "CopyLoRA: block sweep")


def xyz_cells(webui, prompt: str, axis: str, values: str = "", dropdown=None, csv_mode: bool = True):
    return webui.xyz_cells(prompt, SEED, axis, values, dropdown, csv_mode)


def single(webui, prompt):
    return webui.txt2img(prompt, SEED).image


def test_our_axes_are_listed_once(webui):
    labels = next(a for a in webui.script_args(XYZ_SCRIPT) if a["label"] == "X type")["choices"]
    assert [labels.count(axis) for axis in AXES] == [1, 1, 1]


def test_strength_axis_with_range_and_named_lora(webui, fixture_loras):
    lora = fixture_loras["lora"]
    cells, infotexts = xyz_cells(webui, f"{PROMPT} <lora:{lora}:1>", AXES[0], f"{lora}:0-1 [2]")
    assert len(cells) == 2
    assert np.array_equal(cells[0], single(webui, PROMPT))  # strength 0 is the image without the LoRA
    assert np.array_equal(cells[1], single(webui, f"{PROMPT} <lora:{lora}:1>"))
    assert f"<lora:{lora}:0>" in infotexts[0]


def test_preset_axis_from_the_dropdown_matches_typed_prompts(webui, fixture_loras):
    lora, other = fixture_loras["lora"], fixture_loras["locon"]
    prompt = f"{PROMPT} <lora:{other}:0.5> <lora:{lora}:1>"
    cells, infotexts = xyz_cells(webui, prompt, AXES[1], dropdown=["face", "OUTALL"], csv_mode=False)
    assert "lbw=face" in infotexts[0] and "lbw=OUTALL" in infotexts[1]
    # without a name the value goes to the first LoRA tag of the prompt
    expected = single(webui, f"{PROMPT} <lora:{other}:0.5:face> <lora:{lora}:1>")
    assert np.array_equal(cells[0], expected)


def test_block_sweep_axis(webui, fixture_loras):
    lora = fixture_loras["lora"]
    choices = next(a for a in webui.script_args(XYZ_SCRIPT) if a["label"] == "X type")["choices"]
    assert AXES[2] in choices
    cells, infotexts = xyz_cells(webui, f"{PROMPT} <lora:{lora}:1>", AXES[2], "IN05 only, without MID")
    assert len(cells) == 2
    in05_only = "1,0,0,0,1,0,0,0,0,0,0,0,0,0,0,0,0"
    assert f"lbw={in05_only}" in infotexts[0]
    assert np.array_equal(cells[0], single(webui, f"{PROMPT} <lora:{lora}:1:{in05_only}>"))


def test_a_bad_axis_value_is_refused_before_the_grid_runs(webui, fixture_loras):
    lora = fixture_loras["lora"]
    from .client import WebuiHttpError

    with pytest.raises(WebuiHttpError, match="unknown block-weight preset"):
        xyz_cells(webui, f"{PROMPT} <lora:{lora}:1>", AXES[1], "nosuchpreset")
    # the WebUI keeps generating afterwards
    assert single(webui, PROMPT).shape == (64, 64, 3)
