"""LyCORIS LoKr: ΔW = kron(w1, w2) (lycoris/modules/lokr.py). Keys: `<module>.lokr_w1` or `lokr_w1_a`/`lokr_w1_b`
(a, c); `lokr_w2` (b, d[, k, k]), or `lokr_w2_a` (b, r) with `lokr_w2_b` (r, d·k·k, a conv stored flattened), or
Tucker `lokr_t2` (r, r, k, k) with `lokr_w2_a` (r, b) and `lokr_w2_b` (r, d); `alpha`. Target (a·b, c·d[, k, k])."""

from __future__ import annotations

from typing import Optional

import torch

from ..layers import LokrLayer
from .common import KOHYA_MODULE, alpha_tensor, modules_with, pop, pop_alpha, require
from .loha import flattened_shape

NAME = "LyCORIS LoKr"
_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def find_modules(keys) -> list[str]:
    found = modules_with(keys, ".lokr_w1") + modules_with(keys, ".lokr_w1_a")
    return [m for m in dict.fromkeys(found) if KOHYA_MODULE.match(m)]


def _complete(tensors: dict[str, torch.Tensor], module: str) -> bool:
    has = {k for k in _KEYS if f"{module}.{k}" in tensors}
    first = "lokr_w1" in has or {"lokr_w1_a", "lokr_w1_b"} <= has
    second = "lokr_w2" in has or {"lokr_w2_a", "lokr_w2_b"} <= has
    return first and second


def _shape(module: str, t: dict[str, Optional[torch.Tensor]]) -> tuple[int, ...]:
    w1 = t["lokr_w1"]
    a, c = (w1.shape[0], w1.shape[1]) if w1 is not None else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
    if t["lokr_w2"] is not None:
        b, d, *kernel = t["lokr_w2"].shape
        return (int(a * b), int(c * d), *map(int, kernel))
    w2a, w2b, t2 = t["lokr_w2_a"], t["lokr_w2_b"], t["lokr_t2"]
    if t2 is not None:
        return (int(a * w2a.shape[1]), int(c * w2b.shape[1]), *map(int, t2.shape[2:]))
    require(w2b.dim() == 2, module, f"lokr_w2_b should be a matrix, not {tuple(w2b.shape)}")
    flat = flattened_shape(module, int(a * w2a.shape[0]), int(w2b.shape[1]))
    return (flat[0], int(c * flat[1]), *flat[2:])  # the kernel lives in the w2 half only: in = c · d


def load(module: str, tensors: dict[str, torch.Tensor]) -> Optional[tuple[str, LokrLayer]]:
    if not _complete(tensors, module):
        return None
    t = {k: pop(tensors, f"{module}.{k}") for k in _KEYS}
    for half in ("lokr_w1", "lokr_w2"):  # a whole half wins; stray factors would be ignored by everyone else
        if t[half] is not None:
            require(t[half + "_a"] is None and t[half + "_b"] is None, module, f"{half} is both whole and factorised")
    layer = LokrLayer(shape=_shape(module, t), w1=t["lokr_w1"], w1a=t["lokr_w1_a"], w1b=t["lokr_w1_b"],
                      w2=t["lokr_w2"], w2a=t["lokr_w2_a"], w2b=t["lokr_w2_b"], t2=t["lokr_t2"],
                      alpha=pop_alpha(tensors, module))
    return module, layer


def to_state_dict(module: str, layer: LokrLayer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    values = {"lokr_w1": layer.w1, "lokr_w1_a": layer.w1a, "lokr_w1_b": layer.w1b, "lokr_w2": layer.w2,
              "lokr_w2_a": layer.w2a, "lokr_w2_b": layer.w2b, "lokr_t2": layer.t2}
    out = {f"{module}.{k}": v.to(dtype) for k, v in values.items() if v is not None}
    if layer.alpha is not None:
        out[module + ".alpha"] = alpha_tensor(layer.alpha)
    return out
