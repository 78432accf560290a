"""Each network kind attaches to the right modules, trains (the loss goes down on the toy), exports a LoraFile whose
ΔW is what the trained modules do, and survives a save and read back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lib_copylora.core.formats import read_lora, write_lora
from lib_copylora.train.callbacks import Callbacks, TrainControl
from lib_copylora.train.config import LoopConfig, NetworkConfig, OptimConfig, OutputConfig, TrainConfig
from lib_copylora.train.errors import TrainingError
from lib_copylora.train.host import Component
from lib_copylora.train.loop import PhaseJob, run_phase
from lib_copylora.train.network import LoraNetwork
from toy_host import ToyHost, ToySource

UNET = "lora_unet_down_blocks_0_"
CONV = UNET + "resnets_0_conv1"
TE = "lora_te_text_model_encoder_layers_0_mlp_fc1"

KINDS = [dict(kind="lora"), dict(kind="locon"), dict(kind="locon", use_tucker=True), dict(kind="loha"),
         dict(kind="loha", use_tucker=True), dict(kind="lokr"), dict(kind="lokr", lokr_factor=2)]


def _train(host, network_config, tmp_path, steps=40):
    config = TrainConfig(network=network_config, optim=OptimConfig(learning_rate=0.01),
                         loop=LoopConfig(max_steps=steps, seed=2),
                         output=OutputConfig(output_dir=tmp_path, output_name="net"))
    network = LoraNetwork(host.target_modules({Component.UNET, Component.TEXT_ENCODER}), network_config, seed=2)
    latents = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    job = PhaseJob("single", host, network, ToySource(latents, 4, ["red shirt"] * 4), config, Callbacks(),
                   TrainControl(), save_lora=lambda *a: None, state_file=tmp_path / "s", fingerprint="")
    return network, run_phase(job)


def _behaviour(network: LoraNetwork, name: str, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the hooked module adds to the output, what ΔW predicts) on a random input."""
    module = network.placements[name].target.module
    g = torch.Generator().manual_seed(0)
    if hasattr(module, "in_features"):
        x = torch.randn(5, module.in_features, generator=g)
        predicted = x @ delta.T
    else:
        x = torch.randn(2, module.in_channels, 5, 5, generator=g)
        predicted = F.conv2d(x, delta, padding=module.padding, stride=module.stride)
    with torch.no_grad():
        base = module(x)
        with network.attached():
            hooked = module(x)
    return hooked - base, predicted


@pytest.mark.parametrize("options", KINDS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_each_kind_trains_and_exports_its_own_delta(tmp_path, options):
    host = ToyHost(seed=4)
    config = NetworkConfig(rank=2, alpha=1, conv_rank=3, conv_alpha=2, train_text_encoder=True, **options)
    network, result = _train(host, config, tmp_path)

    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.9 * first, f"loss did not go down: {first:.4f} -> {last:.4f}"

    lora = network.export(host.family)
    expected = {UNET + "attentions_0_transformer_blocks_0_attn1_to_out_0", TE,
                UNET + "attentions_0_transformer_blocks_0_attn2_to_k", UNET + "attentions_0_proj_out"}
    assert set(lora.layers) == (expected if config.kind.value == "lora" else expected | {CONV})
    for name, layer in lora.layers.items():
        delta = layer.delta()
        assert delta.abs().max() > 0, f"{name} did not train"
        done, predicted = _behaviour(network, name, delta)
        assert torch.allclose(done, predicted, rtol=1e-4, atol=1e-6), name
        if config.kind.value in ("lora", "locon"):  # lycoris' own ΔW; its LoHa/LoKr one applies alpha/rank twice
            own = network.modules_by_name[name].get_diff_weight()[0].reshape(delta.shape)
            assert torch.allclose(own, delta, rtol=1e-5, atol=1e-7), name
    if CONV in lora.layers:
        assert lora.layers[CONV].rank == 3 or config.kind.value == "lokr"

    path = write_lora(lora, tmp_path / "net.safetensors", dtype=torch.float32)
    back = read_lora(path)
    assert set(back.layers) == set(lora.layers)
    for name, layer in lora.layers.items():
        assert torch.allclose(back.layers[name].delta(), layer.delta(), rtol=1e-6, atol=1e-8), name


def test_text_encoder_modules_only_when_asked():
    host = ToyHost()
    network = LoraNetwork(host.target_modules({Component.UNET}), NetworkConfig(kind="locon"), seed=0)
    assert all(name.startswith("lora_unet_") for name in network.placements)


def test_modules_start_as_a_no_op_and_the_multiplier_scales_them():
    host = ToyHost()
    network = LoraNetwork(host.target_modules({Component.UNET}), NetworkConfig(kind="lora", rank=2), seed=0)
    name = UNET + "attentions_0_transformer_blocks_0_attn1_to_out_0"
    done, _ = _behaviour(network, name, torch.zeros(8, 8))
    assert torch.count_nonzero(done) == 0  # kohya's init: up = 0
    with torch.no_grad():
        for p in network.parameters():
            p.normal_()
    full, _ = _behaviour(network, name, torch.zeros(8, 8))
    network.multiplier = 0.5
    half, _ = _behaviour(network, name, torch.zeros(8, 8))
    assert torch.allclose(half, 0.5 * full, atol=1e-6)


def test_a_host_without_trainable_modules_is_an_error():
    host = ToyHost()
    convs_only = [t for t in host.target_modules({Component.UNET}) if t.conv_block]
    with pytest.raises(TrainingError, match="no module a lora network can train"):
        LoraNetwork(convs_only, NetworkConfig(kind="lora"), seed=0)


def test_previews_share_their_noise_with_and_without_the_lora(tmp_path):
    from lib_copylora.train.config import SampleConfig
    from lib_copylora.train.routes import train_single

    previews = []
    config = TrainConfig(network=NetworkConfig(rank=2), optim=OptimConfig(learning_rate=0.05),
                         loop=LoopConfig(max_steps=6),
                         sample=SampleConfig(prompts=("red shirt", "blue"), every_n_steps=3, steps=4),
                         output=OutputConfig(output_dir=tmp_path, output_name="p"))
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    train_single(ToyHost(), config, ToySource(latents, 2, ["red shirt"] * 2),
                 Callbacks(on_sample=lambda step, samples: previews.append((step, samples))))
    assert [step for step, _ in previews] == [3, 6]  # no second render at the end
    (_, early), (_, late) = previews
    assert early.with_lora.shape == (2, 3, 8, 8) and early.prompts == ["red shirt", "blue"]
    assert torch.equal(early.without_lora, late.without_lora)  # same noise, same base
    assert not torch.equal(late.with_lora, late.without_lora)  # the LoRA changes the picture
    assert 0.0 <= float(late.with_lora.min()) and float(late.with_lora.max()) <= 1.0


@pytest.mark.parametrize("every_steps, every_epochs, want", [(0, 1, [2, 4, 6]), (4, 1, [2, 4, 6]), (0, 2, [4, 6]),
                                                             (3, 2, [3, 4, 6]), (0, 0, [6])])
def test_previews_every_n_epochs_render_at_epoch_ends_once(tmp_path, every_steps, every_epochs, want):
    """4 images in batches of 2: an epoch is 2 steps. A step that is both an epoch's end and a step preview renders
    once; the phase's end renders once, never a second time for its last epoch."""
    from lib_copylora.train.config import SampleConfig
    from lib_copylora.train.routes import train_single

    steps = []
    config = TrainConfig(network=NetworkConfig(rank=2), optim=OptimConfig(learning_rate=0.05),
                         loop=LoopConfig(max_steps=6),
                         sample=SampleConfig(prompts=("red shirt",), every_n_steps=every_steps,
                                             every_n_epochs=every_epochs, steps=2),
                         output=OutputConfig(output_dir=tmp_path, output_name="p"))
    latents = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    train_single(ToyHost(), config, ToySource(latents, 2, ["red shirt"] * 4),
                 Callbacks(on_sample=lambda step, samples: steps.append(step)))
    assert steps == want


class _AutocastWitness(ToyHost):
    """Notes whether autocast is on when the host denoises and when it decodes."""

    def __init__(self):
        super().__init__()
        self.autocast = {"predict": set(), "decode": set()}

    def predict_noise(self, *args):
        self.autocast["predict"].add(torch.is_autocast_enabled("cpu"))
        return super().predict_noise(*args)

    def decode_latents(self, latents):
        self.autocast["decode"].add(torch.is_autocast_enabled("cpu"))
        return super().decode_latents(latents)


def test_previews_denoise_in_the_runs_precision_and_decode_in_the_vaes():
    """Under bf16 the preview's denoiser runs in autocast; the VAE decodes outside it, in its own dtype, as the
    WebUI decodes (an SDXL VAE overflows in fp16)."""
    from lib_copylora.train.config import Precision, SampleConfig
    from lib_copylora.train.sampling import render_previews

    host = _AutocastWitness()
    network = LoraNetwork(host.target_modules({Component.UNET}), NetworkConfig(rank=2), seed=0)
    with network.attached():
        render_previews(host, network, (4, 4, 4), SampleConfig(prompts=("a shirt",), steps=2), 1, Precision.BF16)
    assert host.autocast == {"predict": {True}, "decode": {False}}


class OwnLinear(torch.nn.Module):
    """A host's own linear layer, as Forge builds them: an nn.Module with nn.Linear's attributes, not an nn.Linear."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class LazyConv2d(torch.nn.Conv2d):
    """A host's Conv2d subclass that skips initialisation (Forge's does): lycoris must not build its factors with it."""

    def reset_parameters(self):
        return None


def _own_layers(module: torch.nn.Module) -> torch.nn.Module:
    for name, child in list(module.named_children()):
        if type(child) is torch.nn.Linear:
            setattr(module, name, OwnLinear(child))
        elif type(child) is torch.nn.Conv2d:
            lazy = LazyConv2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                              padding=child.padding)
            lazy.weight, lazy.bias = child.weight, child.bias
            setattr(module, name, lazy)
        else:
            _own_layers(child)
    return module


@pytest.mark.parametrize("kind", ["lora", "locon", "loha", "lokr"])
def test_layers_of_a_hosts_own_classes_train_like_torch_layers(kind):
    torch_host, own_host = ToyHost(seed=4), ToyHost(seed=4)
    _own_layers(own_host.model)
    config = NetworkConfig(kind=kind, rank=2, conv_rank=2, train_text_encoder=True)
    components = {Component.UNET, Component.TEXT_ENCODER}
    plain = LoraNetwork(torch_host.target_modules(components), config, seed=3)
    own = LoraNetwork(own_host.target_modules(components), config, seed=3)
    assert list(own.placements) == list(plain.placements)
    assert any(type(p.target.module) is OwnLinear for p in own.placements.values())
    for (name, a), (_, b) in zip(plain.named_parameters(), own.named_parameters()):
        assert torch.equal(a, b), name  # same seed, same factors: lycoris initialised them, not the host's class
        assert not b.is_meta
    with torch.no_grad():
        for p in list(plain.parameters()) + list(own.parameters()):
            p.copy_(torch.full_like(p, 0.1))
    for name in plain.placements:
        delta = torch.zeros_like(plain.placements[name].target.module.weight)
        done, _ = _behaviour(own, name, delta)
        assert done.abs().max() > 0 and torch.allclose(done, _behaviour(plain, name, delta)[0], atol=1e-6), name
