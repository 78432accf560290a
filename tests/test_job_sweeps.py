"""Requests from the tab/API: sweeps expand into runs, each becomes one TrainConfig; the job queue runs them one
after another and stops, cancels and fails them as asked. No WebUI: a recording runner stands in for it."""

import threading
import time
from pathlib import Path

import pytest
import torch

from lib_copylora.core.errors import CopyLoraError
from lib_copylora.train.config import NetworkKind, Precision, Route
from lib_copylora.train.errors import TrainConfigError
from lib_copylora.service.jobs import JobQueue, JobState, UnknownJob
from lib_copylora.service.safe_paths import UnsafePath
from lib_copylora.service.train_request import (Folders, expand_sweeps, request_from_dict, split_list,
                                              to_train_config)


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    for name in ("datasets/a/1_a", "datasets/b/1_b", "outputs", "loras/sub"):
        (tmp_path / name).mkdir(parents=True)
    return Folders(tmp_path / "datasets", tmp_path / "outputs", tmp_path / "loras")


def test_split_list():
    assert split_list("1e-4, 5e-5") == ["1e-4", "5e-5"]
    assert split_list("8") == ["8"] and split_list(8) == [8] and split_list([4, 8]) == [4, 8]
    with pytest.raises(TrainConfigError, match="empty item"):
        split_list("4,,8")


def test_sweeps_expand_to_every_combination_with_named_runs():
    request = request_from_dict({"name": "shirt", "dataset_a": "a", "network": {"rank": "4, 8", "alpha": 1},
                                 "optim": {"learning_rate": "1e-4,5e-5,1e-5"}, "dataset": {"resolution": "64,96"}})
    runs = expand_sweeps(request)
    assert len(runs) == 6
    assert [r.name for r in runs[:3]] == ["shirt-r4-lr1e-4", "shirt-r4-lr5e-5", "shirt-r4-lr1e-5"]
    assert {(r.network["rank"], r.optim["learning_rate"]) for r in runs} == \
        {(rank, lr) for rank in ("4", "8") for lr in ("1e-4", "5e-5", "1e-5")}
    assert all(r.dataset["resolution"] == "64,96" for r in runs)  # a W,H resolution is not a sweep


def test_no_sweep_keeps_the_request():
    request = request_from_dict({"name": "x", "dataset_a": "a", "network": {"rank": 4}})
    assert expand_sweeps(request) == [request]


def test_request_becomes_one_config_with_values_coerced(folders):
    request = request_from_dict({
        "name": "diff", "dataset_a": "a", "dataset_b": "b", "route": "difference", "new_rank": 4,
        "network": {"kind": "locon", "rank": "8", "alpha": "0.5"}, "optim": {"learning_rate": "2e-4"},
        "loop": {"max_steps": "3", "gradient_checkpointing": "true"}, "sample": {"prompts": ["a shirt"]},
        "dataset": {"resolution": "64", "min_bucket_reso": 64}, "subfolder": "sub"})
    config = to_train_config(request, folders, torch.float32)
    assert config.network.kind is NetworkKind.LOCON and config.network.rank == 8 and config.network.alpha == 0.5
    assert config.optim.learning_rate == 2e-4 and config.loop.max_steps == 3 and config.loop.gradient_checkpointing
    assert config.route.route is Route.DIFFERENCE and config.route.new_rank == 4
    assert config.dataset_a.data_dir == (folders.datasets / "a").resolve()
    assert config.dataset_b.data_dir == (folders.datasets / "b").resolve()
    assert config.output.path() == (folders.loras / "sub" / "diff.safetensors").resolve()
    assert config.sample.prompts == ("a shirt",)


def test_the_data_order_follows_the_runs_seed_as_the_clis_does(folders):
    """One seed for a run, in the tab and API as in the CLI's --seed: a sweep over loop.seed varies the data order
    (flips, caption shuffles) too, and a WebUI recipe trains the same batches from the CLI; a dataset seed of the
    request's own is kept."""
    from lib_copylora.cli import build_parser
    from lib_copylora.commands.train import build_train_config

    base = {"name": "s", "dataset_a": "a", "dataset_b": "b", "route": "copier"}
    for run in expand_sweeps(request_from_dict({**base, "loop": {"seed": "1,5"}})):
        config = to_train_config(run, folders, torch.float32)
        cli = build_train_config(build_parser().parse_args(
            ["train", "--model", "m", "--route", "copier", "--data-a", str(folders.datasets / "a"), "--data-b",
             str(folders.datasets / "b"), "--seed", str(config.loop.seed)]))
        assert config.loop.seed in (1, 5)
        assert config.dataset_a.seed == config.dataset_b.seed == cli.dataset_a.seed == config.loop.seed
    own = to_train_config(request_from_dict({**base, "loop": {"seed": 5}, "dataset": {"seed": 9}}), folders,
                          torch.float32)
    assert own.loop.seed == 5 and own.dataset_a.seed == own.dataset_b.seed == 9


@pytest.mark.parametrize("dtype, expected", [(torch.float16, Precision.FP16), (torch.bfloat16, Precision.BF16),
                                             (torch.float32, Precision.FP32)])
def test_auto_precision_follows_the_model(folders, dtype, expected):
    request = request_from_dict({"name": "x", "dataset_a": "a"})
    assert to_train_config(request, folders, dtype).loop.precision is expected
    explicit = request_from_dict({"name": "x", "dataset_a": "a", "loop": {"precision": "bf16"}})
    assert to_train_config(explicit, folders, dtype).loop.precision is Precision.BF16


@pytest.mark.parametrize("values, error, match", [
    ({"dataset_a": "../outside"}, UnsafePath, r"\.\."),
    ({"dataset_a": "missing"}, UnsafePath, "does not exist"),
    ({"subfolder": "/abs"}, UnsafePath, "absolute"),
    ({"network": {"rank": "4,8"}}, TrainConfigError, "not a valid int"),  # a sweep left unexpanded
    ({"network": {"ranks": 4}}, TrainConfigError, r"network: unknown field ranks \(did you mean rank\?\)"),
    ({"output": {"output_dir": "/tmp"}}, TrainConfigError, "set by the server"),
    ({"route": "copier"}, TrainConfigError, "dataset_b"),
    ({"colour": "red"}, TrainConfigError, "request: unknown field colour;"),
])
def test_bad_requests_fail_with_a_reason(folders, values, error, match):
    with pytest.raises(error, match=match):
        to_train_config(request_from_dict({"name": "x", "dataset_a": "a", **values}), folders, torch.float32)


class RecordingRunner:
    """Runs a job by waiting for it to be released (or stopped); records order and overlap."""

    def __init__(self, fail_on=(), interrupt_on=()):
        self.order, self.active, self.max_active = [], 0, 0
        self.release = {}
        self.lock = threading.Lock()
        self.fail_on, self.interrupt_on = fail_on, interrupt_on

    def prepare(self, request):
        if request.name.endswith("bad"):
            raise TrainConfigError(f"{request.name} cannot run")
        return {"name": request.name}

    @staticmethod
    def claim(config):
        return frozenset({config["name"]})

    def run(self, job):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.order.append(job.request.name)
        try:
            job.set_phase("single", 3)
            job.set_step(1, 0.5)
            gate = self.release.setdefault(job.request.name, threading.Event())
            while not gate.wait(0.01):
                if job.control.stop_requested:
                    job.log(f"save={job.control.save_requested}")
                    return JobState.STOPPED
            if job.request.name in self.fail_on:
                raise RuntimeError("boom")
            if job.request.name in self.interrupt_on:
                return JobState.STOPPED  # as the WebUI's Interrupt: stopped without our stop()
            job.set_result(f"{job.request.name}.safetensors", f"<lora:{job.request.name}:1>")
            return JobState.DONE
        finally:
            with self.lock:
                self.active -= 1

    def finish(self, name):
        self.release.setdefault(name, threading.Event()).set()


def wait_for(predicate, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def sweep(name, values="1,2,3"):
    return request_from_dict({"name": name, "dataset_a": "a", "loop": {"seed": values}})


def test_queue_runs_sweep_runs_one_after_another():
    runner = RecordingRunner()
    jobs = JobQueue(runner)
    ids = jobs.submit(sweep("s"))
    assert [jobs.status(i).name for i in ids] == ["s-seed1", "s-seed2", "s-seed3"]
    for name in ("s-seed1", "s-seed2", "s-seed3"):
        wait_for(lambda: runner.order[-1:] == [name])
        assert jobs.status(ids[runner.order.index(name)]).state is JobState.RUNNING
        runner.finish(name)
    wait_for(lambda: all(jobs.status(i).state is JobState.DONE for i in ids))
    assert runner.max_active == 1
    status = jobs.status(ids[0])
    assert status.tag == "<lora:s-seed1:1>" and status.losses == [0.5] and status.total_steps == 3
    jobs.shutdown()


def test_stop_running_with_save_and_cancel_queued():
    runner = RecordingRunner()
    jobs = JobQueue(runner)
    first, second = jobs.submit(sweep("t", "1,2"))
    wait_for(lambda: runner.order == ["t-seed1"])
    assert jobs.stop(second).state is JobState.CANCELLED
    jobs.stop(first, save=True)
    wait_for(lambda: jobs.status(first).state is JobState.STOPPED)
    assert "save=True" in jobs.status(first).log
    time.sleep(0.05)
    assert runner.order == ["t-seed1"]  # the cancelled run never started
    jobs.shutdown()


def test_failure_is_reported_and_the_worker_goes_on():
    runner = RecordingRunner(fail_on=("f-seed1",))
    jobs = JobQueue(runner)
    first, second = jobs.submit(sweep("f", "1,2"))
    runner.finish("f-seed1")
    runner.finish("f-seed2")
    wait_for(lambda: jobs.status(second).state is JobState.DONE)
    assert jobs.status(first).state is JobState.FAILED
    assert jobs.status(first).error == "RuntimeError: boom"
    jobs.shutdown()


def test_interrupt_cancels_the_rest_of_the_submission_only():
    runner = RecordingRunner(interrupt_on=("i-seed1",))
    jobs = JobQueue(runner)
    ids = jobs.submit(sweep("i", "1,2"))
    other = jobs.submit(sweep("o", "5,6"))
    for name in ("i-seed1", "o-seed5", "o-seed6"):
        runner.finish(name)
    wait_for(lambda: all(jobs.status(i).state is JobState.DONE for i in other))
    assert [jobs.status(i).state for i in ids] == [JobState.STOPPED, JobState.CANCELLED]
    jobs.shutdown()


def test_a_bad_run_queues_nothing_and_unknown_ids_raise():
    runner = RecordingRunner()
    jobs = JobQueue(runner)
    with pytest.raises(TrainConfigError, match="cannot run"):
        jobs.submit(request_from_dict({"name": "x", "dataset_a": "a", "loop": {"seed": "1,bad"}}))
    assert jobs.list() == []
    with pytest.raises(UnknownJob):
        jobs.status("nope")
    assert issubclass(UnknownJob, CopyLoraError)
