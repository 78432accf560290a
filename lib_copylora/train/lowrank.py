"""Our own forward for plain LoRA/LoCon modules: ΔW·x straight from the module's tensors.

lycoris' `bypass_forward_diff` picks a backend per call (device and dtype probes; on CUDA a fused kernel or a
per-op `torch.compile`), casts each factor with `.to(x)`, multiplies by its `scalar` buffer and runs its dropout
wrapper, on every call of every module. For a module with no dropout, no trainable scalar and no weight
decomposition, all that reduces to `up(down(x)) · scale` (and `mid` between them for Tucker convs). `lowrank_hook`
computes exactly that, in the same op order, so results are bit-identical to lycoris' eager path: the skipped
`× scalar` is `× 1.0`, and `× scale` is skipped only when the scale is exactly 1.0. The parameters stay lycoris'
own, so exports, resume states and initial weights do not change. LoHa, LoKr and DoRA modules go through lycoris.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from lycoris.modules.locon import LoConModule

Hook = Callable[[torch.nn.Module, tuple, torch.Tensor], torch.Tensor]


class _ConvGeometry(NamedTuple):
    """What the k×k factor (down, or mid with Tucker) convolves with; the 1×1 factors take the defaults."""

    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int


def fusable(module: torch.nn.Module) -> bool:
    """True for a LoRA/LoCon module whose forward is just the low-rank chain (what `lowrank_hook` computes)."""
    if type(module) is not LoConModule or getattr(module, "wd", False):  # DoRA keeps lycoris' path
        return False
    if module.rank_dropout or module.module_dropout or not isinstance(module.dropout, torch.nn.Identity):
        return False
    scalar = module.scalar
    return not isinstance(scalar, torch.nn.Parameter) and bool(scalar == 1.0)


def _geometry(module: LoConModule) -> Optional[_ConvGeometry]:
    if not module.isconv:
        return None
    op = module.lora_mid if module.tucker else module.lora_down
    return _ConvGeometry(op.stride, op.padding, op.dilation, op.groups)


def _factor(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # as lycoris' `.to(x)`: float32 factors meet a half-precision activation in its dtype (under autocast the
    # matmul casts anyway; without it a half host needs this)
    return weight if weight.dtype == x.dtype else weight.to(x.dtype)


def lowrank_hook(module: LoConModule, multiplier: Callable[[], float]) -> Hook:
    """A forward hook adding `multiplier() · scale · up(down(x))` to the target's output (nothing at 0)."""
    if not fusable(module):
        raise ValueError(f"{module.lora_name} needs lycoris' own forward")
    geometry, tucker, base_scale = _geometry(module), module.tucker, module.scale
    down_w, up_w = module.lora_down.weight, module.lora_up.weight
    mid_w = module.lora_mid.weight if tucker else None

    def hook(_target, args, output):
        factor = multiplier()
        if factor == 0.0:
            return output
        x = args[0]
        if geometry is None:
            diff = F.linear(F.linear(x, _factor(down_w, x)), _factor(up_w, x))
        elif tucker:
            hidden = F.conv2d(x, _factor(down_w, x))
            hidden = F.conv2d(hidden, _factor(mid_w, x), None, *geometry)
            diff = F.conv2d(hidden, _factor(up_w, x))
        else:
            diff = F.conv2d(F.conv2d(x, _factor(down_w, x), None, *geometry), _factor(up_w, x))
        gamma = base_scale * factor
        return output + (diff if gamma == 1.0 else diff * gamma)

    return hook
