"""Stop at step k with stop-and-save, resume: the losses and the LoRA equal an uninterrupted run's, exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lib_copylora.core.formats import read_lora
from lib_copylora.train.callbacks import Callbacks, TrainControl
from lib_copylora.train.config import (LoopConfig, LossConfig, NetworkConfig, OptimConfig, OutputConfig, RouteConfig,
                                       TrainConfig)
from lib_copylora.train.errors import TrainingError
from lib_copylora.train.routes import train
from toy_host import ToyHost, ToySource

STEPS = 8


def _config(out_dir, route="single", resume=False, lr=0.01) -> TrainConfig:
    return TrainConfig(
        network=NetworkConfig(kind="locon", rank=2, alpha=1, train_text_encoder=True),
        optim=OptimConfig(learning_rate=lr, scheduler="cosine", warmup_steps=2),
        loop=LoopConfig(max_steps=STEPS, gradient_accumulation_steps=2, seed=7),
        loss=LossConfig(noise_offset=0.05, min_snr_gamma=5.0),
        output=OutputConfig(output_dir=out_dir, output_name="r", save_state=route != "single", resume=resume,
                            save_precision="fp32"),
        route=RouteConfig(route=route))


def _sources():
    g = torch.Generator().manual_seed(0)
    # 6 images in batches of 2 with 2 batches per step: each epoch ends with a one-batch step; the stop is mid-epoch
    latents_a, latents_b = torch.randn(6, 4, 4, 4, generator=g), torch.randn(6, 4, 4, 4, generator=g)
    captions = ["red shirt", "blue shirt", "a photo", "text", "mark", "stripe"]
    return ToySource(latents_a, 2, captions, seed=1), ToySource(latents_b, 2, captions, seed=2)


def _run(config, stop_at=None, stop_phase=None):
    losses, control, phase = [], TrainControl(), {"name": None}

    def on_step(step, loss, lr):
        losses.append((phase["name"], step, loss))
        if step == stop_at and phase["name"] == stop_phase:
            control.stop(save=True)

    callbacks = Callbacks(on_step=on_step, on_phase=lambda name, total: phase.update(name=name))
    result = train(ToyHost(seed=3), config, *_sources(), callbacks=callbacks, control=control)
    return result, losses


def _tensors(lora):
    return {f"{name}.{k}": v for name, layer in lora.layers.items()
            for k, v in vars(layer).items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("route, stop_phase", [("single", "single"), ("copier", "B")])
def test_a_resumed_run_matches_an_uninterrupted_one(tmp_path, route, stop_phase):
    full, full_losses = _run(_config(tmp_path / "full", route))

    stopped, first_losses = _run(_config(tmp_path / "cut", route), stop_at=3, stop_phase=stop_phase)
    assert stopped.stopped and stopped.lora is None
    assert [p.name for p in stopped.written] == ["r-step00000003.safetensors"]  # the stop-and-save file
    state = tmp_path / "cut" / f"r.{stop_phase}.trainstate"
    assert state.is_file()

    resumed, later_losses = _run(_config(tmp_path / "cut", route, resume=True))
    assert not resumed.stopped
    assert first_losses + later_losses == full_losses
    assert later_losses[-1] == full_losses[-1]  # bit-equal floats, not approximately
    if route == "copier":  # phase A came from its finished state, not from training it again
        assert all(name == "B" for name, _, _ in later_losses)
    want, got = _tensors(read_lora(full.path)), _tensors(read_lora(resumed.path))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("route", ["copier", "difference"])
def test_a_stop_between_phases_keeps_the_finished_phase(tmp_path, route):
    """Stop-and-save asked once A has run to its end, before B's first step (as during A's last preview, or while
    B's latents are cached), without save_state: A's finished state is written, and resuming trains B alone, to
    the uninterrupted run's file."""
    def config(out, resume=False):
        base = _config(out, route, resume=resume)
        return dataclasses.replace(base, output=dataclasses.replace(base.output, save_state=False))

    full, full_losses = _run(config(tmp_path / "full"))
    control = TrainControl()
    callbacks = Callbacks(on_phase=lambda name, total: control.stop(save=True) if name == "B" else None)
    stopped = train(ToyHost(seed=3), config(tmp_path / "cut"), *_sources(), callbacks=callbacks, control=control)
    assert stopped.stopped and stopped.phases["A"].steps == STEPS and stopped.phases["B"].steps == 0
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["r.A.trainstate"]
    resumed, later_losses = _run(config(tmp_path / "cut", resume=True))
    assert not resumed.stopped and {name for name, _, _ in later_losses} == {"B"}
    assert later_losses == [loss for loss in full_losses if loss[0] == "B"]
    want, got = _tensors(read_lora(full.path)), _tensors(read_lora(resumed.path))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_a_state_from_other_settings_is_refused(tmp_path):
    _run(_config(tmp_path, "single"), stop_at=2, stop_phase="single")
    with pytest.raises(TrainingError, match="other training settings"):
        _run(dataclasses.replace(_config(tmp_path, "single", resume=True, lr=0.02)))


def test_weight_decay_spelt_out_resumes_a_run_that_left_it_unset(tmp_path):
    """AdamW's unset weight decay is 0.01: a resume that spells 0.01 out continues the run to the same file; a
    different value is other settings."""
    full, full_losses = _run(_config(tmp_path / "full"))
    _, first_losses = _run(_config(tmp_path / "cut"), stop_at=3, stop_phase="single")

    def with_decay(config, decay):
        return dataclasses.replace(config, optim=dataclasses.replace(config.optim, weight_decay=decay))

    with pytest.raises(TrainingError, match="other training settings"):
        _run(with_decay(_config(tmp_path / "cut", resume=True), 0.02))
    resumed, later_losses = _run(with_decay(_config(tmp_path / "cut", resume=True), 0.01))
    assert first_losses + later_losses == full_losses
    want, got = _tensors(read_lora(full.path)), _tensors(read_lora(resumed.path))
    assert all(torch.equal(want[k], got[k]) for k in want)
