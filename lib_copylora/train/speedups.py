"""Host-level speed options of `SpeedConfig`, each a context manager that leaves the host as it found it.

Both rest on optional host methods (a host without them trains as before, and the log says so once):
- `fast_attention()`: a context manager putting the host's fastest attention kernel in place (the diffusers host:
  PyTorch SDPA); the WebUI host has none, its own cross-attention setting stays in charge.
- `compile_units()`: `(name, module)` of the blocks worth compiling one by one (transformer blocks). Each gets a
  compiled `forward` as an instance attribute, which the LoRA hooks inside are traced into; afterwards the forward
  the block had before (its class's, or the host's own instance forward) is put back exactly. A block that fails
  to compile falls back to that eager forward with a log line.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Optional

import torch

from .config import CompileMode, SpeedConfig

Log = Callable[[str], None]
COMPILE_BACKEND = "inductor"  # tests swap in "eager": the same tracing without minutes of code generation
# All blocks of one class share dynamo's cache of their forward: an entry per level of the UNet, per bucket and
# per batch size (a set's last batch is often smaller); torch's default of 8 entries would drop to eager mid-run.
RECOMPILE_LIMIT = 64


@contextmanager
def host_speedups(host, speed: SpeedConfig, log: Log, one_shape: bool) -> Iterator[None]:
    """`speed.host_attention` and `speed.compile` for the duration."""
    attention = getattr(host, "fast_attention", None) if speed.host_attention else None
    with (attention() if callable(attention) else nullcontext()):
        with compiled_blocks(host, speed.compile, log, one_shape):
            yield


def compile_unavailable(device: torch.device) -> Optional[str]:
    """Why torch.compile cannot run here, or None."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "this Python/platform has no TorchDynamo"
    if COMPILE_BACKEND != "inductor":
        return None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed"
    if device.type == "cpu":
        compilers = ("c++", "g++", "clang++", "cl")
        return None if any(shutil.which(c) for c in compilers) else "no C++ compiler on PATH"
    return f"inductor does not compile for {device.type}"


def _compile_options(mode: CompileMode, device: torch.device, one_shape: bool, log: Log) -> dict:
    if mode is CompileMode.GRAPHS:
        if device.type == "cuda" and one_shape:
            return {"mode": "reduce-overhead"}
        why = "the device is not CUDA" if device.type != "cuda" else "the batches have more than one shape"
        log(f"compile: CUDA graphs need one batch shape on CUDA ({why}); compiling blocks without them")
    return {}


@contextmanager
def compiled_blocks(host, mode: CompileMode, log: Log, one_shape: bool) -> Iterator[None]:
    if mode is CompileMode.OFF:
        yield
        return
    units = getattr(host, "compile_units", None)
    blocks = list(units()) if callable(units) else []
    reason = compile_unavailable(host.device) if blocks else "this host offers no blocks to compile"
    if reason is not None:
        log(f"compile: {reason}; training without torch.compile")
        yield
        return
    options = _compile_options(mode, host.device, one_shape, log)
    # a host may already give a block its own instance forward (as the WebUI's training forwards are): that one is
    # compiled, and put back afterwards or when compiling fails
    eager = {id(block): vars(block).get("forward") for _, block in blocks}
    try:
        with _recompile_room():
            for name, block in blocks:
                compiled = torch.compile(block.forward, backend=COMPILE_BACKEND, **options)
                block.forward = _FallbackForward(name, block, compiled, log, eager[id(block)],
                                                 dynamic_batch=not one_shape)
            log(f"compile: {len(blocks)} blocks compiled with {COMPILE_BACKEND} (the first steps are slow)")
            yield
    finally:
        for _, block in blocks:
            _put_back(block, eager[id(block)])


def _put_back(block: torch.nn.Module, forward) -> None:
    """The block's instance forward as it was before compiling (none: the class's)."""
    if forward is None:
        block.__dict__.pop("forward", None)
    else:
        block.forward = forward


@contextmanager
def _recompile_room() -> Iterator[None]:
    """dynamo's per-function recompile limit raised to RECOMPILE_LIMIT meanwhile (named cache_size_limit before
    torch 2.6)."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    before = getattr(dynamo_config, name)
    setattr(dynamo_config, name, max(before, RECOMPILE_LIMIT))
    try:
        yield
    finally:
        setattr(dynamo_config, name, before)


def _contiguous(value):
    """A tensor argument in row-major layout. A transformer block's input is often a transposed view of the conv
    before it (`permute(0, 2, 3, 1).reshape(b, h * w, c)`); at batch 1, inductor's C++ code for the LayerNorm
    backward over such an input kept one row of a tile where it needed eight (torch 2.13, CPU), and the gradient
    reaching the layers before the block came out wrong by up to 10 %. Copying that input first (one
    activation per block; a no-op when already contiguous) gives the eager gradients there, and every device
    compiles for the same input layout."""
    return value.contiguous() if isinstance(value, torch.Tensor) else value


class _FallbackForward:
    """A block's compiled forward that gives way to the eager one, for good, when compiling fails."""

    def __init__(self, name: str, block: torch.nn.Module, compiled, log: Log, eager, dynamic_batch: bool):
        self.name, self.block, self.compiled, self.log = name, block, compiled, log
        self.eager, self.dynamic_batch = eager, dynamic_batch

    def __call__(self, *args, **kwargs):
        import torch._dynamo.exc as dynamo_errors

        args, kwargs = tuple(map(_contiguous, args)), {key: _contiguous(value) for key, value in kwargs.items()}
        if self.dynamic_batch:  # batches of several sizes: one compiled graph for all of them, not one per size
            for value in (*args, *kwargs.values()):
                if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] > 1:
                    torch._dynamo.maybe_mark_dynamic(value, 0)
        try:
            return self.compiled(*args, **kwargs)
        except (dynamo_errors.BackendCompilerFailed, dynamo_errors.Unsupported,
                dynamo_errors.InternalTorchDynamoError) as error:
            self.log(f"compile: {self.name} cannot be compiled ({type(error).__name__}: "
                     f"{str(error).splitlines()[0][:160]}); it runs eagerly")
            _put_back(self.block, self.eager)
            return self.block.forward(*args, **kwargs)
