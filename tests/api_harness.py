"""The HTTP API without the WebUI: `register_routes` on a bare FastAPI app, the real service over temporary folders,
on a host (`service.ServiceHost`) whose runner prepares runs for real but trains nothing."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from safetensors.torch import save_file

from lib_copylora.core.family import Family
from lib_copylora.service.jobs import Job, JobState
from lib_copylora.service.service import CopyLoraService
from lib_copylora.service.train_request import Folders, prepare_run
from lib_copylora.train.routes import output_paths

from lora_factory import family_metadata, lora_state_dict

fastapi = pytest.importorskip("fastapi", reason="fastapi comes with requirements-dev.txt")
from fastapi.testclient import TestClient  # noqa: E402

from lib_copylora.webui.api import PREFIX, register_routes  # noqa: E402

PRESET_TEXT = "MINE:1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0\n"


class GatedRunner:
    """Prepares each run exactly as the WebUI's runner does (full configs, output checks); a run then waits until
    the test ends it, and fails or stops when told to. Writes nothing."""

    def __init__(self, folders: Folders):
        self.folders = folders
        self.gates: dict[str, threading.Event] = {}
        self.outcome: dict[str, str] = {}

    def prepare(self, request):
        return prepare_run(request, self.folders, torch.float32)

    @staticmethod
    def claim(config) -> frozenset[str]:
        return frozenset(str(path) for path in output_paths(config))

    def run(self, job: Job) -> JobState:
        gate = self.gates.setdefault(job.request.name, threading.Event())
        while not gate.wait(0.01):
            if job.control.stop_requested:
                return JobState.STOPPED
        if self.outcome.get(job.request.name) == "fail":
            raise RuntimeError("the run broke")
        return JobState.DONE

    def finish(self, name: str, outcome: str = "done") -> None:
        self.outcome[name] = outcome
        self.gates.setdefault(name, threading.Event()).set()


class Host:
    """The service's host: temporary folders and preset file, the gated runner, a model hash that never moves."""

    def __init__(self, folders: Folders, preset_file: Path):
        self.folders_, self.preset_file_ = folders, preset_file
        self.runner_ = GatedRunner(folders)
        self.exclusive_jobs: list[str] = []

    def folders(self) -> Folders:
        return self.folders_

    def runner(self) -> GatedRunner:
        return self.runner_

    @contextlib.contextmanager
    def exclusive(self, job: str):
        self.exclusive_jobs.append(job)
        yield

    def listed_loras(self):
        return None

    def refresh_loras(self) -> None:
        pass

    def model_hash(self) -> dict:
        return {"sha256": "0" * 64, "checkpoint": None}

    def preset_file(self) -> Path:
        return self.preset_file_

    def base_weights(self):
        from lib_copylora.core.errors import MergeError

        raise MergeError("this harness has no model: no corpus merge may need a base")


class Api(NamedTuple):
    client: TestClient
    service: CopyLoraService
    runner: GatedRunner
    root: Path  # everything the service may read or write lies under here
    preset_file: Path


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` with the sha256 of its bytes: equal digests = nothing added, removed or changed."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _image(path: Path, seed: int) -> None:
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (64, 64, 3), generator=generator, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(path)


def make_folders(root: Path) -> Folders:
    folders = Folders(root / "datasets", root / "outputs", root / "loras")
    (folders.datasets / "a" / "2_a").mkdir(parents=True)
    for i in range(2):
        _image(folders.datasets / "a" / "2_a" / f"{i}.png", seed=i)
    folders.outputs.mkdir()
    folders.loras.mkdir()
    for name, seed in (("one", 1), ("two", 2)):
        save_file(lora_state_dict("lora", Family.SD1, seed=seed), str(folders.loras / f"{name}.safetensors"),
                  metadata=family_metadata(Family.SD1))
    (folders.loras / "not_a_lora.safetensors").write_bytes(b"\xff\xff\xff\xff\x00\x00\x00\x00{")
    return folders


@pytest.fixture
def api(tmp_path) -> Api:
    root = tmp_path / "root"
    folders = make_folders(root)
    preset_file = root / "presets.txt"
    preset_file.write_text(PRESET_TEXT, encoding="utf-8")
    host = Host(folders, preset_file)
    service = CopyLoraService(host)
    app = fastapi.FastAPI()
    register_routes(app, service)
    yield Api(TestClient(app), service, host.runner_, root, preset_file)
    for name in list(host.runner_.gates):
        host.runner_.finish(name)
    service.jobs.shutdown()


def call(api: Api, method: str, path: str, body=None, raw: bytes | None = None):
    if raw is not None:
        return api.client.request(method, PREFIX + path, content=raw, headers={"content-type": "application/json"})
    return api.client.request(method, PREFIX + path, json=body)
