"""The new kinds on the real WebUI, with its built-in Lora as the oracle: DoRA, OFT, BOFT, IA3, GLoRA, norm layers.

The server has no way to hand out the ΔW it computes, so the oracle is its effect: our exact ΔW of each fixture
file, computed inside the WebUI against the loaded model (POST /copylora/v1/merge, stored as `full` in fp32), must
generate the image the built-in Lora generates from the original file (same seed; the fixtures are float32 so the
two differ only by the order of float32 operations). The same merge computed from the checkpoint file with
`--base` (as the CLI does) must give the same ΔW, module by module. Block weights must scale these kinds per block
as they scale LoRA files: ALL and NONE bit for bit, and a preset like our merge made with that preset.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lib_copylora.core.base_weights import open_checkpoint_base
from lib_copylora.core.formats import read_lora
from lib_copylora.core.merge import MergeSpec, merge_loras

pytestmark = [pytest.mark.webui, pytest.mark.filterwarnings("ignore::lib_copylora.core.merge.MergeWarning")]

API = "/copylora/v1"
SUBFOLDER = "copylora-formats-oracle"
PROMPT = "a red cube on a wooden table"
SEED = 5151
NEW_KINDS = ("dora", "oft", "boft", "ia3", "glora", "norm")
BLOCK_KINDS = ("dora", "oft", "ia3")


@pytest.fixture(scope="module")
def lora_dir(webui):
    folder = Path(webui.get("/sdapi/v1/cmd-flags")["lora_dir"])
    yield folder
    shutil.rmtree(folder / SUBFOLDER, ignore_errors=True)
    webui.post("/sdapi/v1/refresh-loras", {})


@pytest.fixture(scope="module")
def plain_image(webui):
    return webui.txt2img(PROMPT, SEED).image


def _mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def _merge_in_webui(webui, model: str, output: str, blocks: str | None = None) -> dict:
    body = {"models": [model], "ratios": [1], "output": output, "subfolder": SUBFOLDER, "save_precision": "fp32",
            "overwrite": True}
    if blocks is not None:
        body["blocks"] = [blocks]
    return webui.post(f"{API}/merge", body)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_our_delta_is_what_the_builtin_lora_applies(webui, lora_dir, fixture_loras, plain_image, kind):
    name = fixture_loras[kind]
    answer = _merge_in_webui(webui, name, f"oracle_{kind}")
    assert answer["modules"] > 0
    theirs = webui.txt2img(f"{PROMPT} <lora:{name}:1>", SEED).image
    ours = webui.txt2img(f"{PROMPT} <lora:oracle_{kind}:1>", SEED).image
    assert _mean_difference(theirs, plain_image) > 2.0, "the fixture should visibly change the image"
    assert _mean_difference(ours, theirs) < 0.5, "our ΔW should act as the built-in Lora's own"
    # negative strength: the built-in Lora scales the ΔW linearly, DoRA and OFT included
    theirs_negative = webui.txt2img(f"{PROMPT} <lora:{name}:-0.5>", SEED).image
    ours_negative = webui.txt2img(f"{PROMPT} <lora:oracle_{kind}:-0.5>", SEED).image
    assert _mean_difference(ours_negative, theirs_negative) < 0.5


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_merging_against_the_checkpoint_file_equals_merging_in_the_webui(webui, webui_fixtures, lora_dir,
                                                                         fixture_loras, kind):
    if webui_fixtures is None:
        pytest.skip("needs the fixture checkpoint this run made (COPYLORA_WEBUI_DIR)")
    name = fixture_loras[kind]
    in_webui = lora_dir / SUBFOLDER / f"oracle_{kind}.safetensors"
    if not in_webui.exists():
        _merge_in_webui(webui, name, f"oracle_{kind}")
    ours = read_lora(in_webui)
    source = read_lora(webui_fixtures.lora_dir / f"{name}.safetensors")
    base = open_checkpoint_base(webui_fixtures.checkpoint, sha256=webui_fixtures.checkpoint_sha256)
    from_file = merge_loras([source], MergeSpec(ratios=(1.0,)), base)
    assert set(from_file.layers) == set(ours.layers)
    for module, layer in ours.layers.items():
        torch.testing.assert_close(from_file.layers[module].delta(), layer.delta(), rtol=1e-5, atol=1e-6,
                                   msg=lambda text: f"{module}: {text}")


@pytest.mark.parametrize("kind", BLOCK_KINDS)
def test_block_weights_scale_these_kinds_per_block_like_lora_files(webui, lora_dir, fixture_loras, plain_image,
                                                                   kind):
    name = fixture_loras[kind]
    whole = webui.txt2img(f"{PROMPT} <lora:{name}:1>", SEED).image
    assert np.array_equal(webui.txt2img(f"{PROMPT} <lora:{name}:1:ALL>", SEED).image, whole)
    assert np.array_equal(webui.txt2img(f"{PROMPT} <lora:{name}:1:NONE>", SEED).image, plain_image)
    outs = webui.txt2img(f"{PROMPT} <lora:{name}:1:OUTALL>", SEED).image
    assert _mean_difference(outs, whole) > 0.5 and _mean_difference(outs, plain_image) > 0.5
    _merge_in_webui(webui, name, f"oracle_{kind}_outall", blocks="OUTALL")
    merged = webui.txt2img(f"{PROMPT} <lora:oracle_{kind}_outall:1>", SEED).image
    assert _mean_difference(merged, outs) < 0.5, "OUTALL should scale each block's ΔW, as our block merge does"
