"""LyCORIS LoHa: `<module>.hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`, optional Tucker `hada_t1`/`hada_t2`,
and `alpha` (lycoris/modules/loha.py). Plain: w?_a (out, r), w?_b (r, in·k·k), a conv stored flattened.
Tucker: w?_a (r, out), w?_b (r, in), t? (r, r, k, k). Lenient as the WebUI is: a conv factor stored 4-D, w?_b
(r, in, k, k) and w?_a (out, r, 1, 1), is read flattened with the kernel from its shape (`stored_4d` says so)."""

from __future__ import annotations

from typing import Optional

import torch

from ..layers import LohaLayer
from .common import KOHYA_MODULE, alpha_tensor, has_all, modules_with, pop, pop_alpha, require
from .names import conv_kernel

NAME = "LyCORIS LoHa"
_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_TUCKER = ("hada_t1", "hada_t2")


def find_modules(keys) -> list[str]:
    return [m for m in modules_with(keys, ".hada_w1_a") if KOHYA_MODULE.match(m)]


def flattened_shape(module: str, out_dim: int, columns: int) -> tuple[int, ...]:
    """Target shape of a layer whose tensors give `out × columns`, the kernel taken from the module name."""
    kernel = conv_kernel(module)
    if kernel is None:
        return (out_dim, columns)
    area = kernel[0] * kernel[1]
    require(columns % area == 0, module,
            f"the name says a {kernel[0]}×{kernel[1]} conv but {columns} input columns do not divide by {area}")
    return (out_dim, columns // area, *kernel)


def load(module: str, tensors: dict[str, torch.Tensor]) -> Optional[tuple[str, LohaLayer]]:
    tucker = module + ".hada_t1" in tensors
    if not has_all(tensors, module, [f".{p}" for p in _PARTS + (_TUCKER if tucker else ())]):
        return None
    w1a, w1b, w2a, w2b = (pop(tensors, f"{module}.{p}") for p in _PARTS)
    t1, t2 = (pop(tensors, f"{module}.{p}") for p in _TUCKER)
    kernel: tuple[int, ...] = ()
    stored_4d = not tucker and w1b.dim() == 4
    if stored_4d:
        kernel = tuple(int(k) for k in w1b.shape[2:])
        require(w2b.dim() == 4 and tuple(w2b.shape[2:]) == kernel, module,
                f"hada_w1_b {tuple(w1b.shape)} and hada_w2_b {tuple(w2b.shape)} store different kernels")
        require(all(a.dim() == 2 or tuple(a.shape[2:]) == (1, 1) for a in (w1a, w2a)), module,
                "a 4-D hada_w?_a must be 1×1")
        w1a, w2a = (a.reshape(a.shape[0], -1) for a in (w1a, w2a))
        w1b, w2b = (b.reshape(b.shape[0], -1) for b in (w1b, w2b))
    require(all(t.dim() == 2 for t in (w1a, w1b, w2a, w2b)), module, "LoHa factors must be matrices")
    if tucker:
        require(t1.dim() >= 3 and t1.shape == t2.shape, module, f"hada_t1 {tuple(t1.shape)} / hada_t2 mismatch")
        shape = (int(w1a.shape[1]), int(w1b.shape[1]), *map(int, t1.shape[2:]))
    else:
        require(w1a.shape[1] == w1b.shape[0] and w2a.shape[1] == w2b.shape[0], module,
                f"hada_w?_a {tuple(w1a.shape)} and hada_w?_b {tuple(w1b.shape)} ranks differ")
        shape = (flattened_shape(module, int(w1a.shape[0]), int(w1b.shape[1])) if not kernel else
                 (int(w1a.shape[0]), int(w1b.shape[1]) // (kernel[0] * kernel[1]), *kernel))
    require(w1a.shape == w2a.shape and w1b.shape == w2b.shape, module,
            "the two Hadamard halves have different shapes")
    layer = LohaLayer(w1a=w1a, w1b=w1b, w2a=w2a, w2b=w2b, shape=shape, alpha=pop_alpha(tensors, module),
                      t1=t1, t2=t2, stored_4d=stored_4d)
    return module, layer


def to_state_dict(module: str, layer: LohaLayer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    values = dict(zip(_PARTS, (layer.w1a, layer.w1b, layer.w2a, layer.w2b)))
    if layer.t1 is not None:
        values.update(hada_t1=layer.t1, hada_t2=layer.t2)
    out = {f"{module}.{k}": v.to(dtype) for k, v in values.items()}
    if layer.alpha is not None:
        out[module + ".alpha"] = alpha_tensor(layer.alpha)
    return out
