"""Data-parallel training for the CLI when it runs under several processes (`accelerate launch`, `torchrun`).

Every process holds the whole model and the same LoRA (same seed, so the same initial weights), takes its own
share of each epoch's batches, and averages gradients with the others before each optimizer step, so all of them
take identical steps. Only the main process writes files. Stop requests are agreed on once per step, so every
process stops after the same step. accelerate is used only when it is installed and the run was launched with
more than one process; otherwise everything here is a plain pass-through.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..train.callbacks import TrainControl


def launched_world_size() -> int:
    """Processes the launcher started (torchrun-style environment), 1 when not launched."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


class DataParallel:
    """Rank, world size and the few collectives the trainer needs; a single process is rank 0 of 1."""

    def __init__(self, device: torch.device):
        self.rank, self.world_size = 0, 1
        self.device = device  # where collectives run: NCCL, accelerate's backend on GPUs, has no CPU tensors
        if launched_world_size() > 1:
            import importlib.util

            if importlib.util.find_spec("accelerate") is None:
                raise RuntimeError("several processes were launched but accelerate is not installed")
            from accelerate import PartialState

            state = PartialState(cpu=device.type == "cpu")
            self.rank, self.world_size = state.process_index, state.num_processes

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on any of them."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def close(self) -> None:
        """Wait for every process, then end the process group (torch warns when a program leaves it open)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def average_gradients(self, grads: list[torch.Tensor]) -> None:
        """Each gradient replaced by its mean over the processes (one flattened all-reduce), so that all of them
        take identical steps. The loop calls it (as `TrainControl.reduce_gradients`) before fp16 unscaling and
        clipping: an overflow on one process is then an overflow on all, and all skip that step alike."""
        import torch.distributed as dist

        if not grads:
            return
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


class ShardedSource:
    """A dataset's batches for one process: every process takes the same number per epoch."""

    def __init__(self, dataset: Any, parallel: DataParallel):
        self.dataset, self.parallel = dataset, parallel

    def batches_per_epoch(self) -> int:
        return self.dataset.batches_per_epoch(self.parallel.world_size)

    def batches(self, host: Any, epoch: int, start: int = 0):
        return self.dataset.batches(host, epoch, start, rank=self.parallel.rank,
                                    world_size=self.parallel.world_size)

    def summary(self):
        return self.dataset.summary()

    def one_batch_shape(self) -> bool:
        return self.dataset.one_batch_shape()  # a process takes whole batches of the dataset's plan


class CommandHost:
    """The host as the CLI hands it to the trainer: the same model, with Ctrl-C turned into a stop-and-save that
    all processes agree on at the same step."""

    def __init__(self, host: Any, control: TrainControl, parallel: DataParallel):
        self._host, self._control, self._parallel = host, control, parallel
        self._stop_asked = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    def request_stop(self) -> None:
        self._stop_asked = True

    def interrupted(self) -> bool:
        # Called once per step by every process (the loop asks after each optimizer step), so this collective is
        # matched; the stop becomes a save-and-stop on all of them at once.
        local = self._stop_asked or bool(self._host.interrupted())
        if self._parallel.any(local):
            self._control.stop(save=True)
            return True
        return False
