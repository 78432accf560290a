"""OFT and BOFT: `<module>.oft_blocks` (n, b, b) or (m, n, b, b) for BOFT, with `alpha` (the constraint per output
channel) and an optional `rescale`; the old LyCORIS `<module>.oft_diag` (n, b, b) holds the rotation itself.
kohya sd-scripts' OFT names its modules `oft_unet_...` (compvis style, as the WebUI maps them); they are read under
the usual `lora_unet_` name."""

from __future__ import annotations

from typing import Optional

import torch

from ..base_layers import OftLayer
from .common import KOHYA_MODULE, alpha_tensor, modules_with, pop, pop_alpha, require

NAME = "OFT/BOFT"
_KOHYA_OFT = "oft_unet_"


def kohya_name(module: str) -> str:
    return "lora_unet_" + module[len(_KOHYA_OFT):] if module.startswith(_KOHYA_OFT) else module


def find_modules(keys) -> list[str]:
    found = modules_with(keys, ".oft_blocks") + modules_with(keys, ".oft_diag")
    return [m for m in dict.fromkeys(found) if KOHYA_MODULE.match(kohya_name(m))]


def load(module: str, tensors: dict[str, torch.Tensor]) -> Optional[tuple[str, OftLayer]]:
    rotation = module + ".oft_diag" in tensors
    key = module + (".oft_diag" if rotation else ".oft_blocks")
    if key not in tensors:
        return None
    require(not (rotation and module + ".oft_blocks" in tensors), module, "holds both oft_blocks and oft_diag")
    blocks = pop(tensors, key)
    require(blocks.dim() in (3, 4) and blocks.shape[-1] == blocks.shape[-2], module,
            f"{key.rsplit('.', 1)[1]} {tuple(blocks.shape)} is not a stack of square blocks")
    require(not (rotation and blocks.dim() == 4), module, "oft_diag cannot be a butterfly (4-D) stack")
    require(blocks.dim() == 3 or blocks.shape[-1] % 2 == 0, module,
            f"BOFT blocks of size {blocks.shape[-1]} cannot pair channels (the size must be even)")
    layer = OftLayer(blocks=blocks, alpha=pop_alpha(tensors, module), rescale=pop(tensors, module + ".rescale"),
                     is_rotation=rotation)
    if layer.rescale is not None:
        require(layer.rescale.numel() == layer.out_dim, module,
                f"rescale has {layer.rescale.numel()} values for {layer.out_dim} output channels")
    return kohya_name(module), layer


def to_state_dict(module: str, layer: OftLayer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {f"{module}.{'oft_diag' if layer.is_rotation else 'oft_blocks'}": layer.blocks.to(dtype)}
    if layer.rescale is not None:
        out[module + ".rescale"] = layer.rescale.to(dtype)
    if layer.alpha is not None:
        out[module + ".alpha"] = alpha_tensor(layer.alpha)
    return out
