"""DoRA training inside the real WebUI, through /copylora/v1: on A1111's torch layers and on Forge's own layer
classes alike, a run writes a LoRA with `dora_scale` beside every module (per input channel, as both hosts apply
it), the host's own loader applies it as our merge against the loaded model says, and the model comes back
bit-identical. Tiny on purpose: 64×64 images, 3 steps, 2 sampling steps, the random SD1.5 fixture, and attention
and text-encoder layers only (the merge of a DoRA LoCon over every convolution needs several GB more beside a
Forge server).
"""

from __future__ import annotations

import numpy as np
import pytest

from lib_copylora.core.base_layers import DoraLayer
from lib_copylora.core.formats import read_lora

from .training_support import API, PROMPT, SEED, TINY_DATA, result_folders, wait_for_job, write_images

pytestmark = pytest.mark.webui

SUBFOLDER = "copylora-webui-dora"


@pytest.fixture(scope="module")
def folders(webui):
    with result_folders(webui, SUBFOLDER) as folders:
        write_images(folders["datasets"] / "tiny_dora" / "2_plain", (40, 200, 40), 2, seed=7)
        yield folders


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def test_a_dora_run_writes_magnitudes_the_host_applies_and_leaves_the_model_as_it_was(webui, folders):
    before_image = webui.txt2img(PROMPT, SEED).image
    before_hash = webui.get(f"{API}/model-hash")["sha256"]
    body = {"name": "cl-dora", "dataset_a": "tiny_dora", "subfolder": SUBFOLDER, "overwrite": True,
            "network": {"kind": "lora", "rank": 4, "alpha": 4, "dora": True, "train_text_encoder": True},
            "optim": {"learning_rate": 2e-2}, "loop": {"max_steps": 3}, "dataset": TINY_DATA}
    [job_id] = webui.post(f"{API}/train", body)["job_ids"]
    status = wait_for_job(webui, job_id)
    assert status["state"] == "done", status
    assert webui.get(f"{API}/model-hash")["sha256"] == before_hash
    assert np.array_equal(webui.txt2img(PROMPT, SEED).image, before_image)
    lora = read_lora(folders["loras"] / status["result"])
    assert lora.layers and all(isinstance(layer, DoraLayer) for layer in lora.layers.values())
    assert any(name.startswith("lora_te_") for name in lora.layers)  # the text encoder trained too
    assert any(layer.magnitude.dim() == 4 for layer in lora.layers.values())  # SD1's 1×1 proj_in/out convs
    theirs = webui.txt2img(f"{PROMPT} <lora:cl-dora:1>", SEED).image
    assert _difference(theirs, before_image) > 0.5, "the host should apply the trained DoRA file"
    merged = webui.post(f"{API}/merge", {"models": [f"{SUBFOLDER}/cl-dora"], "ratios": [1], "output": "cl-dora-full",
                                         "subfolder": SUBFOLDER, "save_precision": "fp32", "overwrite": True})
    assert merged["modules"] == len(lora.layers)
    ours = webui.txt2img(f"{PROMPT} <lora:cl-dora-full:1>", SEED).image
    assert _difference(ours, theirs) < 0.5, "the host's DoRA should be our ΔW against its own weights"
