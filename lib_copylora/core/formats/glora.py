"""GLoRA: `<module>.a1.weight`, `a2.weight`, `b1.weight`, `b2.weight` and `alpha`, linear layers only (the WebUI
multiplies them as matrices). Two layouts exist; the shapes tell which (see base_layers.GloraLayer)."""

from __future__ import annotations

from typing import Optional

import torch

from ..base_layers import GloraLayer
from .common import KOHYA_MODULE, alpha_tensor, has_all, modules_with, pop, pop_alpha, require

NAME = "GLoRA"
_PARTS = ("a1", "a2", "b1", "b2")


def find_modules(keys) -> list[str]:
    return [m for m in modules_with(keys, ".a1.weight") if KOHYA_MODULE.match(m)]


def _chains(first: torch.Tensor, second: torch.Tensor) -> bool:
    return first.shape[1] == second.shape[0]


def load(module: str, tensors: dict[str, torch.Tensor]) -> Optional[tuple[str, GloraLayer]]:
    if not has_all(tensors, module, [f".{p}.weight" for p in _PARTS]):
        return None
    a1, a2, b1, b2 = (pop(tensors, f"{module}.{p}.weight") for p in _PARTS)
    require(all(t.dim() == 2 for t in (a1, a2, b1, b2)), module,
            "GLoRA factors must be matrices (conv GLoRA is not something the WebUI can apply)")
    webui = _chains(a2, a1) and _chains(b2, b1) and a2.shape[0] == a1.shape[1] == b1.shape[1]
    lycoris = _chains(a1, a2) and _chains(b1, b2) and a1.shape[0] == a2.shape[1] == b2.shape[1]
    require(webui or lycoris, module,
            f"a1 {tuple(a1.shape)}, a2 {tuple(a2.shape)}, b1 {tuple(b1.shape)}, b2 {tuple(b2.shape)} "
            "do not chain into a GLoRA")
    layer = GloraLayer(a1=a1, a2=a2, b1=b1, b2=b2, alpha=pop_alpha(tensors, module), webui_layout=webui)
    return module, layer


def to_state_dict(module: str, layer: GloraLayer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {f"{module}.{p}.weight": getattr(layer, p).to(dtype) for p in _PARTS}
    if layer.alpha is not None:
        out[module + ".alpha"] = alpha_tensor(layer.alpha)
    return out
