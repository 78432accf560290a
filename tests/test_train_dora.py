"""DoRA training for LoRA and LoCon: lycoris' weight decomposition, exported with `dora_scale` as the WebUI applies
it (per input channel), and the difference route's B − A computed against the host's own weights."""

from __future__ import annotations

import json

import pytest
import torch

from lib_copylora.core.base_layers import DoraLayer
from lib_copylora.core.formats import read_lora, write_lora
from lib_copylora.train.config import NetworkConfig, TrainConfigError
from lib_copylora.train.host import Component
from lib_copylora.train.network import LoraNetwork
from test_train_network import _behaviour, _train
from toy_host import ToyHost


@pytest.mark.parametrize("kind", ["lora", "locon"])
def test_dora_trains_and_exports_what_its_hooks_did(kind, tmp_path):
    host = ToyHost(seed=4)
    config = NetworkConfig(kind=kind, rank=2, alpha=1, dora=True, train_text_encoder=True)
    network, result = _train(host, config, tmp_path)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.9 * first, f"loss did not go down: {first:.4f} -> {last:.4f}"
    lora = network.export(host.family)
    for name, layer in lora.layers.items():
        assert isinstance(layer, DoraLayer)
        weight = network.placements[name].target.module.weight.detach()
        assert layer.magnitude.shape[:2] == (1, weight.shape[1])  # per input channel, as the WebUI reads it
        delta = layer.delta(weight)
        done, predicted = _behaviour(network, name, delta)
        torch.testing.assert_close(done, predicted, rtol=1e-4, atol=1e-5)
    path = write_lora(lora, tmp_path / "dora.safetensors", dtype=torch.float32)
    back = read_lora(path)
    assert json.loads(back.metadata["ss_network_args"])["dora_wd"] == "True"
    name = next(iter(lora.layers))
    weight = network.placements[name].target.module.weight.detach()
    torch.testing.assert_close(back.layers[name].delta(weight), lora.layers[name].delta(weight))


def test_dora_only_for_lora_and_locon():
    with pytest.raises(TrainConfigError, match="dora works with lora and locon"):
        NetworkConfig(kind="loha", dora=True)


def test_untrained_dora_changes_nothing():
    host = ToyHost(seed=1)
    network = LoraNetwork(host.target_modules({Component.UNET, Component.TEXT_ENCODER}),
                          NetworkConfig(kind="locon", rank=2, dora=True, train_text_encoder=True), seed=0)
    for name in network.placements:
        delta = network.export(host.family).layers[name].delta(network.placements[name].target.module.weight)
        assert delta.abs().max() < 1e-5, name


def test_difference_route_with_dora_is_b_minus_a_against_the_host(tmp_path):
    from lib_copylora.train.config import LoopConfig, OptimConfig, OutputConfig, RouteConfig, TrainConfig
    from lib_copylora.train.routes import train_difference
    from toy_host import ToySource

    config = TrainConfig(network=NetworkConfig(kind="locon", rank=2, alpha=1, dora=True),
                         optim=OptimConfig(learning_rate=0.05), loop=LoopConfig(max_steps=5, seed=3),
                         output=OutputConfig(output_dir=tmp_path, output_name="d", save_precision="fp32"),
                         route=RouteConfig(route="difference", keep_parts=True))
    host = ToyHost()
    latents = [torch.randn(6, 4, 4, 4, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    result = train_difference(host, config, ToySource(latents[0], 2), ToySource(latents[1], 2))
    part_a, part_b = (read_lora(tmp_path / f"d{s}.safetensors") for s in ("_A", "_B"))
    modules = {t.kohya_name: t.module for t in host.target_modules({Component.UNET, Component.TEXT_ENCODER})}
    for name, layer in result.lora.layers.items():
        weight = modules[name].weight.detach()
        expected = part_b.layers[name].delta(weight) - part_a.layers[name].delta(weight)
        torch.testing.assert_close(layer.delta().reshape(weight.shape), expected, rtol=1e-5, atol=1e-6)
    assert json.loads(result.lora.metadata["copylora"])["merge"]["base"]["name"] == "the training host's model"


def test_dora_on_layers_of_a_hosts_own_classes_trains_like_on_torch_layers(tmp_path):
    """Forge's layers are its own classes (a Linear that is no nn.Linear, a Conv2d that skips initialisation): lycoris
    builds DoRA from a stand-in of the same geometry, its magnitudes measured from the layer's own weight, and the
    hook reads the layer's live weight. Same seed, same weights: the same factors, magnitudes, outputs and file."""
    from test_train_network import OwnLinear, _own_layers

    torch_host, own_host = ToyHost(seed=4), ToyHost(seed=4)
    _own_layers(own_host.model)
    config = NetworkConfig(kind="locon", rank=2, alpha=1, dora=True, train_text_encoder=True)
    components = {Component.UNET, Component.TEXT_ENCODER}
    plain = LoraNetwork(torch_host.target_modules(components), config, seed=3)
    own = LoraNetwork(own_host.target_modules(components), config, seed=3)
    assert any(type(p.target.module) is OwnLinear for p in own.placements.values())
    for (name, a), (_, b) in zip(plain.named_parameters(), own.named_parameters()):
        assert torch.equal(a, b), name  # dora_scale included: measured from the same weights
    with torch.no_grad():
        for p in list(plain.parameters()) + list(own.parameters()):
            if p.dim() > 1 and p.shape[0] > 1:
                p.add_(torch.full_like(p, 0.05))  # a trained-looking ΔW, the same in both
    for name in plain.placements:
        weight = plain.placements[name].target.module.weight.detach()
        delta = plain.export(torch_host.family).layers[name].delta(weight)
        done, predicted = _behaviour(own, name, delta)
        assert done.abs().max() > 0, name
        torch.testing.assert_close(done, predicted, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(done, _behaviour(plain, name, delta)[0], rtol=0, atol=1e-6)
    exported = own.export(own_host.family)
    assert all(isinstance(layer, DoraLayer) for layer in exported.layers.values())


def test_dora_on_a_hosts_own_layer_follows_the_live_weight():
    """Forge replaces a layer's Parameter when it moves the model between devices: the hook must read the weight
    the layer holds now, and the network must keep no copy of it."""
    from test_train_network import _own_layers

    host = ToyHost(seed=4)
    _own_layers(host.model)
    network = LoraNetwork(host.target_modules({Component.UNET}),
                          NetworkConfig(kind="locon", rank=2, dora=True), seed=3)
    with torch.no_grad():
        for p in network.parameters():
            if p.dim() > 1:
                p.add_(torch.full_like(p, 0.05))
    name, placement = next((n, p) for n, p in network.placements.items() if p.target.module.weight.dim() == 2)
    layer = placement.target.module
    layer.weight = torch.nn.Parameter(layer.weight.detach() * 2, requires_grad=False)
    delta = network.export(host.family).layers[name].delta(layer.weight.detach())
    done, predicted = _behaviour(network, name, delta)
    torch.testing.assert_close(done, predicted, rtol=1e-4, atol=1e-5)
    for module in network.modules_by_name.values():  # lycoris keeps its source layer: a weightless stand-in
        assert all(t.is_meta for t in module.org_module[0].parameters())
