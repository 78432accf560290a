"""Hostile requests against the HTTP API, without the WebUI (see api_harness): every class the issue found answers
a 4xx with a one-line detail naming the problem, writes nothing, leaves every input byte-identical and logs no
traceback; a bug answers 500 with one console line. The same corpus runs over real HTTP in the webui tier
(tests/webui/test_hostile_api.py)."""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import quote

import pytest

from api_harness import PRESET_TEXT, api, call, tree_digest  # noqa: F401  (api is a fixture)

LONG = "n" * 300
OK_TRAIN = {"name": "run", "dataset_a": "a", "loop": {"max_steps": 2}}
OK_MERGE = {"models": ["one", "two"], "ratios": [1, -1], "output": "diff"}

# (method, path, body, status, what the one-line detail must say)
CORPUS = [
    # over-long names: the file system would answer ENAMETOOLONG deep inside
    ("POST", "/train", {**OK_TRAIN, "name": LONG}, 400, r"^name: .*300 bytes is too long"),
    ("POST", "/train", {**OK_TRAIN, "dataset_a": LONG}, 400, r"^dataset_a: .*too long"),
    ("POST", "/train", {**OK_TRAIN, "subfolder": LONG}, 400, r"^subfolder: .*too long"),
    ("POST", "/train", {**OK_TRAIN, "reg_a": f"a/{LONG}"}, 400, r"too long"),
    ("POST", "/merge", {**OK_MERGE, "output": LONG}, 400, r"^output: .*too long"),
    ("POST", "/merge", {**OK_MERGE, "models": [LONG, "two"]}, 400, r"^models\[0\]: .*too long"),
    ("POST", "/datasets/scan", {"dataset": LONG}, 400, r"^dataset: .*too long"),
    ("GET", f"/jobs/{LONG}", None, 404, r"no training job"),
    # control characters and NUL in names
    ("POST", "/train", {**OK_TRAIN, "name": "bad\x00name"}, 400, r"^name: .*U\+0000"),
    ("POST", "/train", {**OK_TRAIN, "name": "bad\x0bname"}, 400, r"^name: .*U\+000B"),
    ("POST", "/merge", {**OK_MERGE, "output": "out\x1fput"}, 400, r"^output: .*U\+001F"),
    ("POST", "/datasets/scan", {"dataset": "a\x07"}, 400, r"^dataset: .*U\+0007"),
    # paths that leave their folder
    ("POST", "/train", {**OK_TRAIN, "dataset_a": "../root"}, 400, r"^dataset_a: .*'\.\.'"),
    ("POST", "/train", {**OK_TRAIN, "subfolder": "/tmp"}, 400, r"^subfolder: .*absolute"),
    ("POST", "/merge", {**OK_MERGE, "output": "../escaped"}, 400, r"^output: .*'\.\.'"),
    ("POST", "/datasets/scan", {"dataset": "/etc"}, 400, r"absolute"),
    # sections and values of the wrong kind
    ("POST", "/train", {**OK_TRAIN, "network": "abc"}, 400, r"^network must be an object of settings, not str"),
    ("POST", "/train", {**OK_TRAIN, "optim": [1, 2]}, 400, r"^optim must be an object of settings, not list"),
    ("POST", "/train", {**OK_TRAIN, "network": {"rank": "abc"}}, 400, r"^network\.rank: 'abc' is not a valid int"),
    ("POST", "/train", {**OK_TRAIN, "network": {"rank": True}}, 400, r"^network\.rank: True"),
    ("POST", "/train", {**OK_TRAIN, "network": {"kind": 5}}, 400, r"^network\.kind: 5 is not a valid choice"),
    ("POST", "/train", {**OK_TRAIN, "network": {"kind": "lorax"}}, 400, r"kind 'lorax' is not one of"),
    ("POST", "/train", {**OK_TRAIN, "optim": {"learning_rate": {"a": 1}}}, 400, r"^optim\.learning_rate: "),
    ("POST", "/train", {**OK_TRAIN, "optim": {"betas": "0.9"}}, 400, r"betas"),
    ("POST", "/train", {**OK_TRAIN, "loop": {"max_steps": 1.5}}, 400, r"^loop\.max_steps: 1\.5"),
    ("POST", "/train", {**OK_TRAIN, "loop": {"seed": "nan"}}, 400, r"^loop\.seed: 'nan'"),
    ("POST", "/train", {**OK_TRAIN, "loop": {"epochs": "inf"}}, 400, r"^loop\.epochs: 'inf'"),
    ("POST", "/train", {**OK_TRAIN, "loop": {"gradient_checkpointing": "maybe"}}, 400, r"gradient_checkpointing"),
    ("POST", "/train", {**OK_TRAIN, "sample": {"prompts": 5}}, 400, r"^sample\.prompts: 5"),
    ("POST", "/train", {**OK_TRAIN, "dataset": {"resolution": [512]}}, 400, r"^dataset\.resolution: \[512\]"),
    ("POST", "/train", {**OK_TRAIN, "dataset": {"caption_extension": {}}}, 400, r"^dataset\.caption_extension"),
    ("POST", "/train", {**OK_TRAIN, "route": "sideways"}, 400, r"route 'sideways' is not one of"),
    ("POST", "/train", {**OK_TRAIN, "route": "copier"}, 400, r"needs dataset_b"),
    ("POST", "/train", {**OK_TRAIN, "new_rank": 4}, 400, r"new_rank"),
    ("POST", "/train", {**OK_TRAIN, "output": {"output_dir": "/tmp"}}, 400, r"set by the server"),
    ("POST", "/train", {**OK_TRAIN, "name": 5}, 400, r"^name: "),
    ("POST", "/train", {**OK_TRAIN, "network": {"rank": "4,,8"}}, 400, r"empty item"),
    # unknown fields: refused, naming the closest known field (top level, sections, scan settings)
    ("POST", "/train", {**OK_TRAIN, "max_step": 1}, 400, r"^request: unknown field max_step;"),
    ("POST", "/train", {**OK_TRAIN, "netwrok": {}}, 400, r"unknown field netwrok \(did you mean network\?\)"),
    ("POST", "/train", {**OK_TRAIN, "loop": {"max_step": 1}}, 400,
     r"^loop: unknown field max_step \(did you mean max_steps\?\)"),
    ("POST", "/train", {**OK_TRAIN, "optim": {"lr": 1, "learning_rat": 1}}, 400,
     r"^optim: unknown fields learning_rat \(did you mean learning_rate\?\), lr;"),
    ("POST", "/merge", {**OK_MERGE, "ratio": [1]}, 400, r"unknown field ratio \(did you mean ratios\?\)"),
    ("POST", "/merge", {**OK_MERGE, "save_precison": "fp16"}, 400, r"did you mean save_precision\?"),
    ("POST", "/datasets/scan", {"dataset": "a", "settings": {"resolutoin": 64}}, 400,
     r"^dataset: unknown field resolutoin \(did you mean resolution\?\)"),
    ("POST", "/datasets/scan", {"dataset": "a", "setings": {}}, 400, r"did you mean settings\?"),
    ("POST", "/datasets/scan", {"dataset": "a", "settings": {"data_dir": "/"}}, 400, r"data_dir"),
    ("POST", "/jobs/abc/stop", {"saved": True}, 400, r"unknown field saved \(did you mean save\?\)"),
    ("PUT", "/presets/NEW", {"values": [1] * 17, "name": "x"}, 400, r"unknown field name"),
    # scan settings of the wrong type
    ("POST", "/datasets/scan", {"dataset": "a", "settings": {"batch_size": "x"}}, 400,
     r"^dataset\.batch_size: 'x' is not a valid int"),
    ("POST", "/datasets/scan", {"dataset": "a", "settings": {"resolution": {"w": 1}}}, 400, r"dataset\.resolution"),
    ("POST", "/datasets/scan", {"dataset": "a", "settings": {"enable_bucket": 7}}, 400, r"enable_bucket"),
    ("POST", "/datasets/scan", {"dataset": "a", "settings": "abc"}, 400, r"^settings: "),
    ("POST", "/datasets/scan", {"dataset": "missing"}, 400, r"does not exist"),
    # merges that cannot run
    ("POST", "/merge", {**OK_MERGE, "ratios": [1]}, 400, r"2 models but 1 ratios"),
    ("POST", "/merge", {**OK_MERGE, "ratios": ["x", 1]}, 400, r"^ratios\.0: "),
    ("POST", "/merge", {**OK_MERGE, "save_precision": "fp8"}, 400, r"save_precision must be one of"),
    ("POST", "/merge", {**OK_MERGE, "models": ["missing", "two"]}, 400, r"no LoRA file missing"),
    ("POST", "/merge", {**OK_MERGE, "models": ["not_a_lora", "two"]}, 400, r"not_a_lora|header|safetensors"),
    ("POST", "/merge", {**OK_MERGE, "output": "one"}, 400, r"one\.safetensors exists"),
    ("POST", "/merge", {**OK_MERGE, "blocks": ["NOPE", "-"]}, 400, r"NOPE"),
    ("POST", "/merge", {**OK_MERGE, "blocks": ["1,2", "-"]}, 400, r"values|count|17"),
    # presets
    ("PUT", "/presets/NEW", {"values": ["a"] * 17}, 400, r"^values\.0: "),
    ("PUT", "/presets/NEW", {"values": [1, 2]}, 400, r"17|values"),
    ("PUT", "/presets/bad:name", {"values": [1] * 17}, 400, r"name"),
    ("DELETE", "/presets/ABSENT", None, 400, r"ABSENT"),
    # bodies that are not the object a route takes
    ("POST", "/train", b"{not json", 400, r"^the body is not valid JSON"),
    ("POST", "/train", [1, 2], 400, r"^body: "),
    ("POST", "/merge", "text", 400, r"^body: "),
    ("POST", "/train", {"dataset_a": "a"}, 400, r"^name: "),
]


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
    assert (api.root / "loras" / "diff.safetensors").is_file()
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
