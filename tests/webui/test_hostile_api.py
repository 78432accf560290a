"""The hostile-request corpus of issue 10 (tests/hostile_corpus.py) over real HTTP against the WebUI: each request
answers its status with a one-line detail naming the problem, writes nothing in the Lora, datasets or outputs
folders, changes no input and no preset, and puts no traceback in the server log; afterwards the model hash is
unchanged and txt2img still generates. Two identical training requests at once: the second is refused (409)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hostile_corpus import Names, hostile_corpus, ok_train  # tests/ is on sys.path for the tier too

from .training_support import API, TINY_DATA, server_folders, wait_for_job, write_images

pytestmark = pytest.mark.webui

SUBFOLDER = "copylora-hostile"
NAMES = Names(dataset="copylora-hostile-a", one=f"{SUBFOLDER}/one", two=f"{SUBFOLDER}/two",
              not_a_lora=f"{SUBFOLDER}/not_a_lora", run="copylora-hostile-run")
CORPUS = hostile_corpus(NAMES)


def send(webui, method: str, path: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode("utf-8"))
    request = urllib.request.Request(webui.base_url + API + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def digest(*roots: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def setup(webui, fixture_loras):
    """The corpus's inputs where the server looks: an image set and two LoRAs (plus one broken file)."""
    datasets, lora_dir = server_folders(webui)
    write_images(datasets / NAMES.dataset / "2_a", (200, 40, 40), 2, seed=3)
    inputs = lora_dir / SUBFOLDER
    inputs.mkdir(parents=True, exist_ok=True)
    for kind, name in (("lora", "one"), ("locon", "two")):
        source = next(lora_dir.rglob(f"{fixture_loras[kind]}.safetensors"))
        shutil.copyfile(source, inputs / f"{name}.safetensors")
    (inputs / "not_a_lora.safetensors").write_bytes(b"\xff\xff\xff\xff\x00\x00\x00\x00{")
    webui.post("/sdapi/v1/refresh-loras", {})
    yield datasets, lora_dir
    shutil.rmtree(inputs, ignore_errors=True)
    shutil.rmtree(datasets / NAMES.dataset, ignore_errors=True)
    webui.post("/sdapi/v1/refresh-loras", {})


@pytest.fixture(scope="module")
def hash_before(webui, setup):
    webui.txt2img("a red cube on a wooden table", 5)  # no LoRA: the model's own weights are back in place
    return webui.get(f"{API}/model-hash")["sha256"]


def _log(webui) -> str:
    return webui.server.log_text() if webui.server is not None else ""


def test_the_corpus_over_http(webui, setup, hash_before):
    datasets, lora_dir = setup
    watched = (lora_dir, datasets.parent)  # the Lora folder, and CopyLoRA's datasets and outputs
    failures = []
    for method, path, body, status, pattern in CORPUS:
        before, presets, log_before = digest(*watched), webui.get(f"{API}/presets"), _log(webui)
        code, answer = send(webui, method, path, body)
        detail = (answer or {}).get("detail")
        problems = []
        if code != status:
            problems.append(f"status {code}")
        if not isinstance(detail, str) or "\n" in detail or not re.search(pattern, detail):
            problems.append(f"detail {detail!r}")
        if digest(*watched) != before or webui.get(f"{API}/presets") != presets:
            problems.append("files or presets changed")
        if "Traceback" in _log(webui)[len(log_before):]:
            problems.append("a traceback in the server log")
        if problems:
            failures.append(f"{method} {path} {str(body)[:80]}: {', '.join(problems)}")
    assert not failures, "\n".join(failures)
    assert [job for job in webui.get(f"{API}/jobs") if job["name"].startswith(NAMES.run)] == []


def test_two_identical_train_requests_the_second_is_refused(webui, setup):
    body = {**ok_train(NAMES), "loop": {"max_steps": 400}, "dataset": TINY_DATA}
    code, first = send(webui, "POST", "/train", body)
    assert code == 200, first
    job = first["job_ids"][0]
    try:
        code, second = send(webui, "POST", "/train", body)
        assert code == 409, second
        assert re.match(rf"^{NAMES.run}: job {job} \((queued|running)\) already writes", second["detail"]), second
    finally:
        webui.post(f"{API}/jobs/{job}/stop", {"save": False})
        wait_for_job(webui, job)
    code, third = send(webui, "POST", "/train", {**body, "loop": {"max_steps": 1}})  # released when it ended
    assert code == 200, third
    status = wait_for_job(webui, third["job_ids"][0])
    assert status["state"] == "done", status
    for name in [status["result"], *status["written"]]:
        (setup[1] / name).unlink(missing_ok=True)


def test_afterwards_the_model_is_unchanged_and_txt2img_generates(webui, setup, hash_before):
    assert webui.get(f"{API}/model-hash")["sha256"] == hash_before
    image = webui.txt2img("a red cube on a wooden table", 5).image
    assert image.shape == (64, 64, 3) and image.std() > 0
