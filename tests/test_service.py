"""The service the tab and the API share, on a fake host: merges hold the host's exclusive section and refresh its
Lora list, Stop means one thing for both faces, the LoRA menus follow the host's list. No WebUI."""

from contextlib import contextmanager
from pathlib import Path

import pytest
from safetensors.torch import save_file

from lib_copylora.core.base_weights import open_checkpoint_base
from lib_copylora.core.errors import CopyLoraError
from lib_copylora.service.jobs import JobState
from lib_copylora.service.merge_run import MergeRequest
from lib_copylora.service.service import MERGE_JOB, CopyLoraService
from lib_copylora.service.train_request import Folders, request_from_dict

from lora_factory import base_checkpoint, family_metadata, lora_state_dict
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

    def base_weights(self):
        self.events.append("base")
        return open_checkpoint_base(self.root / "base.safetensors")


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


def test_a_merge_asks_the_host_for_its_base_inside_the_exclusive_section_only_when_an_input_needs_it(host):
    from lib_copylora.core.formats import read_lora

    save_file(base_checkpoint(Family.SD1), str(host.root / "base.safetensors"))
    save_file(lora_state_dict("dora", seed=3), str(host.root / "loras" / "d.safetensors"), family_metadata(Family.SD1))
    service = CopyLoraService(host)
    service.merge(MergeRequest(models=("a",), ratios=(1.0,), output="plain"))
    assert "base" not in host.events
    host.events.clear()
    result = service.merge(MergeRequest(models=("d", "a"), ratios=(1.0, -1.0), output="based"))
    assert host.events == [f"begin {MERGE_JOB}", "base", f"end {MERGE_JOB}", "refresh"]
    assert read_lora(result.path).metadata["copylora"].count("base.safetensors") == 1


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


def test_stopping_a_finished_run_leaves_the_rest_of_its_submission(host):
    (host.root / "datasets" / "a" / "1_a").mkdir(parents=True)
    service = CopyLoraService(host)
    first, second = service.submit(sweep("f", "1,2"))
    host.runner_.finish("f-seed1")
    wait_for(lambda: service.jobs.status(first).state is JobState.DONE)
    assert service.stop(first).state is JobState.DONE
    assert service.jobs.status(second).state in (JobState.QUEUED, JobState.RUNNING)
    host.runner_.finish("f-seed2")
    wait_for(lambda: service.jobs.status(second).state is JobState.DONE)
    service.shutdown()


def test_presets_live_in_the_hosts_file(host):
    service = CopyLoraService(host)
    values = [1.0] * 17
    assert service.save_preset("MINE", values)["MINE"] == tuple(values)
    assert "MINE:" in (host.root / "presets.txt").read_text()
    assert "MINE" not in service.delete_preset("MINE")


def test_an_unload_stops_and_saves_the_running_run_and_says_so(host, caplog):
    (host.root / "datasets" / "a" / "1_a").mkdir(parents=True)
    service = CopyLoraService(host)
    ids = service.submit(sweep("u", "1,2"))
    wait_for(lambda: host.runner_.order == ["u-seed1"])
    with caplog.at_level("WARNING", logger="copylora"):
        service.shutdown()
    first, second = (service.jobs.status(i) for i in ids)
    assert first.state is JobState.STOPPED and "save=True" in first.log
    assert second.state is JobState.CANCELLED and host.runner_.order == ["u-seed1"]
    assert any("stopping training run u-seed1 and saving" in r.message for r in caplog.records)
    assert any("1 queued training run(s) cancelled" in r.message for r in caplog.records)


def test_merge_request_fields_come_from_merge_spec():
    """Every MergeSpec setting a request can carry has MergeSpec's own name, type, default and help there."""
    import dataclasses

    from lib_copylora.core.merge import MergeSpec
    from lib_copylora.service.merge_run import NOT_FROM_SPEC

    spec_fields = {f.name: f for f in dataclasses.fields(MergeSpec)}
    request_fields = {f.name: f for f in dataclasses.fields(MergeRequest)}
    spec_hints, request_hints = MergeSpec.__annotations__, MergeRequest.__annotations__  # as written
    for name, spec_field in spec_fields.items():
        if name in NOT_FROM_SPEC:
            continue
        assert name in request_fields, name
        assert request_fields[name].default == spec_field.default, name
        assert request_fields[name].metadata["help"] == spec_field.metadata["help"], name
        assert request_hints[name] == spec_hints[name], name
    spec = MergeRequest(models=("a", "b"), ratios=(1, -1), output="o", new_rank=4, energy=0.9).spec("o")
    assert (spec.ratios, spec.new_rank, spec.energy, spec.output_name) == ((1.0, -1.0), 4, 0.9, "o")


def test_one_save_precision_table_for_the_cli_and_the_tab():
    import torch

    from lib_copylora.service.merge_options import save_dtype

    assert [save_dtype(n) for n in ("fp16", "bf16", "fp32", "float")] == \
        [torch.float16, torch.bfloat16, torch.float32, torch.float32]
