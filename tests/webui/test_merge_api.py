"""Merging through /copylora/v1/merge on the real WebUI: inputs from the Lora folder, the result written there and
listed at once, and it acts like the sum of its parts; names outside the Lora folder are refused."""

from __future__ import annotations


import numpy as np
import pytest

from .client import WebuiHttpError
from .training_support import lora_folder_cleaned

pytestmark = pytest.mark.webui

API = "/copylora/v1"
SUBFOLDER = "copylora-merge-tests"
PROMPT = "a red cube on a wooden table"
SEED = 777


@pytest.fixture(scope="module")
def lora_dir(webui):
    yield from lora_folder_cleaned(webui, SUBFOLDER)


def _mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def test_b_minus_a_merge_is_written_listed_and_acts_like_its_parts(webui, lora_dir, fixture_loras):
    a, b = fixture_loras["lora"], fixture_loras["locon"]
    answer = webui.post(f"{API}/merge", {"models": [b, a], "ratios": [1, -1], "output": "b_minus_a",
                                         "subfolder": SUBFOLDER, "save_precision": "fp32", "overwrite": True})
    assert answer["result"] == f"{SUBFOLDER}/b_minus_a.safetensors" and answer["tag"] == "<lora:b_minus_a:1>"
    assert (lora_dir / answer["result"]).is_file() and answer["modules"] > 0
    assert "b_minus_a" in {entry["name"] for entry in webui.get("/sdapi/v1/loras")}
    plain = webui.txt2img(PROMPT, SEED).image
    merged = webui.txt2img(f"{PROMPT} <lora:b_minus_a:1>", SEED).image
    parts = webui.txt2img(f"{PROMPT} <lora:{b}:1> <lora:{a}:-1>", SEED).image
    assert _mean_difference(merged, plain) > 4.0  # it does something
    assert _mean_difference(merged, parts) < 0.5  # and the same as applying both (fp32: rounding only)


def test_existing_output_needs_overwrite(webui, lora_dir, fixture_loras):
    body = {"models": [fixture_loras["lora"]], "ratios": [0.5], "output": "half", "subfolder": SUBFOLDER}
    webui.post(f"{API}/merge", {**body, "overwrite": True})
    with pytest.raises(WebuiHttpError, match="HTTP 400.*exists"):
        webui.post(f"{API}/merge", body)


@pytest.mark.parametrize("change", [
    {"models": ["../outside"]}, {"models": ["/etc/passwd"]}, {"output": "../escaped"}, {"subfolder": "/tmp"},
    {"models": ["does_not_exist"]},
])
def test_bad_names_are_refused_with_a_reason(webui, lora_dir, fixture_loras, change):
    body = {"models": [fixture_loras["lora"]], "ratios": [1], "output": "never", "subfolder": SUBFOLDER, **change}
    with pytest.raises(WebuiHttpError, match="HTTP 400") as error:
        webui.post(f"{API}/merge", body)
    assert "detail" in str(error.value)
    assert not (lora_dir / SUBFOLDER / "never.safetensors").exists()
