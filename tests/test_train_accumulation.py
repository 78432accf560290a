"""Gradient accumulation counts steps per epoch as kohya's scripts do: an epoch of n batches makes ceil(n / k) steps,
its last one over the batches left, and no step sums batches of two epochs."""

from __future__ import annotations

import pytest
import torch

from lib_copylora.core.formats import read_lora
from lib_copylora.train.callbacks import Callbacks, TrainControl
from lib_copylora.train.config import LoopConfig, NetworkConfig, OptimConfig, OutputConfig, SpeedConfig, TrainConfig
from lib_copylora.train.loop import steps_per_epoch, total_steps
from lib_copylora.train.routes import train
from toy_host import ToyHost, ToySource


@pytest.mark.parametrize("batches, accumulation, epochs, want", [
    (4, 1, 3, 12), (4, 3, 2, 4), (4, 8, 1, 1), (3, 2, 2, 4), (6, 3, 1, 2), (1, 5, 4, 4)])
def test_steps_of_a_run_by_epochs(batches, accumulation, epochs, want):
    config = TrainConfig(loop=LoopConfig(epochs=epochs, gradient_accumulation_steps=accumulation))
    assert total_steps(config, batches) == want
    assert steps_per_epoch(batches, accumulation) * epochs == want


def test_max_steps_is_the_count_when_given():
    config = TrainConfig(loop=LoopConfig(max_steps=5, epochs=9, gradient_accumulation_steps=3))
    assert total_steps(config, 4) == 5


class _Recorder(ToySource):
    """Remembers the epoch of every batch it hands out."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.handed: list[int] = []

    def batches(self, host, epoch, start=0):
        for batch in super().batches(host, epoch, start):
            self.handed.append(epoch)
            yield batch


def _config(out_dir, epochs=2, accumulation=3, resume=False, **output) -> TrainConfig:
    return TrainConfig(network=NetworkConfig(rank=2, alpha=1), optim=OptimConfig(learning_rate=0.01),
                       loop=LoopConfig(epochs=epochs, gradient_accumulation_steps=accumulation, seed=3),
                       speed=SpeedConfig(read_loss_every=1),
                       output=OutputConfig(output_dir=out_dir, output_name="acc", save_precision="fp32",
                                           resume=resume, **output))


def _source() -> _Recorder:
    return _Recorder(torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(0)), 2)  # 4 batches


def _train(config, source, stop_at=None):
    steps, handed_at_step, control = [], [], TrainControl()

    def on_step(step, loss, lr):
        steps.append((step, loss))
        handed_at_step.append(list(source.handed))
        if step == stop_at:
            control.stop(save=True)

    result = train(ToyHost(seed=2), config, source, callbacks=Callbacks(on_step=on_step), control=control)
    return result, steps, handed_at_step


def test_each_epoch_ends_with_a_step_over_its_last_batches(tmp_path):
    source = _source()
    result, steps, handed = _train(_config(tmp_path), source)
    assert [s for s, _ in steps] == [1, 2, 3, 4]
    # 4 batches an epoch, 3 per step: steps of 3 and 1 batches, epoch by epoch
    assert [len(h) for h in handed] == [3, 4, 7, 8]
    assert handed[1] == [0, 0, 0, 0] and handed[3] == [0, 0, 0, 0, 1, 1, 1, 1]
    meta = read_lora(result.path).metadata
    assert meta["ss_steps"] == "4" and meta["ss_epoch"] == "2"


def test_an_epoch_shorter_than_an_accumulation_saves_a_trained_epoch_file(tmp_path):
    result, steps, _ = _train(_config(tmp_path, epochs=2, accumulation=8, save_every_n_epochs=1), _source())
    assert [s for s, _ in steps] == [1, 2]
    epoch_file = read_lora(tmp_path / "acc-000001.safetensors")
    assert epoch_file.metadata["ss_steps"] == "1" and epoch_file.metadata["ss_epoch"] == "1"
    ups = [t for layer in epoch_file.layers.values() for k, t in vars(layer).items()
           if k == "up" and isinstance(t, torch.Tensor)]
    assert ups and any(bool(t.abs().sum() > 0) for t in ups)  # trained by its one step, not the zero init
    assert read_lora(result.path).metadata["ss_epoch"] == "2"


def test_a_stop_at_an_epochs_short_step_resumes_to_the_same_result(tmp_path):
    full, full_steps, _ = _train(_config(tmp_path / "full", save_state=True), _source())
    stopped, first, _ = _train(_config(tmp_path / "cut", save_state=True), _source(), stop_at=2)
    assert stopped.stopped and [s for s, _ in first] == [1, 2]
    resumed, later, handed = _train(_config(tmp_path / "cut", save_state=True, resume=True), _source())
    assert first + later == full_steps
    assert handed[-1] == [1, 1, 1, 1]  # the resumed run starts at epoch 1's first batch
    want, got = read_lora(full.path), read_lora(resumed.path)
    for name, layer in want.layers.items():
        for key, tensor in vars(layer).items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(tensor, getattr(got.layers[name], key)), (name, key)
