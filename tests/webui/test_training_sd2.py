"""Training inside the real WebUI on an SD2-768-v model: the same server switches from the SD1 fixture to a random
SD2 checkpoint for this module (its v config beside it) and back afterwards.

Tiny on purpose: 64×64 images, 3 steps, 2 sampling steps. A random model makes no pictures, but its output depends
on every weight, so a LoRA whose keys match the SD2 model changes the image.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .training_support import API, PROMPT, SEED, TINY_DATA, old_model_hash, on_checkpoint, on_forge, train_and_apply

pytestmark = pytest.mark.webui

SUBFOLDER = "copylora-webui-tests-sd2"
DATASET = "tiny_sd2"


@pytest.fixture(scope="module")
def on_sd2(webui, sd2_checkpoint):
    """The server runs the SD2 checkpoint for this module; the checkpoint in use before comes back after."""
    with on_checkpoint(webui, sd2_checkpoint.title, DATASET, (40, 160, 60), SUBFOLDER) as lora_dir:
        yield {"loras": lora_dir, "checkpoint": sd2_checkpoint}


def test_the_sd2_fixture_loads_as_a_v_prediction_model(webui, on_sd2):
    webui.txt2img(PROMPT, SEED)  # Forge loads (and hashes) a checkpoint at the first generation after a switch
    loaded = webui.loaded_checkpoint()
    assert loaded["title"].startswith(on_sd2["checkpoint"].title)
    assert loaded["sha256"] == on_sd2["checkpoint"].sha256  # the file the fixture wrote
    log = webui.server.log_text()
    if on_forge(webui):
        # Forge builds the model from its keys and takes only v from the config beside the file; what it made of
        # that is checked through the trained file's ss_v_parameterization below
        assert f"'filename': '{loaded['filename']}'" in log and "K-Model Created" in log
    else:
        config = Path(loaded["filename"]).with_suffix(".yaml")
        assert f"Creating model from config: {config}" in log  # ours, not the v/eps guess


def test_a_single_run_on_sd2_saves_an_sd2_lora_and_leaves_the_model_as_it_was(webui, on_sd2):
    body = {"name": "cl-sd2", "dataset_a": DATASET, "subfolder": SUBFOLDER, "overwrite": True,
            "network": {"rank": 4, "alpha": 4}, "optim": {"learning_rate": 5e-3},
            "loop": {"max_steps": 3, "clip_skip": 2}, "dataset": TINY_DATA}
    metadata, keys = train_and_apply(webui, on_sd2["loras"], body, steps=3)
    # A1111 applies clip skip to SD1 only, in generation as in training, and the run says so; Forge applies it
    [job] = [j for j in webui.get(f"{API}/results") if j["name"] == "cl-sd2"][-1:]
    notes = [line for line in job["log"] if "clip skip 2" in line]
    assert len(notes) == (0 if on_forge(webui) else 1), job["log"]
    assert metadata["ss_clip_skip"] == "2"
    assert (metadata["ss_v2"], metadata["ss_base_model_version"]) == ("True", "sd_v2")
    assert metadata["ss_v_parameterization"] == "True"  # trained against the v target the v config sets
    # the base checkpoint's file name, never its path (kohya's ss_sd_model_name)
    checkpoint = Path(webui.loaded_checkpoint()["filename"])
    assert metadata["ss_sd_model_name"] == checkpoint.name
    # and kohya's hashes of it: the WebUI's old 8-digit one, and the sha256 the fixture computed when it wrote it
    assert metadata["ss_sd_model_hash"] == old_model_hash(checkpoint)
    assert metadata["ss_new_sd_model_hash"] == on_sd2["checkpoint"].sha256
    assert any("proj_in" in k for k in keys) and any(k.startswith("lora_unet_") for k in keys)
