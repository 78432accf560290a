"""Unreadable images inside the real WebUI: `/datasets/scan` lists them with the reason, a training job on the set
fails before its first step with one line naming them (no LoRA written, the model unchanged), and the same job
with `skip_unreadable_images` trains without them."""

from __future__ import annotations

import shutil

import pytest

from .training_support import API, TINY_DATA, server_folders, wait_for_job, write_images

pytestmark = pytest.mark.webui

SUBFOLDER = "copylora-webui-tests"
DATASET = "cl_unreadable"


@pytest.fixture(scope="module")
def bad_set(webui):
    datasets, lora_dir = server_folders(webui)
    folder = datasets / DATASET / "2_shirt"
    write_images(folder, (200, 40, 40), 2, seed=3)
    good = next(folder.glob("*.png")).read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.jpg").write_text("not a photo", encoding="utf-8")
    (folder / "empty.png").write_bytes(b"")
    yield lora_dir
    shutil.rmtree(datasets / DATASET, ignore_errors=True)
    shutil.rmtree(lora_dir / SUBFOLDER, ignore_errors=True)
    webui.post("/sdapi/v1/refresh-loras", {})


def test_scan_lists_unreadable_images_with_the_reason(webui, bad_set):
    summary = webui.post(f"{API}/datasets/scan", {"dataset": DATASET, "settings": TINY_DATA})
    assert summary["images"] == 2
    assert sorted((u["file"], u["reason"].split(" (")[0]) for u in summary["unreadable"]) == [
        (f"{DATASET}/2_shirt/cut.png", "truncated or corrupt"),
        (f"{DATASET}/2_shirt/empty.png", "empty file"),
        (f"{DATASET}/2_shirt/notes.jpg", "not an image, or a format PIL cannot read"),
    ]
    assert "unreadable: 3 images" in summary["text"]


def _body(name: str, **dataset) -> dict:
    return {"name": name, "dataset_a": DATASET, "subfolder": SUBFOLDER, "overwrite": True,
            "network": {"rank": 2, "alpha": 1}, "loop": {"max_steps": 2}, "dataset": {**TINY_DATA, **dataset}}


def test_training_refuses_the_set_before_step_1_or_skips_them_when_asked(webui, bad_set):
    before_hash = webui.get(f"{API}/model-hash")["sha256"]
    [job_id] = webui.post(f"{API}/train", _body("cl-unreadable"))["job_ids"]
    status = wait_for_job(webui, job_id)
    assert status["state"] == "failed" and status["step"] == 0, status
    assert "3 of the images" in status["error"] and "skip_unreadable_images" in status["error"]
    assert "\n" not in status["error"] and "Traceback" not in status["error"]
    assert not (bad_set / SUBFOLDER / "cl-unreadable.safetensors").exists()
    assert webui.get(f"{API}/model-hash")["sha256"] == before_hash

    [job_id] = webui.post(f"{API}/train", _body("cl-skipped", skip_unreadable_images=True))["job_ids"]
    status = wait_for_job(webui, job_id)
    assert status["state"] == "done", status
    assert (bad_set / SUBFOLDER / "cl-skipped.safetensors").is_file()
