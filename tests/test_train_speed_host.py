"""SpeedConfig's host-level options on the diffusers host: compiled transformer blocks and the compiled whole UNet
give the eager results (real inductor code too, at batch 1) and are undone afterwards, previews run eagerly, a
platform that cannot compile trains eagerly with a log line, the attention kernel is put back; and the SDXL-sized
bench model has SDXL's published shape."""

from __future__ import annotations

import functools
from contextlib import contextmanager

import pytest
import torch

from lib_copylora.core.family import Family
from lib_copylora.hosts.diffusers_host import DiffusersHost
from lib_copylora.hosts.tiny import build_tiny_pipeline
from lib_copylora.train import speedups
from lib_copylora.train.config import CompileMode, SpeedConfig
from lib_copylora.train.host import Component
from lib_copylora.train.network import LoraNetwork
from lib_copylora.train.config import NetworkConfig
from compile_support import SKIP_LINE, graphs  # noqa: F401 - graphs: a fixture
from toy_host import ToyHost


# with one batch shape, settled steps skip guards (tests/test_train_guards.py), and the log says so
SKIP_LINES = [SKIP_LINE] if speedups.guard_skipping_available() else []


@pytest.fixture(scope="module")
def host():
    return DiffusersHost.from_pipeline(build_tiny_pipeline(Family.SD1, seed=0))


def _predict(host, network, batch: int = 1):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    cond = torch.randn(batch, 77, host.unet.config.cross_attention_dim, generator=g)
    with network.attached():
        return host.predict_noise(x, torch.tensor([500] * batch), cond)


def _network(host):
    network = LoraNetwork(host.target_modules({Component.UNET}), NetworkConfig(rank=2), seed=0)
    for module in network.modules_by_name.values():
        torch.nn.init.normal_(module.lora_up.weight, std=0.1)  # up starts at zero: make the LoRA act
    return network


def test_compiled_blocks_give_the_eager_result_and_are_undone(host, monkeypatch):
    monkeypatch.setattr(speedups, "COMPILE_BACKEND", "eager")  # dynamo traces as inductor would, minus codegen
    network, lines = _network(host), []
    eager = _predict(host, network)
    with speedups.compiled_units(host, CompileMode.BLOCKS, lines.append, one_shape=True):
        blocks = [block for _, block in host.compile_units()]
        assert blocks and all("forward" in vars(block) for block in blocks)
        compiled = _predict(host, network)
    assert torch.allclose(compiled, eager, atol=1e-5)
    assert lines == [f"compile: {len(blocks)} blocks compiled with eager (the first steps are slow)", *SKIP_LINES]
    assert not any("forward" in vars(block) for block in blocks)


def _compiles_per_batch(host, graphs: list, one_shape: bool, batches=(4, 2, 3)) -> list[int]:
    """How many graphs dynamo hands to the backend while each batch size first runs, in turn."""
    torch._dynamo.reset()
    network, counts = _network(host), []
    with speedups.compiled_units(host, CompileMode.BLOCKS, lambda line: None, one_shape=one_shape):
        for batch in batches:
            before = len(graphs)
            _predict(host, network, batch)
            counts.append(len(graphs) - before)
    return counts


def test_batches_of_several_sizes_share_one_compiled_graph(host, graphs):
    first, *later = _compiles_per_batch(host, graphs, one_shape=False)
    assert first >= 1 and later == [0, 0]  # a set's smaller last batch does not compile again
    # the contrast: told that every batch has one shape, the blocks are compiled for that shape alone
    assert _compiles_per_batch(host, graphs, one_shape=True)[1] >= 1


def test_the_recompile_limit_is_raised_only_while_compiled(host, monkeypatch):
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    before = getattr(dynamo_config, name)
    monkeypatch.setattr(speedups, "COMPILE_BACKEND", "eager")
    with speedups.compiled_units(host, CompileMode.BLOCKS, lambda line: None, one_shape=False):
        assert getattr(dynamo_config, name) == max(before, speedups.RECOMPILE_LIMIT)
    assert getattr(dynamo_config, name) == before


def test_a_platform_that_cannot_compile_trains_eagerly_and_says_why(host, monkeypatch):
    monkeypatch.setattr(speedups, "compile_unavailable", lambda device: "Triton is not installed")
    lines = []
    with speedups.compiled_units(host, CompileMode.BLOCKS, lines.append, one_shape=True):
        assert not any("forward" in vars(block) for _, block in host.compile_units())
    assert lines == ["compile: Triton is not installed; training without torch.compile"]


@pytest.mark.parametrize("mode, what", [(CompileMode.BLOCKS, "blocks"), (CompileMode.UNET, "UNet")])
def test_a_host_without_units_says_so(mode, what):
    lines = []
    with speedups.compiled_units(ToyHost(), mode, lines.append, one_shape=True):
        pass
    assert lines == [f"compile: this host offers no {what} to compile; training without torch.compile"]


@pytest.mark.parametrize("mode, what", [(CompileMode.GRAPHS, "blocks"), (CompileMode.UNET_GRAPHS, "the UNet")])
def test_graphs_need_cuda(host, monkeypatch, mode, what):
    lines = []
    monkeypatch.setattr(speedups, "COMPILE_BACKEND", "eager")
    with speedups.compiled_units(host, mode, lines.append, one_shape=True):
        pass
    assert lines[0] == ("compile: CUDA graphs need one batch shape on CUDA (the device is not CUDA); compiling "
                        f"{what} without them")


def test_a_block_that_fails_to_compile_runs_eagerly(host, monkeypatch):
    import torch._dynamo.exc as dynamo_errors

    def failing(*args, **kwargs):
        raise dynamo_errors.Unsupported("graph break in a test")

    network, lines = _network(host), []
    eager = _predict(host, network)
    monkeypatch.setattr(speedups, "COMPILE_BACKEND", "eager")
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: failing)
    with speedups.compiled_units(host, CompileMode.BLOCKS, lines.append, one_shape=True):
        assert torch.equal(_predict(host, network), eager)
        assert not any("forward" in vars(block) for _, block in host.compile_units())  # given up for good
    assert any("cannot be compiled (Unsupported: graph break in a test); it runs eagerly" in line for line in lines)


def test_host_attention_is_sdpa_while_training_and_put_back(host):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    host.unet.set_attn_processor(AttnProcessor())
    try:
        with speedups.host_speedups(host, SpeedConfig(), print, one_shape=True):
            assert all(isinstance(p, AttnProcessor2_0) for p in host.unet.attn_processors.values())
        assert all(type(p) is AttnProcessor for p in host.unet.attn_processors.values())
        with speedups.host_speedups(host, SpeedConfig(host_attention=False), print, one_shape=True):
            assert all(type(p) is AttnProcessor for p in host.unet.attn_processors.values())
    finally:
        host.unet.set_attn_processor(AttnProcessor2_0())


class _NotingAttentionHost:
    """A host whose attention kernel says what it changed, as A1111's does when it swaps a sliced kernel out."""

    def __init__(self):
        self.active = "sliced"

    @contextmanager
    def fast_attention(self):
        self.active = "sdpa"
        try:
            yield "attention: sdpa in place of sliced"
        finally:
            self.active = "sliced"


def test_the_line_an_attention_switch_yields_goes_to_the_log_once():
    host, lines = _NotingAttentionHost(), []
    with speedups.host_speedups(host, SpeedConfig(), lines.append, one_shape=True):
        assert host.active == "sdpa"
    assert host.active == "sliced"
    assert lines.count("attention: sdpa in place of sliced") == 1
    lines.clear()
    with speedups.host_speedups(host, SpeedConfig(host_attention=False), lines.append, one_shape=True):
        assert host.active == "sliced"
    assert not any(line.startswith("attention:") for line in lines)


def test_the_sdxl_sized_model_has_sdxl_base_shapes():
    from lib_copylora.hosts.full_size import sdxl_pipeline

    pipe = sdxl_pipeline(seed=0, device="meta")  # shapes only: no memory, no initialisation
    assert sum(p.numel() for p in pipe.unet.parameters()) == 2_567_463_684  # SDXL base 1.0's UNet
    sdxl = DiffusersHost.from_pipeline(pipe)
    assert sdxl.family is Family.SDXL
    names = {t.kohya_name for t in sdxl.target_modules({Component.UNET})}
    assert "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2" in names
    assert "lora_unet_output_blocks_2_1_transformer_blocks_9_attn2_to_k" in names


class _InstanceForwardHost:
    """A host whose blocks already run an instance `forward` of their own, as the WebUI's training forwards do."""

    def __init__(self):
        self.device = torch.device("cpu")
        self.blocks = [torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)]
        for block in self.blocks:
            block.forward = functools.partial(self._own, block)

    @staticmethod
    def _own(block, x):
        return torch.nn.functional.linear(x, block.weight, block.bias) * 2

    def compile_units(self):
        return [(f"block{i}", block) for i, block in enumerate(self.blocks)]


@pytest.mark.parametrize("fails", [False, True])
def test_a_hosts_own_block_forward_is_compiled_and_put_back(monkeypatch, fails):
    import torch._dynamo.exc as dynamo_errors

    host, lines, x = _InstanceForwardHost(), [], torch.randn(2, 3)
    own = [vars(block)["forward"] for block in host.blocks]
    expected = [block(x) for block in host.blocks]
    monkeypatch.setattr(speedups, "COMPILE_BACKEND", "eager")
    if fails:
        def failing(*args, **kwargs):
            raise dynamo_errors.Unsupported("graph break in a test")
        monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: failing)
    with speedups.compiled_units(host, CompileMode.BLOCKS, lines.append, one_shape=True):
        assert all(torch.equal(block(x), e) for block, e in zip(host.blocks, expected))  # the host's forward ran
        if fails:  # given up: the host's own forward is back at once, not the class's
            assert [vars(block)["forward"] for block in host.blocks] == own
    assert [vars(block)["forward"] for block in host.blocks] == own


def _gradients(host, network, batch: int) -> dict[str, torch.Tensor]:
    for parameter in network.parameters():
        parameter.grad = None
    _predict(host, network, batch=batch).square().mean().backward()
    return {name: p.grad.clone() for name, p in network.named_parameters() if p.grad is not None}


def _eager_and_compiled_gradients(host, batch: int, mode=CompileMode.BLOCKS) -> tuple[dict, dict]:
    """One network's gradients from the eager UNet, then with `mode`'s units compiled with COMPILE_BACKEND."""
    network = _network(host)
    eager = _gradients(host, network, batch)
    torch._dynamo.reset()
    with speedups.compiled_units(host, mode, lambda line: None, one_shape=True):
        compiled = _gradients(host, network, batch)
    torch._dynamo.reset()
    return eager, compiled


def _assert_close(compiled: dict, eager: dict) -> None:
    # q and k of the mid block attend over one token: their gradients are zero up to rounding (1e-13), in both
    largest = max(gradient.abs().max().item() for gradient in eager.values())
    assert compiled.keys() == eager.keys()
    for key in eager:
        assert torch.allclose(compiled[key], eager[key], rtol=1e-4, atol=1e-6 * largest), key


def test_compiled_blocks_give_the_eager_gradients(host, monkeypatch):
    """Through AOTAutograd (what inductor compiles from), the LoRA hooks' gradients are the eager ones."""
    monkeypatch.setattr(speedups, "COMPILE_BACKEND", "aot_eager")
    eager, compiled = _eager_and_compiled_gradients(host, batch=2)
    inside = [name for name in eager if "transformer_blocks" in name]
    assert inside and compiled.keys() == eager.keys()
    assert all(torch.allclose(compiled[name], eager[name], rtol=1e-4, atol=1e-7) for name in eager)


@pytest.mark.skipif(speedups.compile_unavailable(torch.device("cpu")) is not None, reason="inductor cannot "
                    "compile on this machine's CPU (no C++ compiler)")
def test_inductor_gives_the_eager_gradients_at_batch_1(host, monkeypatch):
    """Real inductor code for one block whose input is a transposed view of the conv before it (diffusers' and
    ldm's layout), at batch 1: the gradients of the LoRA modules inside the block and before it (`proj_in`, which
    only the block's input gradient reaches) are the eager ones. Without the block's input made contiguous,
    inductor's CPU code for the LayerNorm backward gave `proj_in` gradients off by up to 10 %."""
    monkeypatch.setattr(speedups, "COMPILE_BACKEND", "inductor")
    name, block = host.compile_units()[0]
    monkeypatch.setattr(host, "compile_units", lambda: [(name, block)])
    eager, compiled = _eager_and_compiled_gradients(host, batch=1)
    assert [key for key in eager if "attentions_0_proj_in" in key and "down_blocks_0" in key]
    _assert_close(compiled, eager)


@pytest.mark.skipif(speedups.compile_unavailable(torch.device("cpu")) is not None, reason="inductor cannot "
                    "compile on this machine's CPU (no C++ compiler)")
def test_inductor_gives_the_eager_gradients_through_a_unit_holding_the_transposed_view(host, monkeypatch):
    """compile=unet traces the transposed view into its graph: here the unit is the first Transformer2DModel
    (GroupNorm, the `proj_in` conv, the permute, then the block), small enough to compile in seconds, and real
    inductor code at batch 1 gives the eager gradients. Without the copy traced in before the block, inductor's CPU
    code made `proj_in`'s gradients 2 % off here, and up to 5 % through the whole UNet (SD1.5's at 64 px)."""
    monkeypatch.setattr(speedups, "COMPILE_BACKEND", "inductor")
    unit = host.unet.down_blocks[0].attentions[0]
    monkeypatch.setattr(host, "denoiser", lambda: unit)
    eager, compiled = _eager_and_compiled_gradients(host, batch=1, mode=CompileMode.UNET)
    assert [key for key in eager if "down_blocks_0_attentions_0_proj_in" in key]
    _assert_close(compiled, eager)


def _pre_hooks(host) -> list[int]:
    return [len(module._forward_pre_hooks) for module in host.unet.modules()]


def test_the_whole_unet_compiles_as_one_unit_gives_the_eager_gradients_and_is_undone(host, monkeypatch):
    """compile=unet: the UNet itself gets the compiled forward (its blocks are traced inside it), the LoRA
    gradients through AOTAutograd (what inductor compiles from) are the eager ones, and afterwards the UNet has its
    own forward and no hook of ours."""
    monkeypatch.setattr(speedups, "COMPILE_BACKEND", "aot_eager")
    network, lines, hooks = _network(host), [], _pre_hooks(host)
    eager = _gradients(host, network, batch=2)
    torch._dynamo.reset()
    with speedups.compiled_units(host, CompileMode.UNET, lines.append, one_shape=True):
        assert "forward" in vars(host.unet)
        assert not any("forward" in vars(block) for _, block in host.compile_units())
        compiled = _gradients(host, network, batch=2)
    torch._dynamo.reset()
    assert lines == ["compile: the whole UNet compiled with aot_eager as one graph (the first step takes minutes)",
                     *SKIP_LINES]
    assert "forward" not in vars(host.unet) and _pre_hooks(host) == hooks
    _assert_close(compiled, eager)


@pytest.mark.parametrize("mode", [CompileMode.BLOCKS, CompileMode.UNET])
def test_calls_without_gradients_run_eagerly(host, graphs, mode):
    """A preview (under no_grad) runs the eager forward: compiling the unit again for a few images would cost more
    than it saves (minutes for a whole UNet). Calls with gradients still run the compiled one."""
    network = _network(host)
    eager = _predict(host, network).detach()
    with speedups.compiled_units(host, mode, lambda line: None, one_shape=True):
        with torch.no_grad():
            assert torch.equal(_predict(host, network), eager)
        assert graphs == []
        _predict(host, network)
        assert graphs


def test_a_copier_run_with_a_compiled_unet_trains_what_an_eager_one_does(host, monkeypatch, tmp_path):
    """The route end to end with compile=unet: phase A, then B over the frozen A (the UNet is traced again for the
    other network), previews between steps (eager), saving. The losses and the saved B are the eager run's, and the
    UNet is left with its own forward and no hook."""
    from lib_copylora.core.formats import read_lora
    from lib_copylora.train.callbacks import Callbacks
    from lib_copylora.train.config import (LoopConfig, OptimConfig, OutputConfig, RouteConfig, SampleConfig,
                                           TrainConfig)
    from lib_copylora.train.routes import train
    from toy_host import ToySource

    monkeypatch.setattr(speedups, "COMPILE_BACKEND", "eager")
    g = torch.Generator().manual_seed(0)
    sets = [ToySource(torch.randn(4, 4, 8, 8, generator=g), 2, ["a shirt"] * 4, seed=s) for s in (1, 2)]
    hooks, runs = _pre_hooks(host), {}
    for mode in ("off", "unet"):
        config = TrainConfig(network=NetworkConfig(rank=2), optim=OptimConfig(learning_rate=1e-2),
                             loop=LoopConfig(max_steps=3, seed=1), route=RouteConfig(route="copier"),
                             sample=SampleConfig(prompts=("a shirt",), every_n_steps=2, steps=2),
                             output=OutputConfig(output_dir=tmp_path / mode, output_name="b", save_precision="fp32"),
                             speed=SpeedConfig(compile=mode))
        losses, lines, samples = [], [], []
        result = train(host, config, *sets, callbacks=Callbacks(
            on_step=lambda step, loss, lr: losses.append(loss), on_log=lines.append,
            on_sample=lambda step, images: samples.append(step)))
        runs[mode] = losses, read_lora(result.path), samples, [line for line in lines if line.startswith("compile")]
        torch._dynamo.reset()
    (eager_losses, eager_lora, eager_samples, eager_lines), (losses, lora, samples, lines) = runs["off"], runs["unet"]
    assert eager_lines == [] and lines == ["compile: the whole UNet compiled with eager as one graph (the first step "
                                              "takes minutes)"]
    assert samples == eager_samples == [2, 3, 2, 3]
    assert torch.allclose(torch.tensor(losses), torch.tensor(eager_losses), rtol=1e-5)
    assert lora.layers.keys() == eager_lora.layers.keys()
    for name, layer in eager_lora.layers.items():
        assert torch.allclose(lora.layers[name].delta(), layer.delta(), rtol=1e-4, atol=1e-7), name
    assert "forward" not in vars(host.unet) and _pre_hooks(host) == hooks
