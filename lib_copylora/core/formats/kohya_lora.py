"""kohya LoRA / LoCon: `<module>.lora_down.weight`, `.lora_up.weight`, optional `.lora_mid.weight` (Tucker) and
`.alpha`. Linear: down (r, in), up (out, r). Conv k×k: down (r, in, k, k), up (out, r, 1, 1); with Tucker the down
is 1×1 and mid (r, r, k, k) carries the kernel."""

from __future__ import annotations

from typing import Optional

import torch

from ..layers import LowRankLayer
from .common import KOHYA_MODULE, alpha_tensor, has_all, modules_with, pop, pop_alpha, require

NAME = "kohya LoRA/LoCon"
_DOWN, _UP, _MID = ".lora_down.weight", ".lora_up.weight", ".lora_mid.weight"


def find_modules(keys) -> list[str]:
    return [m for m in modules_with(keys, _DOWN) if KOHYA_MODULE.match(m)]


def load(module: str, tensors: dict[str, torch.Tensor]) -> Optional[tuple[str, LowRankLayer]]:
    if not has_all(tensors, module, (_DOWN, _UP)):
        return None
    down, up, mid = pop(tensors, module + _DOWN), pop(tensors, module + _UP), pop(tensors, module + _MID)
    layer = LowRankLayer(down=down, up=up, alpha=pop_alpha(tensors, module), mid=mid)
    check(module, layer)
    return module, layer


def check(module: str, layer: LowRankLayer) -> None:
    down, up, mid = layer.down, layer.up, layer.mid
    require(down.dim() in (2, 4) and up.dim() == down.dim(), module,
            f"lora_down {tuple(down.shape)} and lora_up {tuple(up.shape)} are not a linear or conv pair")
    require(up.shape[1] == down.shape[0], module,
            f"lora_up {tuple(up.shape)} does not match the rank of lora_down {tuple(down.shape)}")
    require(up.dim() == 2 or tuple(up.shape[2:]) == (1, 1), module, f"conv lora_up {tuple(up.shape)} is not 1×1")
    if mid is not None:
        rank = down.shape[0]
        require(down.dim() == 4 and mid.dim() == 4 and tuple(mid.shape[:2]) == (rank, rank), module,
                f"lora_mid {tuple(mid.shape)} does not fit rank {rank}")


def to_state_dict(module: str, layer: LowRankLayer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {module + _DOWN: layer.down.to(dtype), module + _UP: layer.up.to(dtype)}
    if layer.mid is not None:
        out[module + _MID] = layer.mid.to(dtype)
    if layer.alpha is not None:
        out[module + ".alpha"] = alpha_tensor(layer.alpha)
    return out
