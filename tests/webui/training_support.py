"""What the training tests of the tier share: image sets on disk, job polling, switching the loaded checkpoint,
and one short run checked end to end (finished, finite losses, model bit-identical, the LoRA acts)."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from safetensors import safe_open

from .server import is_forge_tree

API = "/copylora/v1"
FINISHED = ("done", "stopped", "failed", "cancelled")
TINY_DATA = {"resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128}
PROMPT = "a shirt on a table"
SEED = 4242


def write_images(folder: Path, colour: tuple[int, int, int], count: int, seed: int) -> None:
    """`count` 64×64 images of one colour with seeded noise: a dataset the trainer can over-fit in a few steps."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        noise = rng.integers(-30, 30, size=(64, 64, 3))
        pixels = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")


def old_model_hash(checkpoint: Path) -> str:
    """The WebUI's old 8-digit model hash (sd_models.model_hash), written out here: sha256 of the 64 KiB at 1 MiB."""
    with open(checkpoint, "rb") as file:
        file.seek(0x100000)
        return hashlib.sha256(file.read(0x10000)).hexdigest()[:8]


def on_forge(webui) -> bool:
    """The server this run started is Forge (a COPYLORA_WEBUI_URL server is taken for A1111)."""
    return webui.server is not None and is_forge_tree(webui.server.config.webui_dir)


def server_folders(webui) -> tuple[Path, Path]:
    """(CopyLoRA's datasets folder, the Lora folder) of the running server."""
    folders = webui.folders()
    return folders.datasets, folders.loras


@contextlib.contextmanager
def result_folders(webui, subfolder: str) -> Iterator[dict[str, Path]]:
    """{"datasets", "loras"}: the server's folders; afterwards the results under the Lora folder's `subfolder`
    are removed and the WebUI's Lora list is refreshed."""
    datasets, loras = server_folders(webui)
    try:
        yield {"datasets": datasets, "loras": loras}
    finally:
        shutil.rmtree(loras / subfolder, ignore_errors=True)
        webui.post("/sdapi/v1/refresh-loras", {})


def wait_for_job(webui, job_id: str, until=lambda s: s["state"] in FINISHED, timeout: float = 900.0) -> dict:
    """Poll the job until `until` holds; a job that ends without it fails the test at once."""
    end = time.time() + timeout
    status: dict = {}
    while time.time() < end:
        status = webui.get(f"{API}/jobs/{job_id}")
        if until(status):
            return status
        if status["state"] in FINISHED:
            raise AssertionError(f"job {job_id} ended before that: {status}")
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not get there in {timeout} s: {status}")


def switch_checkpoint(webui, title: str) -> None:
    """Load a checkpoint the way the UI's dropdown does; the API answers once the model is loaded."""
    webui.post("/sdapi/v1/options", {"sd_model_checkpoint": title})
    assert webui.loaded_checkpoint()["title"].startswith(title.split(" [", 1)[0])  # " [hash]" once hashed


@contextlib.contextmanager
def on_checkpoint(webui, title: str, dataset: str, colour: tuple[int, int, int], subfolder: str,
                  options: Optional[dict] = None) -> Iterator[Path]:
    """The server runs `title` (with `options` set) and has a tiny image set `dataset`; everything comes back
    after: options first (the server keeps them in its data folder), then the previous checkpoint. Yields the
    Lora folder."""
    datasets, lora_dir = server_folders(webui)
    write_images(datasets / dataset / f"2_{dataset}", colour, 2, seed=sum(colour))
    current = webui.get("/sdapi/v1/options")
    previous, kept = current["sd_model_checkpoint"], {key: current[key] for key in (options or {})}
    if options:
        webui.post("/sdapi/v1/options", options)
    try:
        switch_checkpoint(webui, title)
        yield lora_dir
    finally:
        if kept:
            webui.post("/sdapi/v1/options", kept)
        switch_checkpoint(webui, previous)
        shutil.rmtree(lora_dir / subfolder, ignore_errors=True)
        shutil.rmtree(datasets / dataset, ignore_errors=True)
        webui.post("/sdapi/v1/refresh-loras", {})


def train_and_apply(webui, lora_dir: Path, body: dict, steps: int,
                    applied_blocks: Optional[str] = None) -> tuple[dict, list[str]]:
    """One short run through the API, checked end to end; returns the saved file's metadata and keys.

    `applied_blocks` (a block-weight spec) generates with a merge of the result that keeps only those blocks instead
    of the whole file: Forge merges a LoRA into the weights beside a copy of every weight it touches, which for a
    whole SDXL LoRA in float32 does not fit a machine the size of the tier's."""
    name = body["name"]
    before_image = webui.txt2img(PROMPT, SEED).image
    before_hash = webui.get(f"{API}/model-hash")["sha256"]
    [job_id] = webui.post(f"{API}/train", body)["job_ids"]
    status = wait_for_job(webui, job_id)
    assert status["state"] == "done", status
    assert (status["step"], status["total_steps"], len(status["losses"])) == (steps, steps, steps)
    assert all(np.isfinite(status["losses"]))
    saved = lora_dir / status["result"]
    assert saved.is_file()
    with safe_open(str(saved), "pt") as handle:
        metadata, keys = handle.metadata(), list(handle.keys())
    assert webui.get(f"{API}/model-hash")["sha256"] == before_hash
    applied = name
    if applied_blocks is not None:
        applied = f"{name}-blocks"
        source = status["result"].removesuffix(".safetensors")  # the name in the Lora folder, subfolder included
        answer = webui.post(f"{API}/merge", {"models": [source], "ratios": [1], "blocks": [applied_blocks],
                                             "output": applied, "subfolder": body["subfolder"], "overwrite": True})
        assert 0 < answer["modules"] < len({k.split(".", 1)[0] for k in keys}), answer
    with_lora = webui.txt2img(f"{PROMPT} <lora:{applied}:1>", SEED)
    assert applied in with_lora.infotext
    assert np.abs(with_lora.image.astype(float) - before_image).mean() > 0.5  # its keys matched the model
    return metadata, keys


def lora_folder_cleaned(webui, subfolder: str):
    """For a module fixture: the server's Lora folder; afterwards `subfolder` inside it is removed and the server's
    Lora list refreshed."""
    folder = webui.folders().loras
    yield folder
    shutil.rmtree(folder / subfolder, ignore_errors=True)
    webui.post("/sdapi/v1/refresh-loras", {})
