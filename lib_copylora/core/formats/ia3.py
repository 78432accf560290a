"""IA3: `<module>.weight` (one scale per output channel, or per input channel) and `<module>.on_input` (0 or 1)."""

from __future__ import annotations

from typing import Optional

import torch

from ..base_layers import Ia3Layer
from .common import KOHYA_MODULE, has_all, modules_with, pop, require

NAME = "IA3"


def find_modules(keys) -> list[str]:
    return [m for m in modules_with(keys, ".on_input") if KOHYA_MODULE.match(m)]


def load(module: str, tensors: dict[str, torch.Tensor]) -> Optional[tuple[str, Ia3Layer]]:
    if not has_all(tensors, module, (".weight", ".on_input")):
        return None
    weight, on_input = pop(tensors, module + ".weight"), pop(tensors, module + ".on_input")
    require(on_input.numel() == 1, module, f"on_input should be one number, not shape {tuple(on_input.shape)}")
    require(weight.numel() == max(weight.shape, default=1), module,
            f"IA3 weight {tuple(weight.shape)} should be one scale per channel")
    return module, Ia3Layer(weight=weight, on_input=bool(on_input.item()))


def to_state_dict(module: str, layer: Ia3Layer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {module + ".weight": layer.weight.to(dtype), module + ".on_input": torch.tensor(int(layer.on_input))}
