"""Block-weight LoRA prompts on the real WebUI: exactness, cache invalidation, bad specs, infotext, hires, batches.

Every comparison is bit for bit on 64×64, 2-step Euler images with one seed: the built-in Lora applies a weight
multiplied by exactly 1.0 or 0.0 to the same result as no weight or no LoRA at all.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.webui

PROMPT = "a red cube on a wooden table"
SEED = 4242
FACE = "1,0,0,0,0,0,0,0,0.8,1,1,0.2,0,0,0,0,0"


def same(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


@pytest.fixture(scope="module")
def lora(fixture_loras) -> str:
    return fixture_loras["lora"]


@pytest.fixture(scope="module")
def other(fixture_loras) -> str:
    return fixture_loras["locon"]


@pytest.fixture(scope="module")
def images(webui, lora, other):
    """The reference images, made once: no LoRA, each LoRA plainly."""
    make = lambda prompt: webui.txt2img(prompt, SEED).image  # noqa: E731
    return {"none": make(PROMPT), "lora": make(f"{PROMPT} <lora:{lora}:1>"), "other": make(f"{PROMPT} <lora:{other}:1>")}


def gen(webui, prompt, **extra):
    return webui.txt2img(prompt, SEED, **extra)


def test_all_equals_plain_and_none_equals_no_lora(webui, lora, images):
    assert not same(images["lora"], images["none"])
    assert same(gen(webui, f"{PROMPT} <lora:{lora}:1:ALL>").image, images["lora"])
    assert same(gen(webui, f"{PROMPT} <lora:{lora}:1:NONE>").image, images["none"])
    assert same(gen(webui, f"{PROMPT} <lora:{lora}:1:lbw=ALL>").image, images["lora"])


def test_a_preset_equals_its_numbers_and_changes_round_trip(webui, lora, images):
    by_name = gen(webui, f"{PROMPT} <lora:{lora}:1:face>").image
    by_numbers = gen(webui, f"{PROMPT} <lora:{lora}:1:{FACE}>").image
    assert same(by_name, by_numbers)
    assert not same(by_name, images["lora"]) and not same(by_name, images["none"])
    # only the block weights change between these consecutive generations: the weight cache must re-merge
    outs = gen(webui, f"{PROMPT} <lora:{lora}:1:OUTALL>").image
    assert not same(outs, by_name)
    assert same(gen(webui, f"{PROMPT} <lora:{lora}:1:face>").image, by_name)
    assert same(gen(webui, f"{PROMPT} <lora:{lora}:1>").image, images["lora"])


ONES26, ZEROS26 = ",".join(["1"] * 26), ",".join(["0"] * 26)


def test_two_loras_get_their_own_weights(webui, lora, other, images):
    # the LoCon has ResNet modules in blocks the 17-value format leaves at 0, so it takes the 26-value form here
    only_other = gen(webui, f"{PROMPT} <lora:{lora}:1:NONE> <lora:{other}:1:{ONES26}>").image
    assert same(only_other, images["other"])
    only_first = gen(webui, f"{PROMPT} <lora:{lora}:1:ALL> <lora:{other}:1:{ZEROS26}>").image
    assert same(only_first, images["lora"])
    warned = gen(webui, f"{PROMPT} <lora:{other}:1:ALL>")  # the short format zeroes its ResNet blocks: say so
    assert "IN03" in warned.infotext and "does not name" in warned.infotext


@pytest.mark.parametrize("spec, words", [
    ("1,1,1", "17 or 26"),
    ("nosuchpreset", "unknown"),
    ("1,x,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1", "number"),
    ("1,,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1", "empty"),
    ("1e9,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1", "range"),
])
def test_a_bad_spec_falls_back_to_plain_weight_and_says_so(webui, lora, other, images, spec, words):
    result = gen(webui, f"{PROMPT} <lora:{lora}:1:{spec}> <lora:{other}:1:{ZEROS26}>")
    plain_first = images["lora"]
    assert same(result.image, plain_first)  # the bad one at its plain weight, the other one still zeroed
    assert "CopyLoRA problems" in result.infotext and words in result.infotext
    assert f"<lora:{lora}>" in result.infotext


def test_non_finite_block_weights_skip_that_lora(webui, lora, images):
    result = gen(webui, f"{PROMPT} <lora:{lora}:1:nan,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1>")
    assert same(result.image, images["none"])
    assert "skipped" in result.infotext


def test_infotext_records_the_weights_and_pasting_it_back_reproduces(webui, lora):
    first = gen(webui, f"{PROMPT} <lora:{lora}:0.8:face>")
    assert "CopyLoRA block weights" in first.infotext and "face" in first.infotext
    pasted_prompt = first.infotext.split("\n", 1)[0]  # the infotext's first line is the prompt as used
    assert "lbw=face" in pasted_prompt
    assert same(gen(webui, pasted_prompt).image, first.image)


def test_hires_fix_and_batches_behave_like_builtin(webui, lora):
    # Forge's API needs hr_additional_modules for hires; A1111's request model ignores fields it does not know
    hires = dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.5,
                 hr_additional_modules=["Use same choices"])
    with_all = gen(webui, f"{PROMPT} <lora:{lora}:1:ALL>", **hires).image
    assert with_all.shape[0] == 96
    assert same(with_all, gen(webui, f"{PROMPT} <lora:{lora}:1>", **hires).image)
    answer = webui.post("/sdapi/v1/txt2img", {"prompt": f"{PROMPT} <lora:{lora}:1:face>", "seed": SEED, "steps": 2,
                                              "width": 64, "height": 64, "sampler_name": "Euler", "n_iter": 2})
    from .client import decode_image

    second = decode_image(answer["images"][1])
    assert same(second, webui.txt2img(f"{PROMPT} <lora:{lora}:1:face>", SEED + 1).image)
