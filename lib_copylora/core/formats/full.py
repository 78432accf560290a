"""LyCORIS full weight difference: `<module>.diff` in the target weight's shape, optional `.diff_b` (bias)."""

from __future__ import annotations

from typing import Optional

import torch

from ..layers import FullLayer
from .common import KOHYA_MODULE, modules_with, pop

NAME = "full diff"


def find_modules(keys) -> list[str]:
    return [m for m in modules_with(keys, ".diff") if KOHYA_MODULE.match(m)]


def load(module: str, tensors: dict[str, torch.Tensor]) -> Optional[tuple[str, FullLayer]]:
    if module + ".diff" not in tensors:
        return None
    return module, FullLayer(diff=pop(tensors, module + ".diff"), diff_b=pop(tensors, module + ".diff_b"))


def to_state_dict(module: str, layer: FullLayer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {module + ".diff": layer.diff.to(dtype)}
    if layer.diff_b is not None:
        out[module + ".diff_b"] = layer.diff_b.to(dtype)
    return out
