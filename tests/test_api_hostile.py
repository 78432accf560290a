"""Hostile requests against the HTTP API, without the WebUI (see api_harness): every class the issue found answers
a 4xx with a one-line detail naming the problem, writes nothing, leaves every input byte-identical and logs no
traceback; a bug answers 500 with one console line. The same corpus runs over real HTTP in the webui tier
(tests/webui/test_hostile_api.py)."""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import quote
from urllib.parse import quote

import pytest

from api_harness import PRESET_TEXT, api, call, tree_digest  # noqa: F401  (api is a fixture)
from hostile_corpus import Names, hostile_corpus, ok_merge, ok_train

CORPUS = hostile_corpus()
OK_TRAIN, OK_MERGE = ok_train(Names()), ok_merge(Names())

def _send(api, method, path, body):
    return call(api, method, path, raw=body) if isinstance(body, bytes) else call(api, method, path, body)


def assert_refused(response, status: int, pattern: str) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, detail
    assert re.search(pattern, detail), detail
    return detail


@pytest.mark.parametrize("method, path, body, status, pattern", CORPUS,
                         ids=[f"{m} {p[:20]} {i}" for i, (m, p, *_) in enumerate(CORPUS)])
def test_hostile_request_is_refused_cleanly(api, caplog, method, path, body, status, pattern):
    before = tree_digest(api.root.parent)
    with caplog.at_level(logging.DEBUG):
        response = _send(api, method, path, body)
    assert_refused(response, status, pattern)
    assert tree_digest(api.root.parent) == before  # nothing written, removed or changed anywhere
    assert api.service.jobs.list() == []  # nothing queued
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_the_corpus_requests_are_good_once_the_bad_part_is_gone(api):
    """The corpus's base requests pass, so each case is refused for its own bad part."""
    assert call(api, "POST", "/datasets/scan", {"dataset": "a", "settings": {"resolution": "256"}}).status_code == 200
    response = call(api, "POST", "/merge", OK_MERGE)
    assert response.status_code == 200, response.text
    assert (api.root / "loras" / "run_diff.safetensors").is_file()
    response = call(api, "POST", "/train", OK_TRAIN)
    assert response.status_code == 200 and len(response.json()["job_ids"]) == 1
    assert call(api, "PUT", "/presets/NEW", {"values": [1] * 17}).status_code == 200


def test_same_output_twice_is_refused_while_the_first_job_holds_it(api):
    first = call(api, "POST", "/train", OK_TRAIN).json()["job_ids"][0]
    again = call(api, "POST", "/train", OK_TRAIN)
    detail = assert_refused(again, 409, rf"^run: job {first} \((queued|running)\) already writes this output")
    assert len(api.service.jobs.list()) == 1, detail
    other = call(api, "POST", "/train", {**OK_TRAIN, "name": "other"})  # other names queue behind it
    assert other.status_code == 200


PAIR = {"dataset_b": "a", "keep_parts": True}


@pytest.mark.parametrize("existing, extra", [
    ("kept_A.safetensors", {"route": "difference", **PAIR}), ("kept_B.safetensors", {"route": "difference", **PAIR}),
    ("kept_A.safetensors", {"route": "copier", **PAIR}), ("kept.safetensors", {"output": {"resume": True}})])
def test_a_file_the_run_would_refuse_to_replace_is_refused_before_it_queues(api, existing, extra):
    """The trainer refuses to replace a result or a kept part (resuming or not): the request is refused up front,
    not queued to fail once the model is prepared."""
    (api.root / "loras" / existing).write_bytes(b"precious")
    before = tree_digest(api.root.parent)
    response = call(api, "POST", "/train", {**OK_TRAIN, "name": "kept", **extra})
    assert_refused(response, 400, rf"^{existing} already exists in the Lora folder; choose another name")
    assert tree_digest(api.root.parent) == before and api.service.jobs.list() == []
    overwrite = {**extra, "output": {**extra.get("output", {}), "overwrite": True}}
    assert call(api, "POST", "/train", {**OK_TRAIN, "name": "kept", **overwrite}).status_code == 200


def test_a_kept_part_a_queued_job_writes_is_taken_too(api):
    """A difference run keeping its parts writes pair_A and pair_B: another run named pair_A waits for none of its
    files to be written by a queued or running job."""
    pair = {**OK_TRAIN, "name": "pair", "route": "difference", "dataset_b": "a", "keep_parts": True}
    first = call(api, "POST", "/train", pair).json()["job_ids"][0]
    response = call(api, "POST", "/train", {**OK_TRAIN, "name": "pair_A"})
    assert_refused(response, 409, rf"^pair_A: job {first} \((queued|running)\) already writes this output")
    assert call(api, "POST", "/train", {**OK_TRAIN, "name": "pair_C"}).status_code == 200


def test_names_have_one_limit_for_training_and_merging(api):
    """200 bytes, as the CLI says: a training name is not told one limit and then refused by another."""
    assert call(api, "POST", "/train", {**OK_TRAIN, "name": "t" * 200}).status_code == 200
    assert_refused(call(api, "POST", "/train", {**OK_TRAIN, "name": "t" * 201}), 400, r"201 bytes .*at most 200")
    assert call(api, "POST", "/merge", {**OK_MERGE, "output": "m" * 200}).status_code == 200
    assert_refused(call(api, "POST", "/merge", {**OK_MERGE, "output": "m" * 201}), 400, r"201 bytes.*at most 200")


@pytest.mark.parametrize("ending", ["done", "fail", "stop", "cancel"])
def test_a_job_releases_its_output_however_it_ends(api, ending):
    blocker = call(api, "POST", "/train", {**OK_TRAIN, "name": "blocker"}).json()["job_ids"][0]
    job = call(api, "POST", "/train", OK_TRAIN).json()["job_ids"][0]
    if ending == "cancel":  # still queued behind the blocker
        call(api, "POST", f"/jobs/{job}/stop", {"save": False})
    api.runner.finish("blocker")
    if ending in ("done", "fail"):
        api.runner.finish("run", ending)
    elif ending == "stop":
        _wait(lambda: api.service.jobs.status(job).state.value == "running")
        call(api, "POST", f"/jobs/{job}/stop", {"save": False})
    _wait(lambda: api.service.jobs.status(job).state.finished and api.service.jobs.status(blocker).state.finished)
    assert call(api, "POST", "/train", OK_TRAIN).status_code == 200


def _wait(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_a_sweep_that_collides_with_a_queued_run_queues_nothing(api):
    call(api, "POST", "/train", {**OK_TRAIN, "name": "s-seed2"})
    response = call(api, "POST", "/train", {**OK_TRAIN, "name": "s", "loop": {"seed": "1,2,3"}})
    assert_refused(response, 409, r"^s-seed2: job \w+ ")
    assert [s.name for s in api.service.jobs.list()] == ["s-seed2"]


@pytest.mark.parametrize("name", ["cl\x0bp", "cl\u2028p", "cl\x85p", "cl\x1cp", "cl\fp"])
def test_a_preset_name_the_core_refuses_writes_nothing(api, name):
    """Names that str.splitlines() would split (issue 10, defect 1) must never reach the file."""
    before = api.preset_file.read_bytes()
    response = call(api, "PUT", f"/presets/{quote(name)}", {"values": [1] * 17})
    assert_refused(response, 400, r"name")
    assert api.preset_file.read_bytes() == before == PRESET_TEXT.encode()
    assert "MINE" in call(api, "GET", "/presets").json()
    assert call(api, "POST", "/merge", {**OK_MERGE, "blocks": ["MINE", "-"]}).status_code == 200


# Values only the engine's own checks can judge (train/config.py, core/presets.py): they must be refused at submit,
# before anything is queued, not fail hours later in the job.
ENGINE_CASES = [
    (b'{"name": "run", "dataset_a": "a", "optim": {"learning_rate": NaN}}', r"learning_rate"),
    (b'{"name": "run", "dataset_a": "a", "optim": {"learning_rate": Infinity}}', r"learning_rate"),
    (b'{"name": "run", "dataset_a": "a", "optim": {"text_encoder_lr": "nan"}}', r"text_encoder_lr"),
    (b'{"name": "run", "dataset_a": "a", "network": {"rank": 1e20}}', r"rank"),
    (b'{"name": "run", "dataset_a": "a", "output": {"training_comment": "a\\u0000b"}}', r"training_comment"),
    (b'{"name": "run", "dataset_a": "a", "output": {"training_comment": ["a"]}}', r"training_comment"),
    (b'{"name": "run", "dataset_a": "a", "output": {"training_comment": "' + b"x" * 1001 + b'"}}', r"training_comment"),
    (b'{"name": "run", "dataset_a": "a", "dataset": {"resolution": "60000", "enable_bucket": false}}',
     r"resolution"),
]


@pytest.mark.parametrize("raw, pattern", ENGINE_CASES)
def test_values_the_engine_refuses_are_refused_at_submit(api, caplog, raw, pattern):
    before = tree_digest(api.root.parent)
    with caplog.at_level(logging.DEBUG):
        response = call(api, "POST", "/train", raw=raw)
    assert_refused(response, 400, pattern)
    assert tree_digest(api.root.parent) == before and api.service.jobs.list() == []
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_a_bug_answers_500_with_one_console_line(api, caplog, monkeypatch):
    def broken(*_):
        raise RuntimeError("an unforeseen\nproblem")

    monkeypatch.setattr(api.service, "datasets", broken)
    with caplog.at_level(logging.DEBUG, logger="copylora"):
        response = call(api, "GET", "/datasets")
    assert response.status_code == 500
    assert response.json()["detail"] == "CopyLoRA internal error (RuntimeError); the server console says where"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    line = errors[0].getMessage()
    assert "\n" not in line and "GET /copylora/v1/datasets" in line and "RuntimeError: an unforeseen problem" in line
    assert "test_api_hostile.py" in line  # says where


def test_pydantic_models_forbid_extras_on_this_pydantic():
    from lib_copylora.webui import api as api_module
    from lib_copylora.webui import compat

    for model in (api_module.TrainRequestModel, api_module.MergeRequestModel, api_module.ScanRequest,
                  api_module.StopRequest, api_module.PresetValues):
        config = model.model_config if compat.pydantic_major() >= 2 else model.__config__
        assert (config["extra"] if isinstance(config, dict) else config.extra) in ("forbid", "Extra.forbid") or \
            str(getattr(config, "extra", "")).endswith("forbid")
