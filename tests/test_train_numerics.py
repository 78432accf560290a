"""Training numerics against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lib_copylora.train.config import (LoopConfig, OptimConfig, OptimizerKind, OutputConfig, SchedulerKind,
                                       TrainConfig)
from lib_copylora.train.errors import OptimizerUnavailable, TrainConfigError
from lib_copylora.train.host import Prediction
from lib_copylora.train.numerics import (add_noise, diffusion_loss, min_snr_weights, sample_noise, sample_timesteps,
                                         snr, v_target)
from lib_copylora.train.optim import Lion, build_optimizer, lr_factor
from lib_copylora.train.sampling import ddim_step, ddim_timesteps

S = SchedulerKind


@pytest.mark.parametrize("kind, step, total, warmup, cycles, expected", [
    (S.CONSTANT, 0, 10, 0, 1, 1.0),
    (S.CONSTANT, 9, 10, 0, 1, 1.0),
    (S.CONSTANT_WITH_WARMUP, 0, 10, 4, 1, 0.0),
    (S.CONSTANT_WITH_WARMUP, 2, 10, 4, 1, 0.5),
    (S.CONSTANT_WITH_WARMUP, 7, 10, 4, 1, 1.0),
    (S.LINEAR, 0, 10, 0, 1, 1.0),
    (S.LINEAR, 5, 10, 0, 1, 0.5),
    (S.LINEAR, 1, 10, 2, 1, 0.5),
    (S.LINEAR, 6, 10, 2, 1, 0.5),  # 1 − (6−2)/(10−2)
    (S.COSINE, 5, 10, 0, 1, 0.5),
    (S.COSINE, 10, 10, 0, 1, 0.0),
    (S.COSINE, 2, 10, 2, 1, 1.0),
    (S.COSINE_WITH_RESTARTS, 4, 10, 0, 2, 0.5 * (1 + math.cos(0.8 * math.pi))),
    (S.COSINE_WITH_RESTARTS, 5, 10, 0, 2, 1.0),  # the restart
    (S.COSINE_WITH_RESTARTS, 10, 10, 0, 2, 0.0),
])
def test_schedules(kind, step, total, warmup, cycles, expected):
    assert lr_factor(kind, step, total, warmup, cycles) == pytest.approx(expected, abs=1e-12)


def test_the_loop_applies_the_schedule_to_every_step(tmp_path):
    from lib_copylora.train.callbacks import Callbacks
    from lib_copylora.train.routes import train_single
    from toy_host import ToyHost, ToySource

    config = TrainConfig(optim=OptimConfig(learning_rate=0.1, scheduler="linear", warmup_steps=2),
                         loop=LoopConfig(max_steps=6), output=OutputConfig(output_dir=tmp_path, output_name="s"))
    rates = []
    train_single(ToyHost(), config, ToySource(torch.randn(2, 4, 4, 4), 2), Callbacks(on_step=lambda s, l, lr:
                                                                                          rates.append(lr)))
    expected = [0.1 * lr_factor(S.LINEAR, s, 6, 2) for s in range(6)]
    assert rates == pytest.approx(expected) and rates[0] == 0.0 and rates[2] == pytest.approx(0.1)


def test_warmup_with_the_plain_constant_schedule_is_refused():
    with pytest.raises(TrainConfigError, match="warm-up"):
        OptimConfig(warmup_steps=10)
    with pytest.raises(TrainConfigError, match="scheduler 'cosin'"):
        OptimConfig(scheduler="cosin")


def test_min_snr_weights_for_eps_and_v():
    abar = torch.tensor([0.8, 0.9, 0.5])  # SNR 4, 9, 1
    t = torch.arange(3)
    assert snr(t, abar) == pytest.approx(torch.tensor([4.0, 9.0, 1.0]))
    eps = min_snr_weights(t, abar, 5.0, Prediction.EPSILON)
    v = min_snr_weights(t, abar, 5.0, Prediction.V)
    assert eps.tolist() == pytest.approx([1.0, 5 / 9, 1.0])
    assert v.tolist() == pytest.approx([4 / 5, 5 / 10, 1 / 2])


def test_noising_and_v_target_by_hand():
    abar = torch.tensor([0.64])  # √ᾱ = 0.8, √(1−ᾱ) = 0.6
    t = torch.zeros(1, dtype=torch.long)
    x0, eps = torch.full((1, 1, 1, 1), 1.0), torch.full((1, 1, 1, 1), 2.0)
    assert add_noise(x0, eps, t, abar).item() == pytest.approx(0.8 * 1 + 0.6 * 2)
    assert v_target(x0, eps, t, abar).item() == pytest.approx(0.8 * 2 - 0.6 * 1)


def test_v_and_eps_give_back_x0_through_a_ddim_step():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    abar = torch.tensor([0.3, 0.3])
    t = torch.tensor([0, 1])
    x_t = add_noise(x0, eps, t, abar)
    # a step to ᾱ_prev = 1 lands on the x_0 the model output implies
    assert torch.allclose(ddim_step(x_t, eps, 0.3, 1.0, Prediction.EPSILON), x0, atol=1e-5)
    assert torch.allclose(ddim_step(x_t, v_target(x0, eps, t, abar), 0.3, 1.0, Prediction.V), x0, atol=1e-5)
    assert ddim_timesteps(100, 4) == [99, 66, 33, 0]


def test_loss_weights_per_sample():
    prediction = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 2.0)])  # per-sample MSE 1 and 4
    assert diffusion_loss(prediction, target).item() == pytest.approx(2.5)
    assert diffusion_loss(prediction, target, torch.tensor([1.0, 0.5])).item() == pytest.approx(1.5)


def test_noise_offset_is_a_constant_per_sample_and_channel():
    latents = torch.zeros(64, 3, 4, 4)
    plain = sample_noise(latents, torch.Generator().manual_seed(3))
    offset = sample_noise(latents, torch.Generator().manual_seed(3), offset=0.1)
    shift = offset - plain
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
    assert 0.07 < float(shift[:, :, 0, 0].std()) < 0.13


def test_timesteps_cover_the_schedule_and_follow_the_generator():
    a = sample_timesteps(4000, 10, torch.Generator().manual_seed(1), "cpu")
    b = sample_timesteps(4000, 10, torch.Generator().manual_seed(1), "cpu")
    assert torch.equal(a, b) and set(a.tolist()) == set(range(10))


def test_lion_step_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    p.grad = torch.tensor([0.5, -0.25])
    opt.step()
    # decay first (×(1 − 0.1·0.5)), then −lr·sign(0.1·g)
    assert p.detach().tolist() == pytest.approx([0.95 - 0.1, -0.95 + 0.1])
    assert opt.state[p]["exp_avg"].tolist() == pytest.approx([0.005, -0.0025])


def test_missing_optimizer_packages_say_what_to_do():
    param = [torch.nn.Parameter(torch.zeros(1))]
    for kind, package in ((OptimizerKind.ADAMW_8BIT, "bitsandbytes"), (OptimizerKind.PRODIGY, "prodigyopt")):
        try:
            __import__(package)
        except ImportError:
            with pytest.raises(OptimizerUnavailable, match=f"pip install {package}"):
                build_optimizer([{"params": param, "lr": 1.0}], OptimConfig(optimizer=kind))
    lion = build_optimizer([{"params": param}], OptimConfig(optimizer="lion"))
    assert type(lion).__name__ == "Lion" and lion.param_groups[0]["betas"] == (0.9, 0.99)  # Lion's own default


@pytest.mark.parametrize("kind, unset, given", [("adamw", 0.01, 0.0), ("lion", 0.0, 0.3), ("adamw", 0.01, 0.25)])
def test_weight_decay_unset_is_the_optimisers_own_default(kind, unset, given):
    param = [torch.nn.Parameter(torch.zeros(1))]
    assert build_optimizer([{"params": param}], OptimConfig(optimizer=kind)).param_groups[0]["weight_decay"] == unset
    chosen = build_optimizer([{"params": param}], OptimConfig(optimizer=kind, weight_decay=given))
    assert chosen.param_groups[0]["weight_decay"] == given
    assert OptimConfig(optimizer="prodigy").effective_weight_decay == 0.0
    assert OptimConfig(optimizer="adamw8bit").effective_weight_decay == 0.01
