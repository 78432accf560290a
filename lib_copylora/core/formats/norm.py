"""LyCORIS norm layers: `<module>.w_norm` and `<module>.b_norm`, the differences of a LayerNorm/GroupNorm weight and
bias. The WebUI loads a module only with both keys; LyCORIS leaves `b_norm` out for norms without bias, so it is
optional here and written back (zeros) so that the WebUI loads the file."""

from __future__ import annotations

from typing import Optional

import torch

from ..layers import NormLayer
from .common import KOHYA_MODULE, modules_with, pop, require

NAME = "LyCORIS norm"


def find_modules(keys) -> list[str]:
    return [m for m in modules_with(keys, ".w_norm") if KOHYA_MODULE.match(m)]


def load(module: str, tensors: dict[str, torch.Tensor]) -> Optional[tuple[str, NormLayer]]:
    if module + ".w_norm" not in tensors:
        return None
    w_norm, b_norm = pop(tensors, module + ".w_norm"), pop(tensors, module + ".b_norm")
    require(w_norm.dim() == 1, module, f"w_norm should be one value per channel, not {tuple(w_norm.shape)}")
    require(b_norm is None or b_norm.shape == w_norm.shape, module,
            f"b_norm {tuple(b_norm.shape) if b_norm is not None else ()} does not match w_norm")
    return module, NormLayer(diff=w_norm, diff_b=b_norm)


def to_state_dict(module: str, layer: NormLayer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    bias = layer.diff_b if layer.diff_b is not None else torch.zeros_like(layer.diff)
    return {module + ".w_norm": layer.diff.to(dtype), module + ".b_norm": bias.to(dtype)}
