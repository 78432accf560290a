"""`speed.skip_guards`: once the loop has settled, compiled units run without dynamo checking every attribute it
traced; an input that fits no compiled graph still gets one; nothing is skipped where batches vary, where the
option is off or nothing is compiled; and a copier run trains exactly what it trains checking every guard, with
the count of settled steps starting again after each preview and in each phase."""

from __future__ import annotations


import pytest
import torch

from lib_copylora.train import speedups
from lib_copylora.train.config import CompileMode, NetworkConfig
from lib_copylora.train.host import Component
from lib_copylora.train.network import LoraNetwork
from compile_support import SKIP_LINE, graphs  # noqa: F401 - graphs: a fixture
from toy_host import ToyHost, ToySource

pytestmark = pytest.mark.skipif(not speedups.guard_skipping_available(), reason="torch < 2.6 has no guard skipping")


class _ToyDenoiser(torch.nn.Module):
    def __init__(self, host: ToyHost):
        super().__init__()
        self.model, self.host = host.model, host

    def forward(self, noisy_latents, timesteps, cond):
        return ToyHost.predict_noise(self.host, noisy_latents, timesteps, cond)


class _CompilingToyHost(ToyHost):
    """The toy denoiser as a module the trainer can compile whole (quick to trace, unlike a UNet)."""

    def __init__(self):
        super().__init__(seed=0)
        self.unit = _ToyDenoiser(self)

    def denoiser(self) -> torch.nn.Module:
        return self.unit

    def compile_units(self) -> list[tuple[str, torch.nn.Module]]:
        return [("toy block", self.unit)]

    def predict_noise(self, noisy_latents, timesteps, cond):
        return self.unit(noisy_latents, timesteps, cond)


@pytest.fixture
def host():
    return _CompilingToyHost()


def _network(host):
    network = LoraNetwork(host.target_modules({Component.UNET}), NetworkConfig(rank=2), seed=0)
    for module in network.modules_by_name.values():
        torch.nn.init.normal_(module.lora_up.weight, std=0.1)  # up starts at zero: make the LoRA act
    return network


def _predict(host, network, batch: int = 1, settled: bool = False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 4, 4, generator=g)
    cond = host.encode_prompts(["a shirt"] * batch)
    with network.attached(), speedups.settled_step(settled):
        return host.predict_noise(x, torch.tensor([50] * batch), cond)


def test_a_settled_step_runs_its_graph_without_checking_what_dynamo_traced(host, graphs):
    """The network's multiplier is a constant in the traced graph, guarded by dynamo: a settled step does not
    check it (which is why the loop settles only where nothing but the optimizer runs between steps), an unsettled
    one does and compiles anew. The log says that settled steps skip guards."""
    network, lines = _network(host), []
    with speedups.compiled_units(host, CompileMode.UNET, lines.append, one_shape=True):
        assert lines[-1] == SKIP_LINE
        at_one = _predict(host, network)
        compiled = len(graphs)
        network.multiplier = 0.5
        assert torch.equal(_predict(host, network, settled=True), at_one) and len(graphs) == compiled
        halved = _predict(host, network)
        assert len(graphs) == compiled + 1 and not torch.allclose(halved, at_one)


def test_a_settled_step_whose_input_fits_no_graph_still_gets_one(host, graphs):
    network = _network(host)
    eager = _predict(host, network, batch=2).detach()
    with speedups.compiled_units(host, CompileMode.UNET, lambda line: None, one_shape=True):
        _predict(host, network, batch=1)
        compiled = len(graphs)
        result = _predict(host, network, batch=2, settled=True)  # refused by the stance, then checked in full
        assert len(graphs) == compiled + 1
        assert torch.allclose(result, eager, atol=1e-5)
        assert torch.equal(_predict(host, network, batch=2, settled=True), result)  # and then fits
        assert len(graphs) == compiled + 1


@pytest.mark.parametrize("mode, one_shape, skip", [(CompileMode.UNET, False, True), (CompileMode.UNET, True, False),
                                                   (CompileMode.BLOCKS, True, False)])
def test_every_guard_is_checked_where_batches_vary_or_skipping_is_off(host, graphs, mode, one_shape, skip):
    network, lines = _network(host), []
    with speedups.compiled_units(host, mode, lines.append, one_shape=one_shape, skip_guards=skip):
        assert not any("skip_guards" in line for line in lines)
        _predict(host, network, batch=2)
        compiled = len(graphs)
        network.multiplier = 0.5
        _predict(host, network, batch=2, settled=True)
        assert len(graphs) > compiled


def test_settling_is_nothing_without_compiled_units_or_a_torch_that_can_skip(host, graphs, monkeypatch):
    """Compile off, a platform that cannot compile, a torch without the stance (before 2.6): no stance is set,
    and the log says nothing of skipping."""
    lines = []
    monkeypatch.setattr(torch.compiler, "set_stance", lambda *a, **k: pytest.fail("no stance here"))
    with speedups.compiled_units(host, CompileMode.OFF, lines.append, one_shape=True):
        _predict(host, _network(host), settled=True)
    monkeypatch.setattr(speedups, "guard_skipping_available", lambda: False)
    with speedups.compiled_units(host, CompileMode.UNET, lines.append, one_shape=True):
        _predict(host, _network(host), settled=True)
        assert graphs  # compiled, and run with every guard checked
    monkeypatch.setattr(speedups, "compile_unavailable", lambda device: "no C++ compiler on PATH")
    with speedups.compiled_units(host, CompileMode.UNET, lines.append, one_shape=True):
        _predict(host, _network(host), settled=True)
    assert not any("skip_guards" in line for line in lines)


class _OneShapeSource(ToySource):
    """Toy batches all of one shape, saying so as ImageDataset does."""

    def one_batch_shape(self) -> bool:
        return True


def test_a_copier_run_skipping_guards_trains_exactly_what_one_checking_them_does(monkeypatch, tmp_path):
    """Phase B trains over the frozen A, a different traced graph: its count of settled steps starts at zero, as it
    does after each preview; a settled step that ran A's graph for B would change the losses and the file."""
    from lib_copylora.core.formats import read_lora
    from lib_copylora.train.callbacks import Callbacks
    from lib_copylora.train.config import (LoopConfig, OptimConfig, OutputConfig, RouteConfig, SampleConfig,
                                           SpeedConfig, TrainConfig)
    from lib_copylora.train.routes import train

    monkeypatch.setattr(speedups, "COMPILE_BACKEND", "eager")
    settled_step, steps = speedups.settled_step, []

    def recording(settled: bool):
        steps.append((settled, speedups._GUARDS_SKIPPABLE.get()))
        return settled_step(settled)

    monkeypatch.setattr(speedups, "settled_step", recording)
    g = torch.Generator().manual_seed(0)
    sets = [_OneShapeSource(torch.randn(4, 4, 4, 4, generator=g), 2, ["a shirt"] * 4, seed=s) for s in (1, 2)]
    runs = {}
    for skip in (False, True):
        steps.clear()
        config = TrainConfig(network=NetworkConfig(rank=2), optim=OptimConfig(learning_rate=1e-2),
                             loop=LoopConfig(max_steps=6, seed=1), route=RouteConfig(route="copier"),
                             sample=SampleConfig(prompts=("a shirt",), every_n_steps=4, steps=2),
                             output=OutputConfig(output_dir=tmp_path / str(skip), output_name="b",
                                                 save_precision="fp32"),
                             speed=SpeedConfig(compile="unet", skip_guards=skip))
        losses = []
        on_step = lambda step, loss, lr: losses.append(loss)  # noqa: E731
        result = train(_CompilingToyHost(), config, *sets, callbacks=Callbacks(on_step=on_step))
        runs[skip] = losses, read_lora(result.path), list(steps)
        torch._dynamo.reset()
    (checked_losses, checked_lora, checked_steps), (losses, lora, settled_steps) = runs[False], runs[True]
    per_phase = [False, False, False, True, False, False]  # settled after 3 steps; the preview at 4 unsettles
    assert settled_steps == [(s, True) for s in per_phase * 2]
    assert checked_steps == [(s, False) for s in per_phase * 2]
    assert losses == checked_losses
    assert lora.layers.keys() == checked_lora.layers.keys()
    for name, layer in checked_lora.layers.items():
        assert torch.equal(lora.layers[name].delta(), layer.delta()), name
