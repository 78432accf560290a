"""The service the tab and the API share, on a fake host: merges hold the host's exclusive section and refresh its
Lora list, Stop means one thing for both faces, the LoRA menus follow the host's list. No WebUI."""

from contextlib import contextmanager
from pathlib import Path

import pytest
from safetensors.torch import save_file

from lib_copylora.core.errors import CopyLoraError
from lib_copylora.service.jobs import JobState
from lib_copylora.service.merge_run import MergeRequest
from lib_copylora.service.service import MERGE_JOB, CopyLoraService
from lib_copylora.service.train_request import Folders, request_from_dict

from lora_factory import family_metadata, lora_state_dict
from lib_copylora.core.family import Family
from test_job_sweeps import RecordingRunner, wait_for


class FakeHost:
    def __init__(self, root: Path, listed=None):
        self.root, self.listed = root, listed
        self.events: list[str] = []
        self.runner_ = RecordingRunner()

    def folders(self) -> Folders:
        folders = Folders(self.root / "datasets", self.root / "outputs", self.root / "loras")
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        return folders

    def runner(self):
        return self.runner_

    @contextmanager
    def exclusive(self, job):
        self.events.append(f"begin {job}")
        try:
            yield
        finally:
            self.events.append(f"end {job}")

    def listed_loras(self):
        return self.listed

    def refresh_loras(self):
        self.events.append("refresh")

    def model_hash(self):
        return {"sha256": "0" * 64, "checkpoint": None}

    def preset_file(self):
        return self.root / "presets.txt"


@pytest.fixture
def host(tmp_path):
    host = FakeHost(tmp_path)
    loras = host.folders().loras
    for name, seed in (("a", 1), ("sub/b", 2)):
        (loras / name).parent.mkdir(parents=True, exist_ok=True)
        save_file(lora_state_dict("lora", seed=seed), str(loras / f"{name}.safetensors"), family_metadata(Family.SD1))
    return host


def test_a_merge_holds_the_host_and_refreshes_its_list_after(host):
    service = CopyLoraService(host)
    result = service.merge(MergeRequest(models=("a", "sub/b"), ratios=(1.0, -1.0), output="diff"))
    assert result.name == "diff.safetensors" and (host.root / "loras" / "diff.safetensors").is_file()
    assert host.events == [f"begin {MERGE_JOB}", f"end {MERGE_JOB}", "refresh"]


def test_a_failed_merge_releases_the_host_and_refreshes_nothing(host):
    service = CopyLoraService(host)
    with pytest.raises(CopyLoraError, match="no LoRA file missing"):
        service.merge(MergeRequest(models=("a", "missing"), ratios=(1.0, 1.0), output="x"))
    assert host.events == [f"begin {MERGE_JOB}", f"end {MERGE_JOB}"]
    assert not (host.root / "loras" / "x.safetensors").exists()


def test_lora_names_follow_the_hosts_list_or_the_folder(host, tmp_path):
    service = CopyLoraService(host)
    assert service.lora_names() == ["a", "sub/b"]  # no host list: the folder itself
    loras = host.root / "loras"
    outside = tmp_path / "elsewhere.safetensors"
    host.listed = [loras / "sub/b.safetensors", loras / "old.ckpt", outside]
    assert service.lora_names() == ["sub/b"]
    assert service.refresh_loras() == ["sub/b"] and host.events == ["refresh"]


def sweep(name, seeds):
    return request_from_dict({"name": name, "dataset_a": "a", "loop": {"seed": seeds}})


def test_stop_stops_the_run_and_cancels_the_rest_of_its_submission_only(host):
    (host.root / "datasets" / "a" / "1_a").mkdir(parents=True)
    service = CopyLoraService(host)
    ids = service.submit(sweep("s", "1,2,3"))
    other = service.submit(sweep("o", "7"))
    wait_for(lambda: host.runner_.order == ["s-seed1"])
    status = service.stop(ids[0], save=True)
    assert status.id == ids[0]
    wait_for(lambda: service.jobs.status(ids[0]).state is JobState.STOPPED)
    assert [service.jobs.status(i).state for i in ids[1:]] == [JobState.CANCELLED, JobState.CANCELLED]
    assert "save=True" in service.jobs.status(ids[0]).log
    host.runner_.finish(service.jobs.status(other[0]).name)
    wait_for(lambda: service.jobs.status(other[0]).state is JobState.DONE)
    assert [s.id for s in service.results()] == other
    service.shutdown()


def test_presets_live_in_the_hosts_file(host):
    service = CopyLoraService(host)
    values = [1.0] * 17
    assert service.save_preset("MINE", values)["MINE"] == tuple(values)
    assert "MINE:" in (host.root / "presets.txt").read_text()
    assert "MINE" not in service.delete_preset("MINE")
