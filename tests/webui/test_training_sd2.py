"""Training inside the real WebUI on an SD2-768-v model: the same server switches from the SD1 fixture to a random
SD2 checkpoint for this module (its v config beside it) and back afterwards.

Tiny on purpose: 64×64 images, 3 steps, 2 sampling steps. A random model makes no pictures, but its output depends
on every weight, so a LoRA whose keys match the SD2 model changes the image.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

pytestmark = pytest.mark.webui

API = "/copylora/v1"
SUBFOLDER = "copylora-webui-tests-sd2"
DATASET = "tiny_sd2"
PROMPT = "a shirt on a table"
SEED = 4242
FINISHED = ("done", "stopped", "failed", "cancelled")


def _write_images(folder: Path, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(count):
        noise = rng.integers(-30, 30, size=(64, 64, 3))
        pixels = np.clip(np.array([40, 160, 60])[None, None, :] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")


def _switch(webui, title: str) -> None:
    """Load a checkpoint the way the UI's dropdown does; the API answers once the model is loaded."""
    webui.post("/sdapi/v1/options", {"sd_model_checkpoint": title})
    assert webui.loaded_checkpoint()["title"].startswith(title)  # the WebUI adds " [hash]" once it hashed it


@pytest.fixture(scope="module")
def on_sd2(webui, sd2_checkpoint):
    """The server runs the SD2 checkpoint for this module; the checkpoint in use before comes back after."""
    flags = webui.get("/sdapi/v1/cmd-flags")
    root = Path(flags.get("copylora_dir") or Path(flags["data_dir"]) / "copylora")
    _write_images(root / "datasets" / DATASET / "2_green", 2)
    lora_dir = Path(flags["lora_dir"])
    previous = webui.get("/sdapi/v1/options")["sd_model_checkpoint"]
    _switch(webui, sd2_checkpoint.title)
    try:
        yield {"loras": lora_dir, "checkpoint": sd2_checkpoint}
    finally:
        _switch(webui, previous)
        shutil.rmtree(lora_dir / SUBFOLDER, ignore_errors=True)
        shutil.rmtree(root / "datasets" / DATASET, ignore_errors=True)
        webui.post("/sdapi/v1/refresh-loras", {})


def _wait(webui, job_id: str, timeout=900.0) -> dict:
    end = time.time() + timeout
    status = {}
    while time.time() < end:
        status = webui.get(f"{API}/jobs/{job_id}")
        if status["state"] in FINISHED:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {status}")


def test_the_sd2_fixture_loads_as_a_v_prediction_model(webui, on_sd2):
    loaded = webui.loaded_checkpoint()
    assert loaded["title"].startswith(on_sd2["checkpoint"].title)
    assert loaded["sha256"] == on_sd2["checkpoint"].sha256  # the file the fixture wrote
    config = Path(loaded["filename"]).with_suffix(".yaml")
    assert f"Creating model from config: {config}" in webui.server.log_text()  # ours, not the v/eps guess


def test_a_single_run_on_sd2_saves_an_sd2_lora_and_leaves_the_model_as_it_was(webui, on_sd2):
    before_image = webui.txt2img(PROMPT, SEED).image
    before_hash = webui.get(f"{API}/model-hash")["sha256"]
    body = {"name": "cl-sd2", "dataset_a": DATASET, "subfolder": SUBFOLDER, "overwrite": True,
            "network": {"rank": 4, "alpha": 4}, "optim": {"learning_rate": 5e-3}, "loop": {"max_steps": 3},
            "dataset": {"resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128}}
    [job_id] = webui.post(f"{API}/train", body)["job_ids"]
    status = _wait(webui, job_id)
    assert status["state"] == "done", status
    assert (status["step"], status["total_steps"], len(status["losses"])) == (3, 3, 3)
    assert all(np.isfinite(status["losses"]))
    saved = on_sd2["loras"] / status["result"]
    assert saved.is_file()
    with safe_open(str(saved), "pt") as handle:
        metadata = handle.metadata()
        keys = list(handle.keys())
    assert (metadata["ss_v2"], metadata["ss_base_model_version"]) == ("True", "sd_v2")
    assert metadata["ss_v_parameterization"] == "True"  # trained against the v target the v config sets
    assert any("proj_in" in k for k in keys) and any(k.startswith("lora_unet_") for k in keys)
    assert webui.get(f"{API}/model-hash")["sha256"] == before_hash
    with_lora = webui.txt2img(f"{PROMPT} <lora:cl-sd2:1>", SEED)
    assert "cl-sd2" in with_lora.infotext
    assert np.abs(with_lora.image.astype(float) - before_image).mean() > 0.5  # its keys matched the SD2 model
