"""Training inside the real WebUI on an SDXL base model: the same server switches from the SD1 fixture to a random
SDXL checkpoint for this module and back afterwards.

Heavy for the tier: the --no-half server holds SDXL in float32 (~14 GB next to the WebUI's own ~3 GB), so this
module needs a machine with about 20 GB free (measured: 17.7 GB in use on the machine at the peak). Otherwise
tiny: 64×64 images, 2 steps, 2 sampling steps. A random model makes no pictures, but its output depends on every
weight, so a LoRA whose keys match SDXL changes the image.
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
SUBFOLDER = "copylora-webui-tests-sdxl"
DATASET = "tiny_sdxl"
PROMPT = "a shirt on a table"
SEED = 4242
FINISHED = ("done", "stopped", "failed", "cancelled")


def _write_images(folder: Path, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    for i in range(count):
        noise = rng.integers(-30, 30, size=(64, 64, 3))
        pixels = np.clip(np.array([170, 40, 150])[None, None, :] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")


def _switch(webui, title: str) -> None:
    """Load a checkpoint the way the UI's dropdown does; the API answers once the model is loaded."""
    webui.post("/sdapi/v1/options", {"sd_model_checkpoint": title})
    assert webui.loaded_checkpoint()["title"].startswith(title)  # the WebUI adds " [hash]" once it hashed it


@pytest.fixture(scope="module")
def on_sdxl(webui, sdxl_checkpoint):
    """The server runs the SDXL checkpoint for this module; the checkpoint in use before comes back after."""
    flags = webui.get("/sdapi/v1/cmd-flags")
    root = Path(flags.get("copylora_dir") or Path(flags["data_dir"]) / "copylora")
    _write_images(root / "datasets" / DATASET / "2_magenta", 2)
    lora_dir = Path(flags["lora_dir"])
    options = webui.get("/sdapi/v1/options")
    previous = options["sd_model_checkpoint"]
    kept = {key: options[key] for key in ("live_previews_enable", "lora_functional")}
    # live previews would fetch vaeapprox-sdxl.pt from GitHub (the WebUI tree ships only SD1's; the tier is
    # offline); the built-in Lora's merging mode backs up every weight a LoRA touches, ~8 GB more for SDXL in
    # float32 (measured: the server was killed for memory at 24 GB), so it computes LoRAs in the forward instead
    webui.post("/sdapi/v1/options", {"live_previews_enable": False, "lora_functional": True})
    try:
        _switch(webui, sdxl_checkpoint.title)
        yield {"loras": lora_dir, "checkpoint": sdxl_checkpoint}
    finally:
        webui.post("/sdapi/v1/options", kept)  # first: the server keeps its options in the data folder
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


def test_the_sdxl_fixture_loads_as_sdxl(webui, on_sdxl):
    loaded = webui.loaded_checkpoint()
    assert loaded["title"].startswith(on_sdxl["checkpoint"].title)
    assert loaded["sha256"] == on_sdxl["checkpoint"].sha256  # the file the fixture wrote
    assert "sd_xl_base.yaml" in webui.server.log_text()  # the WebUI recognised SDXL from the keys


def test_a_single_run_on_sdxl_saves_an_sdxl_lora_and_leaves_the_model_as_it_was(webui, on_sdxl):
    before_image = webui.txt2img(PROMPT, SEED).image
    before_hash = webui.get(f"{API}/model-hash")["sha256"]
    body = {"name": "cl-sdxl", "dataset_a": DATASET, "subfolder": SUBFOLDER, "overwrite": True,
            "network": {"rank": 4, "alpha": 4, "train_text_encoder": True}, "optim": {"learning_rate": 5e-3},
            "loop": {"max_steps": 2}, "dataset": {"resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128}}
    [job_id] = webui.post(f"{API}/train", body)["job_ids"]
    status = _wait(webui, job_id)
    assert status["state"] == "done", status
    assert (status["step"], status["total_steps"], len(status["losses"])) == (2, 2, 2)
    assert all(np.isfinite(status["losses"]))
    saved = on_sdxl["loras"] / status["result"]
    assert saved.is_file()
    with safe_open(str(saved), "pt") as handle:
        metadata = handle.metadata()
        keys = list(handle.keys())
    assert metadata["ss_base_model_version"].startswith("sdxl")
    # kohya's SDXL names: the UNet in sgm (compvis) terms, the two text encoders as te1 (CLIP-L) and te2 (bigG)
    assert any(k.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.") for k in keys)
    assert any(k.startswith("lora_unet_middle_block_1_") for k in keys)
    assert not any(k.startswith("lora_unet_down_blocks_") for k in keys)
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_0_mlp_fc1.") for k in keys)
    assert not any(k.startswith("lora_te_") for k in keys)  # SD1's single-encoder prefix
    assert webui.get(f"{API}/model-hash")["sha256"] == before_hash
    with_lora = webui.txt2img(f"{PROMPT} <lora:cl-sdxl:1>", SEED)
    assert "cl-sdxl" in with_lora.infotext
    assert np.abs(with_lora.image.astype(float) - before_image).mean() > 0.5  # its keys matched the SDXL model
