"""Training inside the real WebUI through /copylora/v1: results load as LoRAs, the model comes back bit-identical
(after success, stop-and-save and Interrupt), merged LoRA weights are cleared first, bad names are refused, and
A1111 trains with SDPA in place of a sliced attention kernel, putting its own back.

Tiny on purpose: 64×64 images, a handful of steps, 2 sampling steps; the fixture model is a random SD1.5.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .client import WebuiHttpError
from .logscan import attention_kernels_applied
from .training_support import (API, PROMPT, SEED, TINY_DATA, old_model_hash, on_forge, result_folders, wait_for_job,
                               write_images)

pytestmark = pytest.mark.webui

SUBFOLDER = "copylora-webui-tests"


@pytest.fixture(scope="module")
def folders(webui):
    """Our datasets (written into the server's --copylora-dir) and the Lora folder; results are removed after."""
    with result_folders(webui, SUBFOLDER) as folders:
        datasets = folders["datasets"]
        write_images(datasets / "tiny_a" / "2_plain", (200, 40, 40), 2, seed=1)
        write_images(datasets / "tiny_b" / "2_text", (40, 40, 200), 2, seed=2)
        (datasets / "tiny_a" / "2_plain" / "img0.txt").write_text("a plain shirt", encoding="utf-8")
        yield folders


def _request(name: str, **extra) -> dict:
    body = {"name": name, "dataset_a": "tiny_a", "subfolder": SUBFOLDER, "overwrite": True,
            "network": {"rank": 4, "alpha": 4}, "optim": {"learning_rate": 5e-3}, "loop": {"max_steps": 3},
            "dataset": TINY_DATA}
    for key, value in extra.items():
        body[key] = {**body[key], **value} if isinstance(body.get(key), dict) else value
    return body


def _model_hash(webui) -> str:
    return webui.get(f"{API}/model-hash")["sha256"]


def _own_weights_hash(webui) -> str:
    """The hash with the model's own weights: a generation without LoRAs makes the built-in Lora restore them."""
    webui.txt2img(PROMPT, SEED)
    return _model_hash(webui)


def _assert_base_checkpoint_named(webui, saved: Path) -> None:
    """kohya's keys for the base model: its file name, the WebUI's old 8-digit hash of the file and its sha256."""
    loaded = webui.loaded_checkpoint()
    with safe_open(str(saved), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_sd_model_name"] == Path(loaded["filename"]).name
    assert metadata["ss_sd_model_hash"] == old_model_hash(Path(loaded["filename"]))
    assert metadata["ss_new_sd_model_hash"] == loaded["sha256"] and len(loaded["sha256"]) == 64


def test_a_run_trains_saves_a_loadable_lora_and_leaves_the_model_as_it_was(webui, folders):
    before_image = webui.txt2img(PROMPT, SEED).image
    before_hash = _model_hash(webui)
    [job_id] = webui.post(f"{API}/train", _request(
        "cl-single", sample={"prompts": [PROMPT], "steps": 2, "every_n_steps": 2}))["job_ids"]
    status = wait_for_job(webui, job_id)
    assert status["state"] == "done", status
    assert (status["phase"], status["step"], status["total_steps"], len(status["losses"])) == ("single", 3, 3, 3)
    assert status["result"] == f"{SUBFOLDER}/cl-single.safetensors"
    assert status["tag"] == "<lora:cl-single:1>"
    assert (folders["loras"] / status["result"]).is_file()
    _assert_base_checkpoint_named(webui, folders["loras"] / status["result"])
    assert len(status["samples"]) == 2 and all(Path(p).is_file() for p in status["samples"])  # steps 2 and 3
    assert _model_hash(webui) == before_hash
    assert np.array_equal(webui.txt2img(PROMPT, SEED).image, before_image)
    assert "cl-single" in {entry["name"] for entry in webui.get("/sdapi/v1/loras")}  # listed without a restart
    with_lora = webui.txt2img(f"{PROMPT} <lora:cl-single:1>", SEED)
    assert "cl-single" in with_lora.infotext
    assert np.abs(with_lora.image.astype(float) - before_image).mean() > 0.5  # its keys matched the model
    assert any(s["id"] == job_id for s in webui.get(f"{API}/results"))


def test_merged_lora_weights_are_cleared_before_training(webui, folders, fixture_loras):
    plain = webui.txt2img(PROMPT, SEED).image
    own_hash = _model_hash(webui)
    webui.txt2img(f"{PROMPT} <lora:{fixture_loras['lora']}:1>", SEED)  # merges the LoRA into the weights
    assert _model_hash(webui) != own_hash
    [job_id] = webui.post(f"{API}/train", _request("cl-cleared", loop={"max_steps": 1}))["job_ids"]
    assert wait_for_job(webui, job_id)["state"] == "done"
    assert _model_hash(webui) == own_hash
    assert np.array_equal(webui.txt2img(PROMPT, SEED).image, plain)


def test_stop_and_save_in_the_copier_route(webui, folders):
    before_hash = _own_weights_hash(webui)
    [job_id] = webui.post(f"{API}/train", _request("cl-copier", route="copier", dataset_b="tiny_b",
                                                   loop={"max_steps": 400}))["job_ids"]
    running = wait_for_job(webui, job_id, until=lambda s: s["phase"] == "A" and s["step"] >= 2)
    progress = webui.get("/sdapi/v1/progress?skip_current_image=true")
    assert progress["state"]["job"] == "copylora-train" and progress["state"]["job_count"] == 400
    assert running["state"] == "running"
    webui.post(f"{API}/jobs/{job_id}/stop", {"save": True})
    status = wait_for_job(webui, job_id)
    assert status["state"] == "stopped" and status["result"] is None
    saved = [name for name in status["written"] if "-step" in name]
    assert saved and all((folders["loras"] / name).is_file() for name in saved)
    assert _model_hash(webui) == before_hash


def test_interrupt_stops_the_run_and_the_rest_of_its_sweep(webui, folders):
    before_hash = _own_weights_hash(webui)
    ids = webui.post(f"{API}/train", _request("cl-sweep", network={"rank": "2,4"},
                                              loop={"max_steps": 400}))["job_ids"]
    assert [webui.get(f"{API}/jobs/{i}")["name"] for i in ids] == ["cl-sweep-r2", "cl-sweep-r4"]
    wait_for_job(webui, ids[0], until=lambda s: s["step"] >= 1)
    webui.post("/sdapi/v1/interrupt", {})
    assert wait_for_job(webui, ids[0])["state"] == "stopped"
    assert wait_for_job(webui, ids[1])["state"] == "cancelled"
    assert _model_hash(webui) == before_hash


def test_a_sweep_runs_one_after_another(webui, folders):
    ids = webui.post(f"{API}/train", _request("cl-lr", optim={"learning_rate": "1e-3,2e-3"},
                                              loop={"max_steps": 1}))["job_ids"]
    finished = [wait_for_job(webui, i) for i in ids]
    assert [s["state"] for s in finished] == ["done", "done"]
    assert finished[0]["finished_at"] <= finished[1]["started_at"]
    assert {s["tag"] for s in finished} == {"<lora:cl-lr-lr1e-3:1>", "<lora:cl-lr-lr2e-3:1>"}


@pytest.mark.parametrize("change, field", [
    ({"dataset_a": "../tiny_a"}, "dataset_a"), ({"dataset_a": "/etc"}, "dataset_a"),
    ({"subfolder": "../../outside"}, "subfolder"), ({"name": "../evil"}, "output_name"),
])
def test_names_that_leave_their_folder_are_refused(webui, folders, change, field):
    with pytest.raises(WebuiHttpError, match="HTTP 400") as error:
        webui.post(f"{API}/train", {**_request("cl-bad"), **change})
    assert field in str(error.value)


def test_dataset_scan_reports_counts_repeats_captions_and_buckets(webui, folders):
    summary = webui.post(f"{API}/datasets/scan", {"dataset": "tiny_a", "settings": TINY_DATA})
    assert summary["images"] == 2 and summary["samples_per_epoch"] == 4 and summary["captioned"] == 1
    assert summary["folders"] == [{"name": "tiny_a/2_plain", "repeats": 2, "images": 2, "captioned": 1,
                                   "regularisation": False}]
    assert summary["buckets"] == [{"width": 64, "height": 64, "samples": 4}]
    assert "tiny_a" in webui.get(f"{API}/datasets")
    with pytest.raises(WebuiHttpError, match="HTTP 400"):
        webui.post(f"{API}/datasets/scan", {"dataset": "../..", "settings": {}})


def test_presets_can_be_listed_added_and_deleted(webui):
    preset_file = Path(__file__).resolve().parents[2] / "block_weight_presets.txt"  # the server's default file
    existed = preset_file.exists()
    try:
        assert webui.get(f"{API}/presets")["ALL"] == [1.0] * 17
        values = [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0]
        added = webui._request("PUT", f"{API}/presets/CLTEST", {"values": values})
        assert added["CLTEST"] == [float(v) for v in values]
        assert "CLTEST" not in webui._request("DELETE", f"{API}/presets/CLTEST")
        with pytest.raises(WebuiHttpError, match="HTTP 400"):
            webui._request("PUT", f"{API}/presets/bad,name", {"values": values})
    finally:
        if not existed and preset_file.exists() and not preset_file.read_text(encoding="utf-8").strip():
            preset_file.unlink()  # the test made it; leave the checkout as it was


COMPILED_LINES = {"blocks": "blocks compiled with inductor", "unet": "the whole UNet compiled with inductor"}


@pytest.mark.timeout(2400)  # three runs, two of them compiled by inductor: the whole UNet takes minutes on a CPU
def test_compiled_blocks_and_unet_train_as_eager_ones_do_and_are_undone(webui, folders):
    """`speed.compile` reaches the WebUI's own transformer blocks (with the training forwards CopyLoRA gives
    them), or its whole UNet, and inductor compiles them: the losses and the saved LoRA are the eager run's up to
    float rounding, at batch 1 too, where a block's input is a transposed view (`contiguous_inputs` copies it
    contiguous first, before a compiled block or inside the UNet's graph), and with steps 4 and 5 skipping
    dynamo's guards (`skip_guards`; the batches have one shape); generation afterwards is as before."""
    before_image = webui.txt2img(PROMPT, SEED).image
    before_hash = _model_hash(webui)
    runs, weights = {}, {}
    for mode in ("off", *COMPILED_LINES):
        # eps 1: Adam's step is then ~lr·gradient, so the weights differ as the gradients do (with a tiny eps it is
        # ~lr·sign(gradient), and rounding flips the sign of gradients near zero)
        [job_id] = webui.post(f"{API}/train", _request(f"cl-compile-{mode}", speed={"compile": mode},
                                                       loop={"max_steps": 5},
                                                       optim={"learning_rate": 5e-2, "eps": 1.0},
                                                       output={"save_precision": "fp32"}))["job_ids"]
        runs[mode] = wait_for_job(webui, job_id, timeout=1500)  # inductor's code generation: minutes on a CPU
        assert runs[mode]["state"] == "done", runs[mode]
        weights[mode] = load_file(str(folders["loras"] / runs[mode]["result"]))
    assert not any(line.startswith("compile:") for line in runs["off"]["log"])
    # lora_up starts at zero, so it holds what was learned; the wrong batch-1 gradients moved it by up to 70 %
    largest = max(tensor.abs().max().item() for key, tensor in weights["off"].items() if "lora_up" in key)
    for mode, expected in COMPILED_LINES.items():
        compiled_lines = [line for line in runs[mode]["log"] if line.startswith("compile:")]
        assert compiled_lines and expected in compiled_lines[0], runs[mode]["log"]
        assert any("checks only the guards that tell its graphs apart" in line for line in compiled_lines[1:]), mode
        assert np.allclose(runs[mode]["losses"], runs["off"]["losses"], rtol=1e-4, atol=1e-6), mode
        assert weights[mode].keys() == weights["off"].keys()
        for key, eager in weights["off"].items():
            assert torch.allclose(weights[mode][key], eager, rtol=1e-3, atol=1e-4 * largest), (mode, key)
    assert _model_hash(webui) == before_hash
    assert np.array_equal(webui.txt2img(PROMPT, SEED).image, before_image)


ATTENTION_OPTION = "cross_attention_optimization"


def _attention_run(webui, name: str, **speed) -> tuple[dict, list[str]]:
    """A 2-step run: its final status (with the job's log), and the kernels the WebUI applied meanwhile, in order,
    from the server's log."""
    log_start = len(webui.server.log_text())
    [job_id] = webui.post(f"{API}/train", _request(name, loop={"max_steps": 2}, speed=speed))["job_ids"]
    status = wait_for_job(webui, job_id)
    assert status["state"] == "done", status
    return status, attention_kernels_applied(webui.server.log_text()[log_start:])


def test_a1111_trains_with_sdpa_in_place_of_a_sliced_kernel_and_puts_its_own_back(webui, folders):
    """Automatic picks a sliced kernel for generating (InvokeAI on a CPU, Doggettx on a CUDA card without
    xformers); with Fastest attention on, a run trains with the WebUI's own sdp and applies the setting's kernel
    again afterwards. Off, or with sdp chosen already, nothing is switched. Generation afterwards is as before."""
    if webui.server is None or on_forge(webui):
        pytest.skip("A1111 started by the tier only: Forge's training forward calls PyTorch SDPA itself, and the "
                    "kernels applied are read from the server's log")
    before_image = webui.txt2img(PROMPT, SEED).image
    before_hash = _model_hash(webui)
    status, applied = _attention_run(webui, "cl-attention-on")
    [line] = [line for line in status["log"] if line.startswith("attention:")]
    own = re.search(r"in place of the WebUI's (.+), which", line).group(1)
    assert line.startswith("attention: training with PyTorch SDPA (sdp)") and own in ("InvokeAI", "Doggettx"), line
    assert applied == ["sdp", own]  # switched for the run, then the setting's own kernel again

    status, applied = _attention_run(webui, "cl-attention-off", host_attention=False)
    assert not any(line.startswith("attention:") for line in status["log"]) and applied == []

    setting = webui.get("/sdapi/v1/options")[ATTENTION_OPTION]
    webui.post("/sdapi/v1/options", {ATTENTION_OPTION: "sdp - scaled dot product"})
    try:
        status, applied = _attention_run(webui, "cl-attention-sdp")
        assert not any(line.startswith("attention:") for line in status["log"]) and applied == []
    finally:
        webui.post("/sdapi/v1/options", {ATTENTION_OPTION: setting})
    assert _model_hash(webui) == before_hash
    assert np.array_equal(webui.txt2img(PROMPT, SEED).image, before_image)
