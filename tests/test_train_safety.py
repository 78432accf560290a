"""The base model ends bit-identical (every parameter and buffer, its requires_grad flag, its modules' hooks and
attributes) after success, an error in the middle, a stop, and a diverging loss, on every route."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lib_copylora.core.errors import OutputExists
from lib_copylora.train.callbacks import Callbacks, TrainControl
from lib_copylora.train.config import LoopConfig, NetworkConfig, OptimConfig, OutputConfig, RouteConfig, TrainConfig
from lib_copylora.train.errors import TrainingDiverged
from lib_copylora.train.routes import train
from toy_host import ToyBatch, ToyHost, ToySource, base_fingerprint, module_state

ROUTES = ["single", "copier", "difference"]


class Boom(RuntimeError):
    pass


def _config(out_dir, route, steps=4, kind="locon") -> TrainConfig:
    return TrainConfig(network=NetworkConfig(kind=kind, rank=2, train_text_encoder=True),
                       optim=OptimConfig(learning_rate=0.05), loop=LoopConfig(max_steps=steps),
                       output=OutputConfig(output_dir=out_dir, output_name="safe"), route=RouteConfig(route=route))


def _host():
    host = ToyHost(seed=5)
    host.model.embedding.weight.requires_grad_(False)  # a mixed set of flags must come back as it was
    return host


def _sources():
    g = torch.Generator().manual_seed(0)
    return (ToySource(torch.randn(4, 4, 4, 4, generator=g), 2, ["red shirt"] * 4),
            ToySource(torch.randn(4, 4, 4, 4, generator=g), 2, ["blue shirt"] * 4))


def _check_restored(host, before, modules_before):
    assert base_fingerprint(host) == before
    assert module_state(host) == modules_before


@pytest.mark.parametrize("route", ROUTES)
def test_success_leaves_the_base_bit_identical(tmp_path, route):
    host = _host()
    before, modules_before = base_fingerprint(host), module_state(host)
    seen = []

    def on_step(step, loss, lr):  # while training: the base is frozen and gathers no gradients
        seen.append(all(not t.requires_grad and t.grad is None for _, t in host.base_tensors()))

    config = dataclasses.replace(_config(tmp_path, route), loop=LoopConfig(max_steps=4, gradient_checkpointing=True))
    checkpointing = []
    callbacks = Callbacks(on_step=on_step, on_phase=lambda *a: checkpointing.append(host.checkpointing))
    result = train(host, config, *_sources(), callbacks=callbacks)
    assert result.path.is_file() and seen and all(seen)
    assert checkpointing and all(checkpointing) and not host.checkpointing  # on while training, off afterwards
    _check_restored(host, before, modules_before)


@pytest.mark.parametrize("route, phase", [("single", "single"), ("copier", "B"), ("difference", "B")])
def test_an_error_in_the_middle_leaves_the_base_bit_identical(tmp_path, route, phase):
    host = _host()
    before, modules_before = base_fingerprint(host), module_state(host)
    current = {}

    def on_step(step, loss, lr):
        if current["phase"] == phase and step == 2:
            raise Boom("callback failed")

    callbacks = Callbacks(on_step=on_step, on_phase=lambda name, total: current.update(phase=name))
    with pytest.raises(Boom):
        train(host, _config(tmp_path, route), *_sources(), callbacks=callbacks)
    _check_restored(host, before, modules_before)
    assert not (tmp_path / "safe.safetensors").exists()


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("how", ["flag", "host"])
def test_a_stop_leaves_the_base_bit_identical(tmp_path, route, how):
    host = _host()
    before, modules_before = base_fingerprint(host), module_state(host)
    control = TrainControl()

    def on_step(step, loss, lr):
        if step == 2:
            if how == "flag":
                control.stop()
            else:
                host.stop_requested = True  # the WebUI's Interrupt button

    result = train(host, _config(tmp_path, route), *_sources(), callbacks=Callbacks(on_step=on_step),
                   control=control)
    assert result.stopped and result.lora is None and result.written == []  # a plain stop saves nothing
    assert list(result.phases.values())[-1].steps == 2
    _check_restored(host, before, modules_before)


class _PoisonedSource(ToySource):
    """Batch number `bad` (1-based, across epochs) has an infinite latent."""

    def __init__(self, latents, bad: int):
        super().__init__(latents, 1)
        self.bad = bad

    def batches(self, host, epoch, start=0):
        for i, batch in enumerate(super().batches(host, epoch, start), start=epoch * self.batches_per_epoch() + start):
            if i + 1 == self.bad:
                batch = ToyBatch(torch.full_like(batch.latents, float("inf")), batch.captions, batch.loss_weights)
            yield batch


@pytest.mark.parametrize("route", ROUTES)
def test_a_nan_loss_stops_with_a_message_naming_the_step(tmp_path, route):
    host = _host()
    before, modules_before = base_fingerprint(host), module_state(host)
    good = ToySource(torch.randn(2, 4, 4, 4), 1)
    poisoned = _PoisonedSource(torch.randn(2, 4, 4, 4), bad=3)
    data = (poisoned,) if route == "single" else (good, poisoned)
    phase = "single" if route == "single" else "B"
    with pytest.raises(TrainingDiverged, match=rf"^{phase}: the loss became (nan|inf) at step 3;"):
        train(host, _config(tmp_path, route, steps=5), *data)
    _check_restored(host, before, modules_before)


def test_an_existing_output_is_refused_before_training(tmp_path):
    host = _host()
    before = base_fingerprint(host)
    (tmp_path / "safe.safetensors").write_bytes(b"keep me")
    steps = []
    with pytest.raises(OutputExists):
        train(host, _config(tmp_path, "single"), _sources()[0], callbacks=Callbacks(on_step=lambda *a: steps.append(a)))
    assert steps == [] and (tmp_path / "safe.safetensors").read_bytes() == b"keep me"
    assert base_fingerprint(host) == before
