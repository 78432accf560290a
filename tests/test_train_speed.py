"""SpeedConfig: every option trains what the plain path trains. The fused low-rank forward gives bit-identical files
and ΔW to lycoris' own; losses read in bursts equal losses read every step; the optimiser's fused form and the
caption cache keep training right; bad values are refused with one line."""

from __future__ import annotations

import pytest
import torch
from lycoris.modules.locon import LoConModule
from lycoris.modules.loha import LohaModule

from lib_copylora.core.formats import read_lora
from lib_copylora.train.callbacks import Callbacks
from lib_copylora.train.config import (LoopConfig, NetworkConfig, OptimConfig, OutputConfig, RouteConfig,
                                       SpeedConfig, TrainConfig)
from lib_copylora.train.errors import TrainConfigError, TrainingDiverged
from lib_copylora.train.lowrank import fusable, lowrank_hook
from lib_copylora.train.routes import train
from toy_host import ToyHost, ToySource

LOWRANK_KINDS = [dict(kind="lora"), dict(kind="locon"), dict(kind="locon", use_tucker=True)]


def _config(out_dir, speed: SpeedConfig, network=None, route="single", lr=0.01, steps=6, name="s") -> TrainConfig:
    return TrainConfig(
        network=network or NetworkConfig(kind="locon", rank=2, alpha=1, conv_rank=3, train_text_encoder=True),
        optim=OptimConfig(learning_rate=lr), loop=LoopConfig(max_steps=steps, seed=5),
        output=OutputConfig(output_dir=out_dir, output_name=name, save_precision="fp32"),
        route=RouteConfig(route=route), speed=speed)


def _sources(captions=("red shirt", "blue shirt", "a photo", "text")):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 4, 4, 4, generator=g), torch.randn(4, 4, 4, 4, generator=g)
    return ToySource(a, 2, list(captions), seed=1), ToySource(b, 2, list(captions), seed=2)


def _run(config, host=None, captions=("red shirt", "blue shirt", "a photo", "text")):
    losses = []
    result = train(host or ToyHost(seed=3), config, *_sources(captions),
                   callbacks=Callbacks(on_step=lambda step, loss, lr: losses.append((step, loss))))
    return result, losses


def _tensors(lora):
    return {f"{name}.{k}": v for name, layer in lora.layers.items()
            for k, v in vars(layer).items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("options", LOWRANK_KINDS, ids=lambda o: "-".join(str(v) for v in o.values()))
@pytest.mark.parametrize("route", ["single", "copier"])
def test_fused_lowrank_saves_the_same_file_as_lycoris(tmp_path, options, route):
    network = NetworkConfig(rank=2, alpha=1, conv_rank=3, conv_alpha=2, train_text_encoder=True, **options)
    fused, fused_losses = _run(_config(tmp_path / "f", SpeedConfig(), network, route))
    plain, plain_losses = _run(_config(tmp_path / "l", SpeedConfig(fused_lowrank=False), network, route))
    assert fused_losses == plain_losses
    want, got = _tensors(read_lora(plain.path)), _tensors(read_lora(fused.path))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    for name, layer in read_lora(plain.path).layers.items():
        assert torch.equal(layer.delta(), read_lora(fused.path).layers[name].delta()), name


def _module(kind: str, **kwargs):
    torch.manual_seed(0)
    if kind == "linear":
        target = torch.nn.Linear(6, 5)
    else:
        target = torch.nn.Conv2d(4, 5, 3, padding=1, stride=2 if kind == "strided" else 1)
    module = LoConModule("m", target, lora_dim=2, alpha=1.0, **kwargs)
    torch.nn.init.normal_(module.lora_up.weight)  # lycoris starts up at zero: make ΔW visible
    return target, module


@pytest.mark.parametrize("kind, kwargs", [("linear", {}), ("conv", {}), ("strided", {}),
                                          ("conv", {"use_tucker": True}), ("strided", {"use_tucker": True})])
@pytest.mark.parametrize("multiplier", [1.0, 0.5, 0.0])
def test_the_fused_hook_adds_what_lycoris_adds(kind, kwargs, multiplier):
    target, module = _module(kind, **kwargs)
    x = torch.randn(2, 6) if kind == "linear" else torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        out = target(x)
        want = out if multiplier == 0.0 else out + module.bypass_forward_diff(x, scale=multiplier)
        got = lowrank_hook(module, lambda: multiplier)(target, (x,), out)
        assert torch.equal(got, want)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 factors meet a bf16 activation
            half = x.to(torch.bfloat16)
            out = target(half)
            assert torch.equal(lowrank_hook(module, lambda: multiplier)(target, (half,), out),
                               out if multiplier == 0.0 else out + module.bypass_forward_diff(half, scale=multiplier))


def test_modules_with_more_than_the_low_rank_chain_keep_lycoris_forward():
    target = torch.nn.Linear(6, 5)
    assert fusable(LoConModule("m", target, lora_dim=2))
    others = [LoConModule("m", target, lora_dim=2, weight_decompose=True), LoConModule("m", target, lora_dim=2,
              dropout=0.1), LoConModule("m", target, lora_dim=2, rank_dropout=0.1),
              LoConModule("m", target, lora_dim=2, use_scalar=True), LohaModule("m", target, lora_dim=2)]
    for module in others:
        assert not fusable(module)
    with pytest.raises(ValueError, match="lycoris' own forward"):
        lowrank_hook(others[0], lambda: 1.0)


def test_losses_read_in_bursts_equal_losses_read_every_step(tmp_path):
    every, every_losses = _run(_config(tmp_path / "a", SpeedConfig(read_loss_every=1), steps=7))
    burst, burst_losses = _run(_config(tmp_path / "b", SpeedConfig(read_loss_every=3), steps=7))
    assert burst_losses == every_losses and [s for s, _ in burst_losses] == list(range(1, 8))
    assert burst.phases["single"].losses == every.phases["single"].losses
    want, got = _tensors(read_lora(every.path)), _tensors(read_lora(burst.path))
    assert all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("every", [1, 4])
def test_a_diverged_loss_is_caught_however_often_it_is_read(tmp_path, every):
    latents = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    latents[2] = float("inf")  # every epoch meets the batch holding it (learning rates are capped, so poison the data)
    with pytest.raises(TrainingDiverged, match="the loss became"):
        train(ToyHost(seed=3), _config(tmp_path, SpeedConfig(read_loss_every=every), steps=8),
              ToySource(latents, 2, ["red shirt", "blue shirt", "a photo", "text"], seed=1))
    assert not (tmp_path / "s.safetensors").exists()


def test_fused_adamw_trains_as_the_per_tensor_one(tmp_path):
    fused, fused_losses = _run(_config(tmp_path / "f", SpeedConfig(fused_optimizer=True)))
    slow, slow_losses = _run(_config(tmp_path / "s", SpeedConfig(fused_optimizer=False)))
    assert [s for s, _ in fused_losses] == [s for s, _ in slow_losses]
    assert torch.allclose(torch.tensor([v for _, v in fused_losses]), torch.tensor([v for _, v in slow_losses]),
                          rtol=1e-4)
    want, got = _tensors(read_lora(slow.path)), _tensors(read_lora(fused.path))
    assert all(torch.allclose(want[k], got[k], atol=1e-6) for k in want)


class CountingHost(ToyHost):
    def __init__(self):
        super().__init__(seed=3)
        self.encoded = 0

    def encode_prompts(self, prompts, clip_skip=1):
        self.encoded += 1
        return super().encode_prompts(prompts, clip_skip)


@pytest.mark.parametrize("cache", [True, False])
def test_the_caption_cache_encodes_each_batch_of_captions_once(tmp_path, cache):
    network = NetworkConfig(kind="lora", rank=2)  # text encoder frozen
    host = CountingHost()
    speed = SpeedConfig(cache_text_encoder=cache)
    cached, losses = _run(_config(tmp_path, speed, network, steps=6), host, captions=("",) * 4)
    assert host.encoded == (1 if cache else 6)  # the copier's caption-less sets: one batch of captions
    speed = SpeedConfig(cache_text_encoder=not cache)
    other, other_losses = _run(_config(tmp_path / "o", speed, network, steps=6), captions=("",) * 4)
    assert losses == other_losses


@pytest.mark.parametrize("values, message", [
    (dict(read_loss_every=0), "read_loss_every must be > 0, not 0"),
    (dict(compile="fast"), "compile 'fast' is not one of: off, blocks, graphs, unet, unet-graphs"),
])
def test_bad_speed_settings_are_refused_with_one_line(values, message):
    with pytest.raises(TrainConfigError) as caught:
        SpeedConfig(**values)
    assert str(caught.value) == message


def test_speed_is_not_part_of_the_resume_fingerprint(tmp_path):
    """A state saved with one set of speed options resumes with another (they change how fast, not what)."""
    from lib_copylora.train.metadata import training_recipe

    a = _config(tmp_path, SpeedConfig())
    b = _config(tmp_path, SpeedConfig(fused_lowrank=False, compile="blocks", read_loss_every=5))
    assert training_recipe(a, {"single": 1}) == training_recipe(b, {"single": 1})


def test_the_cli_turns_speed_flags_into_the_speed_config(tmp_path, capsys):
    from lib_copylora.cli import build_parser, main
    from lib_copylora.commands.train import build_train_config

    args = build_parser().parse_args(["train", "--model", "m", "--data", str(tmp_path), "--no-fused_lowrank",
                                      "--compile", "blocks", "--read_loss_every", "5"])
    speed = build_train_config(args, tmp_path).speed
    assert speed == SpeedConfig(fused_lowrank=False, compile="blocks", read_loss_every=5)
    assert main(["train", "--model", "m", "--data", str(tmp_path), "--read_loss_every", "0"]) == 2
    assert "read_loss_every must be > 0, not 0" in capsys.readouterr().err
