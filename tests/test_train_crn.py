"""Common random numbers: the LoRAs of a route start from the same weights and their phases draw the same noise,
timesteps and batch order, so the difference route's B − A holds only what the two image sets make differ."""

from __future__ import annotations

import torch

from lib_copylora.core.formats import read_lora
from lib_copylora.train.config import LoopConfig, NetworkConfig, OptimConfig, OutputConfig, RouteConfig, TrainConfig
from lib_copylora.train.routes import train_copier, train_difference
from toy_host import ToyHost, ToySource


def _config(route: str, out_dir, learning_rate: float = 0.05, seed: int = 3) -> TrainConfig:
    return TrainConfig(network=NetworkConfig(kind="locon", rank=2, alpha=1),
                       optim=OptimConfig(learning_rate=learning_rate), loop=LoopConfig(max_steps=5, seed=seed),
                       output=OutputConfig(output_dir=out_dir, output_name="crn", save_precision="fp32"),
                       route=RouteConfig(route=route, keep_parts=True))


def _latents(seed: int) -> torch.Tensor:
    return torch.randn(6, 4, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_difference_of_identical_sets_is_exactly_zero(tmp_path):
    same = _latents(0)
    result = train_difference(ToyHost(), _config("difference", tmp_path), ToySource(same, 2), ToySource(same, 2))
    part_a, part_b = (read_lora(tmp_path / f"crn{s}.safetensors") for s in ("_A", "_B"))
    assert set(part_a.layers) == set(part_b.layers)
    for name, layer in part_a.layers.items():
        assert torch.equal(layer.up, part_b.layers[name].up), name
        assert torch.equal(layer.down, part_b.layers[name].down), name
        assert float(layer.up.abs().max()) > 0, name  # trained, not left at its zero start
    for name, layer in result.lora.layers.items():  # zero up to the rounding of the merge's one matmul
        assert float(layer.delta().abs().max()) <= 1e-6 * float(part_a.layers[name].delta().abs().max()), name


def test_difference_of_different_sets_is_not_zero(tmp_path):
    result = train_difference(ToyHost(), _config("difference", tmp_path), ToySource(_latents(0), 2),
                              ToySource(_latents(1), 2))
    assert max(float(layer.delta().abs().max()) for layer in result.lora.layers.values()) > 1e-3


def test_copier_b_starts_where_a_started(tmp_path):
    # a learning rate too small to move anything: what is saved is each network's initial weights
    sets = ToySource(_latents(0), 2), ToySource(_latents(1), 2)
    train_copier(ToyHost(), _config("copier", tmp_path, learning_rate=1e-12), *sets)
    part_a, result = read_lora(tmp_path / "crn_A.safetensors"), read_lora(tmp_path / "crn.safetensors")
    for name, layer in part_a.layers.items():
        assert torch.allclose(layer.down, result.layers[name].down, atol=1e-9), name
    other_seed = tmp_path / "other"
    train_copier(ToyHost(), _config("copier", other_seed, learning_rate=1e-12, seed=4), *sets)
    other = read_lora(other_seed / "crn_A.safetensors")
    assert any(not torch.allclose(layer.down, other.layers[n].down) for n, layer in part_a.layers.items())
