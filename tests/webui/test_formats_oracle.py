"""The new kinds on the real WebUI, with its built-in Lora as the oracle: DoRA, OFT, BOFT, IA3, GLoRA, norm layers.

The server has no way to hand out the ΔW it computes, so the oracle is its effect: our exact ΔW of each fixture
file, computed inside the WebUI against the loaded model (POST /copylora/v1/merge, stored as `full` in fp32), must
generate the image the built-in Lora generates from the original file (same seed; the fixtures are float32 so the
two differ only by the order of float32 operations). The same merge computed from the checkpoint file with
`--base` (as the CLI does) must give the same ΔW, module by module, on A1111 and on Forge, also while another LoRA
is merged into the loaded model's weights, which the merge leaves as they were. Block weights must scale these kinds
per block as they scale LoRA files: ALL and NONE bit for bit, and a preset like our merge made with that preset.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib_copylora.core.base_weights import open_checkpoint_base
from lib_copylora.core.formats import read_lora
from lib_copylora.core.merge import MergeSpec, merge_loras

from .server import is_forge_tree
from .training_support import lora_folder_cleaned

pytestmark = [pytest.mark.webui, pytest.mark.filterwarnings("ignore::lib_copylora.core.merge.MergeWarning")]

API = "/copylora/v1"
SUBFOLDER = "copylora-formats-oracle"
PROMPT = "a red cube on a wooden table"
SEED = 5151
NEW_KINDS = ("dora", "oft", "boft", "ia3", "glora", "norm")
BLOCK_KINDS = ("dora", "oft", "ia3")
NEEDS_BASE = ("dora", "oft", "boft", "ia3", "glora")  # a norm difference does not depend on the weight
# Forge dfdcbab6 leaves these files (LyCORIS layouts, as the WebUI v1.10.1 loads them) without effect: its loader
# (packages_3rdparty/comfyui_lora_collection/lora.py, `load_lora`) reads no `oft_blocks`/`oft_diag` and no IA3
# `weight`/`on_input` keys, and `merge_lora_to_weight` (backend/patcher/lora.py) has no OFT or IA3 patch type.
FORGE_NO_EFFECT = ("oft", "boft", "ia3")


@pytest.fixture(scope="module")
def lora_dir(webui):
    yield from lora_folder_cleaned(webui, SUBFOLDER)


@pytest.fixture(scope="module")
def plain_image(webui):
    return webui.txt2img(PROMPT, SEED).image


def _mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def _on_forge(webui) -> bool:
    return webui.server is not None and is_forge_tree(webui.server.config.webui_dir)


def _merge_in_webui(webui, model: str, output: str, blocks: str | None = None) -> dict:
    """Our merge of one fixture file at ratio 1, inside the WebUI against its loaded model (A1111 and Forge)."""
    body = {"models": [model], "ratios": [1], "output": output, "subfolder": SUBFOLDER, "save_precision": "fp32",
            "overwrite": True}
    if blocks is not None:
        body["blocks"] = [blocks]
    return webui.post(f"{API}/merge", body)


def _model_hash(webui) -> str:
    return webui.get(f"{API}/model-hash")["sha256"]


def _assert_same_deltas(ours, expected) -> None:
    """Module by module, within float32 rounding: the server's torch and the test's may order a product's sums
    differently."""
    assert set(expected.layers) == set(ours.layers)
    for module, layer in ours.layers.items():
        torch.testing.assert_close(expected.layers[module].delta(), layer.delta(), rtol=1e-5, atol=1e-6,
                                   msg=lambda text: f"{module}: {text}")


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_our_delta_is_what_the_builtin_lora_applies(webui, webui_fixtures, lora_dir, fixture_loras, plain_image,
                                                    kind):
    name = fixture_loras[kind]
    theirs = webui.txt2img(f"{PROMPT} <lora:{name}:1>", SEED).image
    answer = _merge_in_webui(webui, name, f"oracle_{kind}")
    assert answer["modules"] > 0
    ours = webui.txt2img(f"{PROMPT} <lora:oracle_{kind}:1>", SEED).image
    if _on_forge(webui) and kind in FORGE_NO_EFFECT:  # the host's loader, not ours: fails here once Forge applies them
        assert np.array_equal(theirs, plain_image), f"Forge now applies {kind} files: compare them with ours"
        # our merge is a full difference, which Forge applies: the way to use such a file there
        assert _mean_difference(ours, plain_image) > 2.0, "our merged file should change Forge's image"
        return
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
    source = read_lora(webui_fixtures.lora_dir / f"{name}.safetensors")
    base = open_checkpoint_base(webui_fixtures.checkpoint, sha256=webui_fixtures.checkpoint_sha256)
    _assert_same_deltas(read_lora(in_webui), merge_loras([source], MergeSpec(ratios=(1.0,)), base))


def test_merging_while_a_lora_is_applied_reads_the_unmodified_weights_and_changes_nothing(
        webui, webui_fixtures, lora_dir, fixture_loras, plain_image):
    """A generation with a LoRA leaves it merged into the loaded model's weights (A1111's built-in Lora and Forge's
    LoRA loader both keep the originals aside); a base-aware merge must read those originals and write nothing."""
    if webui_fixtures is None:
        pytest.skip("needs the fixture checkpoint this run made (COPYLORA_WEBUI_DIR)")
    assert np.array_equal(webui.txt2img(PROMPT, SEED).image, plain_image)  # puts back whatever LoRA was merged in
    unmodified = _model_hash(webui)
    applied = webui.txt2img(f"{PROMPT} <lora:{fixture_loras['lora']}:1>", SEED).image
    assert _mean_difference(applied, plain_image) > 2.0
    patched = _model_hash(webui)
    assert patched != unmodified, "the LoRA should now be merged into the model's weights"
    kinds, ratios = NEEDS_BASE, [1.0, -0.5, 1.0, 0.75, 1.0]  # every base-aware kind, on the LoRA's own layers
    names = [fixture_loras[kind] for kind in kinds]
    webui.post(f"{API}/merge", {"models": names, "ratios": ratios, "output": "while_applied",
                                "subfolder": SUBFOLDER, "save_precision": "fp32", "overwrite": True})
    assert _model_hash(webui) == patched
    sources = [read_lora(webui_fixtures.lora_dir / f"{name}.safetensors") for name in names]
    base = open_checkpoint_base(webui_fixtures.checkpoint, sha256=webui_fixtures.checkpoint_sha256)
    expected = merge_loras(sources, MergeSpec(ratios=tuple(ratios)), base)
    _assert_same_deltas(read_lora(lora_dir / SUBFOLDER / "while_applied.safetensors"), expected)
    assert np.array_equal(webui.txt2img(f"{PROMPT} <lora:{fixture_loras['lora']}:1>", SEED).image, applied)


@pytest.mark.parametrize("kind", BLOCK_KINDS)
def test_block_weights_scale_these_kinds_per_block_like_lora_files(webui, webui_fixtures, lora_dir, fixture_loras,
                                                                   plain_image, kind):
    name = fixture_loras[kind]
    whole = webui.txt2img(f"{PROMPT} <lora:{name}:1>", SEED).image
    if _on_forge(webui) and kind in FORGE_NO_EFFECT:  # nothing to scale: see the test above
        assert np.array_equal(whole, plain_image), f"Forge now applies {kind} files: test their block weights"
        return
    assert np.array_equal(webui.txt2img(f"{PROMPT} <lora:{name}:1:ALL>", SEED).image, whole)
    assert np.array_equal(webui.txt2img(f"{PROMPT} <lora:{name}:1:NONE>", SEED).image, plain_image)
    outs = webui.txt2img(f"{PROMPT} <lora:{name}:1:OUTALL>", SEED).image
    assert _mean_difference(outs, whole) > 0.5 and _mean_difference(outs, plain_image) > 0.5
    _merge_in_webui(webui, name, f"oracle_{kind}_outall", blocks="OUTALL")
    merged = webui.txt2img(f"{PROMPT} <lora:oracle_{kind}_outall:1>", SEED).image
    assert _mean_difference(merged, outs) < 0.5, "OUTALL should scale each block's ΔW, as our block merge does"
