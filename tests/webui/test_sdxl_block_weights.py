"""SDXL block weights on a real SDXL model: the server switches to the random SDXL checkpoint for this module, with
two seeded SDXL LoRAs in a subfolder of its Lora folder (fixtures/make_sdxl_loras.py), and back afterwards.

`lora` has modules in exactly the blocks of the 12-value format (attention and both text encoders), `locon` in
every block of the 20-value one. Every comparison is bit for bit on 64×64, 2-step Euler images with one seed, as
in test_block_weights.py: the hosts apply a strength multiplied by exactly 1.0 or 0.0 to the same result as the
plain strength or no LoRA at all. That holds on Forge too (on the CPU): it merges each patch as
`W + strength · ΔW` in float32, and a block weight only changes `strength`.

Heavy like test_training_sdxl.py: the --no-half server holds SDXL in float32 (~18 GiB of the machine at the peak).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from .fixtures.make_sdxl_loras import SDXL_KINDS, make_sdxl_lora, sdxl_network_name
from .training_support import switch_checkpoint

pytestmark = pytest.mark.webui

PROMPT = "a red cube on a wooden table"
SEED = 4242
SUBFOLDER = "copylora-webui-tests-sdxl-blocks"
# no live previews (they would fetch SDXL's approximate decoder from GitHub: the tier is offline); A1111's LoRAs in
# the forward rather than merged, which would back up every patched weight in float32
SDXL_OPTIONS = {"live_previews_enable": False, "lora_functional": True}

# the documented orders (docs/block-weights.md)
SHORT = ("BASE", "IN04", "IN05", "IN07", "IN08", "MID", *(f"OUT{i:02d}" for i in range(6)))
LONG = ("BASE", *(f"IN{i:02d}" for i in range(9)), "MID", *(f"OUT{i:02d}" for i in range(9)))
PRESETS = {  # the shipped SDXL presets, 12 values each
    "SDXL-ALL": "1,1,1,1,1,1,1,1,1,1,1,1", "SDXL-NONE": "0,0,0,0,0,0,0,0,0,0,0,0",
    "SDXL-INALL": "1,1,1,1,1,0,0,0,0,0,0,0", "SDXL-MIDALL": "1,0,0,0,0,1,0,0,0,0,0,0",
    "SDXL-OUTALL": "1,0,0,0,0,0,1,1,1,1,1,1",
}
REGIONS = ("SDXL-INALL", "SDXL-MIDALL", "SDXL-OUTALL")


def ones(n: int) -> str:
    return ",".join(["1"] * n)


def zeros(n: int) -> str:
    return ",".join(["0"] * n)


def expand(short_spec: str) -> str:
    """A 12-value spec as the 20-value spec it stands for: the blocks it does not name get 0."""
    named = dict(zip(SHORT, short_spec.split(",")))
    return ",".join(named.get(block, "0") for block in LONG)


def same(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


@pytest.fixture(scope="module")
def sdxl(webui, sdxl_checkpoint) -> dict[str, str]:
    """The server runs the SDXL checkpoint with our two SDXL LoRAs listed; kind → name. Afterwards the options,
    the previous checkpoint and the Lora folder are as they were."""
    folder = webui.folders().loras / SUBFOLDER
    current = webui.get("/sdapi/v1/options")
    # Forge lists no lora_functional (it always merges): set only what the host has
    wanted = {key: value for key, value in SDXL_OPTIONS.items() if key in current}
    previous, kept = current["sd_model_checkpoint"], {key: current[key] for key in wanted}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for kind in SDXL_KINDS:
            make_sdxl_lora(folder / f"{sdxl_network_name(kind)}.safetensors", kind, seed=1234)
        webui.post("/sdapi/v1/refresh-loras", {})
        webui.post("/sdapi/v1/options", wanted)
        switch_checkpoint(webui, sdxl_checkpoint.title)
        yield {kind: sdxl_network_name(kind) for kind in SDXL_KINDS}
    finally:
        webui.post("/sdapi/v1/options", kept)
        switch_checkpoint(webui, previous)
        shutil.rmtree(folder, ignore_errors=True)
        webui.post("/sdapi/v1/refresh-loras", {})


def gen(webui, prompt, **extra):
    return webui.txt2img(prompt, SEED, **extra)


@pytest.fixture(scope="module")
def images(webui, sdxl) -> dict[str, np.ndarray]:
    """The reference images, made once: no LoRA, each LoRA at its plain strength."""
    made = {"none": gen(webui, PROMPT).image}
    for kind, name in sdxl.items():
        made[kind] = gen(webui, f"{PROMPT} <lora:{name}:1>").image
    return made


def test_the_sdxl_fixtures_load_and_each_lora_changes_the_image(webui, sdxl, sdxl_checkpoint, images):
    assert webui.loaded_checkpoint()["sha256"] == sdxl_checkpoint.sha256  # the file the fixture wrote
    listed = {entry["name"] for entry in webui.get("/sdapi/v1/loras")}
    assert set(sdxl.values()) <= listed
    assert images["none"].shape == (64, 64, 3)
    for kind in SDXL_KINDS:  # their keys matched the model (both hosts ignore keys they cannot place)
        assert np.abs(images[kind].astype(float) - images["none"]).mean() > 0.5, kind
    assert not same(images["lora"], images["locon"])
    # every key, not just most: A1111 logs unmatched keys at DEBUG (the tier's level), Forge prints them
    ours = [line for line in webui.server.log_text().splitlines() if "copylora_fixture_sdxl" in line]
    assert not [line for line in ours if any(w in line.lower() for w in ("didn't match", "unmatched", "mismatch"))]


@pytest.mark.parametrize("spec", [ones(12), ones(20), "SDXL-ALL", "lbw=SDXL-ALL"])
def test_all_ones_equal_the_plain_lora(webui, sdxl, images, spec):
    result = gen(webui, f"{PROMPT} <lora:{sdxl['lora']}:1:{spec}>")
    assert same(result.image, images["lora"])
    assert "CopyLoRA problems" not in result.infotext
    if "SDXL-ALL" in spec:  # an all-ones 20-value spec changes nothing and is not recorded; a preset is
        assert "CopyLoRA block weights" in result.infotext and "SDXL-ALL" in result.infotext


@pytest.mark.parametrize("kind, spec", [("lora", "SDXL-NONE"), ("lora", zeros(12)), ("lora", zeros(20)),
                                        ("locon", zeros(20))])
def test_all_zeros_equal_no_lora(webui, sdxl, images, kind, spec):
    assert same(gen(webui, f"{PROMPT} <lora:{sdxl[kind]}:1:{spec}>").image, images["none"])


def test_a_12_value_spec_equals_its_20_value_expansion(webui, sdxl, images):
    short = "1,0.5,0,1,0.25,1,0,1,0.5,1,0,1"
    by_short = gen(webui, f"{PROMPT} <lora:{sdxl['locon']}:1:{short}>")
    by_long = gen(webui, f"{PROMPT} <lora:{sdxl['locon']}:1:{expand(short)}>")
    assert same(by_short.image, by_long.image)
    assert not same(by_short.image, images["locon"]) and not same(by_short.image, images["none"])
    # the LoCon has modules in blocks the short format leaves at 0: said once, naming them; the long one is silent
    for block in ("IN00", "IN01", "IN02", "IN03", "IN06", "OUT06", "OUT07", "OUT08"):
        assert block in by_short.infotext
    assert "does not name" in by_short.infotext and "does not name" not in by_long.infotext
    assert f"lbw={short}" in by_short.infotext.split("\n", 1)[0]  # the prompt as used carries the spec
    # so all ones in the short format is not the plain LoCon, and all ones in the long one is
    assert not same(gen(webui, f"{PROMPT} <lora:{sdxl['locon']}:1:SDXL-ALL>").image, images["locon"])
    assert same(gen(webui, f"{PROMPT} <lora:{sdxl['locon']}:1:{ones(20)}>").image, images["locon"])


@pytest.fixture(scope="module")
def regions(webui, sdxl) -> dict[str, np.ndarray]:
    """The region presets by name, made once (the X/Y/Z test compares its cells with them)."""
    return {name: gen(webui, f"{PROMPT} <lora:{sdxl['lora']}:1:{name}>") for name in REGIONS}


@pytest.mark.parametrize("preset", REGIONS)
def test_region_presets_act_and_equal_their_numbers(webui, sdxl, images, regions, preset):
    by_name = regions[preset]
    assert "CopyLoRA block weights" in by_name.infotext and preset in by_name.infotext
    assert f"lbw={preset}" in by_name.infotext.split("\n", 1)[0]
    assert same(by_name.image, gen(webui, f"{PROMPT} <lora:{sdxl['lora']}:1:{PRESETS[preset]}>").image)
    assert not same(by_name.image, images["lora"]) and not same(by_name.image, images["none"])
    others = [regions[name].image for name in REGIONS if name != preset]
    assert not any(same(by_name.image, other) for other in others)


SD1_17 = "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"


@pytest.mark.parametrize("spec, words", [
    (SD1_17, "got 17 values for an SDXL model; use 12 or 20"),
    ("face", "preset 'face' has 17 values (made for SD1/SD2)"),
    ("OUTALL", "an SDXL model takes 12 or 20"),
    ("1,1,1,1,1,1,1,1,1,1,1", "got 11 values"),
])
def test_a_spec_for_another_model_falls_back_to_plain_weight_in_one_line(webui, sdxl, images, spec, words):
    # the bad one at its plain strength, the other LoRA still zeroed as its tag says
    result = gen(webui, f"{PROMPT} <lora:{sdxl['lora']}:1:{spec}> <lora:{sdxl['locon']}:1:{zeros(20)}>")
    assert same(result.image, images["lora"])
    assert "CopyLoRA problems" in result.infotext and words in result.infotext
    assert result.infotext.count(f"<lora:{sdxl['lora']}> block weights") == 1  # one line, for that LoRA only
    assert f"<lora:{sdxl['locon']}> block weights" not in result.infotext


def xyz_cells(webui, prompt: str, axis: str, values: str = "", dropdown=None, csv_mode: bool = True):
    return webui.xyz_cells(prompt, SEED, axis, values, dropdown, csv_mode)


def test_preset_axis_over_sdxl_presets_gives_the_single_images(webui, sdxl, regions):
    cells, infotexts = xyz_cells(webui, f"{PROMPT} <lora:{sdxl['lora']}:1>", "CopyLoRA: block preset",
                                 dropdown=list(REGIONS), csv_mode=False)
    assert len(cells) == len(REGIONS)
    for cell, infotext, preset in zip(cells, infotexts, REGIONS):
        assert f"lbw={preset}" in infotext
        assert same(cell, regions[preset].image), preset


def test_block_sweep_axis_on_sdxl_names_the_12_blocks_and_each_block_acts(webui, sdxl):
    lora = sdxl["lora"]
    values = ", ".join(f"{block} only" for block in SHORT)
    cells, infotexts = xyz_cells(webui, f"{PROMPT} <lora:{lora}:1>", "CopyLoRA: block sweep", values)
    assert len(cells) == len(SHORT)
    base_only = cells[0]
    for block, cell, infotext in zip(SHORT, cells, infotexts):
        spec = ",".join("1" if b in ("BASE", block) else "0" for b in SHORT)
        assert f"lbw={spec}" in infotext, block
        if block != "BASE":  # each UNet block of the LoRA, added to its text encoders alone, changes the image
            assert not same(cell, base_only), block
    for index in (1, 5, 11):  # IN04, MID, OUT05 as typed prompts: the same bits
        spec = ",".join("1" if b in ("BASE", SHORT[index]) else "0" for b in SHORT)
        assert same(cells[index], gen(webui, f"{PROMPT} <lora:{lora}:1:{spec}>").image), SHORT[index]
