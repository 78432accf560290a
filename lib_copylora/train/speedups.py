"""Host-level speed options of `SpeedConfig`, each a context manager that leaves the host as it found it.

They rest on optional host methods (a host without them trains as before, and the log says so once):
- `fast_attention()`: a context manager putting the host's fastest attention kernel in place (the diffusers host:
  PyTorch SDPA; A1111: its own sdp optimization where a sliced kernel is in effect); it may yield a line for the
  log saying what it changed. Forge's training forward calls SDPA itself and offers none.
- `compile_units()`: `(name, module)` of the UNet's transformer blocks (found by `host.py`'s
  `transformer_blocks`), which `compile=blocks|graphs` compiles one by one;
- `denoiser()`: the UNet module `predict_noise` calls, which `compile=unet|unet-graphs` compiles whole: its forward
  is one graph and so is its backward, so nearly all of a step runs as generated kernels.

A compiled unit gets a compiled `forward` as an instance attribute, which the LoRA hooks inside are traced into;
afterwards the forward the unit had before (its class's, or the host's own instance forward) is put back exactly.
A unit that fails to compile falls back to that eager forward with a log line. Only calls with gradients run the
compiled code: a preview (under no_grad) runs eagerly rather than compile the whole unit again for a few images.

Guards (`speed.skip_guards`): before each call of compiled code, dynamo checks that everything it traced still
holds: every attribute of every module and hook it went through, thousands of checks (milliseconds of CPU time a
step for a whole UNet). In a run whose batches all have one shape, nothing the loop does between two training
steps changes any of that, so once the loop has settled (`settled_step`), dynamo checks only what tells its
compiled graphs apart, plus the inputs' shapes, dtypes and gradient flags and the grad/autocast state (torch's
`skip_guard_eval_unsafe` stance). An input that fits none of the graphs is refused by that stance rather than
compiled; it is then run with every guard checked, which recompiles as it would have anyway.
"""

from __future__ import annotations

import contextvars
import inspect
import shutil
import types
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Optional

import torch

from .config import SETTLE_STEPS, CompileMode, SpeedConfig
from .host import transformer_blocks

Log = Callable[[str], None]
Units = list[tuple[str, torch.nn.Module]]
COMPILE_BACKEND = "inductor"  # tests swap in "eager": the same tracing without minutes of code generation
# All blocks of one class share dynamo's cache of their forward: an entry per level of the UNet, per bucket and
# per batch size (a set's last batch is often smaller); torch's default of 8 entries would drop to eager mid-run.
RECOMPILE_LIMIT = 64
# whether the compiled units in place now may skip guards in a settled step: one per thread (the WebUI trains in
# a worker thread)
_GUARDS_SKIPPABLE = contextvars.ContextVar("copylora_guards_skippable", default=False)


@contextmanager
def host_speedups(host, speed: SpeedConfig, log: Log, one_shape: bool) -> Iterator[None]:
    """`speed.host_attention` and `speed.compile` for the duration."""
    attention = getattr(host, "fast_attention", None) if speed.host_attention else None
    with (attention() if callable(attention) else nullcontext()) as note:
        if note:
            log(note)
        with compiled_units(host, speed.compile, log, one_shape, speed.skip_guards):
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


def units_to_compile(host, mode: CompileMode) -> Units:
    """What `mode` compiles on `host`: its whole UNet or its transformer blocks; [] when it offers none."""
    offered = getattr(host, "denoiser" if mode.whole_unet else "compile_units", None)
    if not callable(offered):
        return []
    return [("UNet", offered())] if mode.whole_unet else list(offered())


def blocks_within(units: Units) -> list[torch.nn.Module]:
    """The transformer blocks inside compiled units (each block is its own unit with compile=blocks)."""
    return [block for _, unit in units for _, block in transformer_blocks(unit)]


def _compile_options(mode: CompileMode, device: torch.device, one_shape: bool, log: Log) -> dict:
    if mode.cuda_graphs:
        if device.type == "cuda" and one_shape:
            return {"mode": "reduce-overhead"}
        why = ("the device is not CUDA" if device.type != "cuda" else
               "the batches have more than one shape: images in several buckets, or a smaller last batch")
        what = "the UNet" if mode.whole_unet else "blocks"
        log(f"compile: CUDA graphs need one batch shape on CUDA ({why}); compiling {what} without them")
    return {}


def guard_skipping_available() -> bool:
    """Whether this torch has the stance that skips all but the differentiating guards (2.6 and later)."""
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    try:
        return set_stance is not None and "skip_guard_eval_unsafe" in inspect.signature(set_stance).parameters
    except (TypeError, ValueError):  # a signature Python cannot read: take it as not there
        return False


@contextmanager
def settled_step(settled: bool) -> Iterator[None]:
    """A training step's forward; when `settled` (the loop ran `SETTLE_STEPS` steps in a row since it began or
    since its last preview or save) and the compiled units allow it, dynamo checks only the guards that tell its
    graphs apart meanwhile. The stance is process-wide: the WebUI runs nothing else compiled while training."""
    if not (settled and _GUARDS_SKIPPABLE.get()):
        yield
        return
    with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
        yield


@contextmanager
def _guards_skippable(allowed: bool) -> Iterator[bool]:
    skippable = allowed and guard_skipping_available()
    token = _GUARDS_SKIPPABLE.set(skippable)
    try:
        yield skippable
    finally:
        _GUARDS_SKIPPABLE.reset(token)


@contextmanager
def compiled_units(host, mode: CompileMode, log: Log, one_shape: bool, skip_guards: bool = True) -> Iterator[None]:
    if mode is CompileMode.OFF:
        yield
        return
    units = units_to_compile(host, mode)
    what = "UNet" if mode.whole_unet else "blocks"
    reason = compile_unavailable(host.device) if units else f"this host offers no {what} to compile"
    if reason is not None:
        log(f"compile: {reason}; training without torch.compile")
        yield
        return
    options = _compile_options(mode, host.device, one_shape, log)
    if mode.whole_unet:
        compiled = f"the whole UNet compiled with {COMPILE_BACKEND} as one graph (the first step takes minutes)"
    else:
        compiled = f"{len(units)} blocks compiled with {COMPILE_BACKEND} (the first steps are slow)"
    with contiguous_inputs(blocks_within(units)), _guards_skippable(skip_guards and one_shape) as skipping:
        with compiled_forwards(units, options, log, dynamic_batch=not one_shape):
            log(f"compile: {compiled}")
            if skipping:
                log(f"compile: after {SETTLE_STEPS} steps in a row, dynamo checks only the guards that tell its "
                    "graphs apart (skip_guards)")
            yield


@contextmanager
def compiled_forwards(units: Units, options: dict, log: Log, dynamic_batch: bool) -> Iterator[None]:
    """Each unit's forward compiled for the duration, dynamo's recompile limit raised meanwhile."""
    # a host may already give a unit its own instance forward (as the WebUI's training forwards are): that one is
    # compiled, and put back afterwards or when compiling fails
    eager = {id(unit): vars(unit).get("forward") for _, unit in units}
    try:
        with _recompile_room():
            for name, unit in units:
                compiled = torch.compile(unit.forward, backend=COMPILE_BACKEND, **options)
                unit.forward = _FallbackForward(name, unit, compiled, log, eager[id(unit)], dynamic_batch)
            yield
    finally:
        for _, unit in units:
            _put_back(unit, eager[id(unit)])


def _put_back(unit: torch.nn.Module, forward) -> None:
    """The unit's instance forward as it was before compiling (none: the class's)."""
    if forward is None:
        unit.__dict__.pop("forward", None)
    else:
        unit.forward = forward


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


@contextmanager
def contiguous_inputs(blocks: list[torch.nn.Module]) -> Iterator[None]:
    """Every tensor a transformer block is called with made row-major first (a forward pre-hook) meanwhile.

    A block's input is a transposed view of the conv before it (`permute(0, 2, 3, 1).reshape(b, h * w, c)`). At
    batch 1, inductor's C++ code for the LayerNorm backward over such an input kept one row of a tile where it
    needed eight (torch 2.13, CPU), and the gradients reaching the layers before the block came out wrong by up to
    10 % (5 % through a whole compiled UNet). Compiled blocks get the copy eagerly, before their graph; a compiled
    UNet traces it into its graph; either way inductor never meets the view, and every device compiles for the
    same layout. The copy is one activation per block, and nothing when the input is already contiguous."""
    handles = [block.register_forward_pre_hook(_contiguous_arguments, with_kwargs=True) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _contiguous(value):
    return value.contiguous() if isinstance(value, torch.Tensor) else value


def _contiguous_arguments(_block, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return tuple(map(_contiguous, args)), {key: _contiguous(value) for key, value in kwargs.items()}


class _FallbackForward:
    """A unit's compiled forward for calls with gradients; the eager one for the rest, and for good when
    compiling fails."""

    def __init__(self, name: str, unit: torch.nn.Module, compiled, log: Log, eager, dynamic_batch: bool):
        self.name, self.unit, self.compiled, self.log = name, unit, compiled, log
        self.eager, self.dynamic_batch = eager, dynamic_batch
        self.eager_call = eager if eager is not None else types.MethodType(type(unit).forward, unit)

    def __call__(self, *args, **kwargs):
        import torch._dynamo.exc as dynamo_errors

        if not torch.is_grad_enabled():  # a preview: a few images are not worth compiling the unit again
            return self.eager_call(*args, **kwargs)
        if self.dynamic_batch:  # batches of several sizes: one compiled graph for all of them, not one per size
            for value in (*args, *kwargs.values()):
                if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] > 1:
                    torch._dynamo.maybe_mark_dynamic(value, 0)
        try:
            return self._compiled_call(args, kwargs)
        except (dynamo_errors.BackendCompilerFailed, dynamo_errors.Unsupported,
                dynamo_errors.InternalTorchDynamoError) as error:
            self.log(f"compile: {self.name} cannot be compiled ({type(error).__name__}: "
                     f"{str(error).splitlines()[0][:160]}); it runs eagerly")
            _put_back(self.unit, self.eager)
            return self.eager_call(*args, **kwargs)

    def _compiled_call(self, args: tuple, kwargs: dict):
        try:
            return self.compiled(*args, **kwargs)
        except RuntimeError as error:
            if "skip_guard_eval_unsafe" not in str(error):  # torch's words for that refusal
                raise
        # a settled step's input fitting none of the graphs, refused by the stance before its graph ran (nothing
        # of what ran before a graph break is kept): it runs with every guard checked, compiling a graph if needed
        with torch.compiler.set_stance("default"):
            return self.compiled(*args, **kwargs)
