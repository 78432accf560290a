"""Which device a command runs on: a name torch does not know, a backend or device number this machine lacks, and
the GPU each of several launched processes takes (its local rank)."""

from __future__ import annotations

import pytest
import torch

from lib_copylora.commands.train import process_device
from lib_copylora.core.devices import device_problem, parse_device
from lib_copylora.train.errors import TrainConfigError


@pytest.mark.parametrize("text", ["bogus", "cuda:-1", "cuda:x", "", "cuda:0 ", "tpu"])
def test_a_name_torch_does_not_know_is_no_device(text):
    assert parse_device(text) is None


def test_devices_this_machine_lacks_have_a_problem():
    assert device_problem(torch.device("cpu")) is None
    assert "cuda" in device_problem(torch.device("cuda", 99))  # no machine has 100 GPUs
    assert "no meta device" in device_problem(torch.device("meta"))
    if not torch.cuda.is_available():
        assert device_problem(torch.device("cuda")) == "this machine's torch has no cuda device"


@pytest.fixture()
def launched(monkeypatch):
    """As accelerate and torchrun start the second of two processes."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    return monkeypatch


@pytest.mark.parametrize("asked", [None, "cuda"])
def test_each_launched_process_takes_the_gpu_of_its_local_rank(launched, asked):
    assert process_device(asked, cuda_available=True) == torch.device("cuda", 1)


def test_launched_processes_without_gpus_stay_on_the_cpu(launched):
    assert process_device(None, cuda_available=False) == torch.device("cpu")
    assert process_device("cpu", cuda_available=True) == torch.device("cpu")


def test_one_gpu_named_for_several_processes_is_refused(launched):
    with pytest.raises(TrainConfigError, match="would put all 2 processes on one GPU"):
        process_device("cuda:0", cuda_available=True)
    launched.setenv("LOCAL_RANK", "one")
    with pytest.raises(TrainConfigError, match="LOCAL_RANK='one'"):
        process_device(None, cuda_available=True)


def test_a_single_process_keeps_the_device_it_names(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_device("cuda:0", cuda_available=True) == torch.device("cuda", 0)
    assert process_device(None, cuda_available=True) == torch.device("cuda")
    with pytest.raises(TrainConfigError, match="'bogus' is not a device torch knows"):
        process_device("bogus", cuda_available=True)
