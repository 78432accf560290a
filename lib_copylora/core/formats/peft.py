"""PEFT / diffusers LoRA: `<module>.lora_A.weight` (r, in[, k, k]) and `<module>.lora_B.weight` (out, r[, 1, 1]),
with an optional `<module>.alpha` (diffusers writes it when converting kohya files; PEFT keeps alpha in its config,
so without the key the scale is 1). PEFT's DoRA adds `<module>.lora_magnitude_vector` (one magnitude per output row;
older PEFT saved it with a `.weight` suffix): read as a per-output DoraLayer, merged only against a base. Module names are dotted model paths, mapped here to kohya names:
`unet.` → `lora_unet_`, `text_encoder.` → `lora_te_`, `text_encoder_2.` → `lora_te2_`, `base_model.model.` (PEFT's
wrapper) by whether a text model follows. SDXL spelling (`lora_te1_`, compvis blocks) is settled after detection."""

from __future__ import annotations

from typing import Optional

import torch

from ..base_layers import DoraLayer
from ..errors import FormatError
from ..layers import Layer, LowRankLayer
from .common import has_all, modules_with, pop, pop_alpha
from .kohya_lora import check

NAME = "PEFT/diffusers LoRA"
_A, _B = ".lora_A.weight", ".lora_B.weight"
_MAGNITUDE = (".lora_magnitude_vector", ".lora_magnitude_vector.weight")
_PREFIXES = (("unet.", "lora_unet_"), ("text_encoder_2.", "lora_te2_"), ("text_encoder.", "lora_te_"))
_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "time_embedding.",
               "add_embedding.")


def kohya_name(module: str) -> Optional[str]:
    """The kohya module name for a dotted PEFT/diffusers module path, or None when it names no SD part."""
    if module.startswith("base_model.model."):
        module = module[len("base_model.model."):]
    for prefix, kohya in _PREFIXES:
        if module.startswith(prefix):
            return kohya + module[len(prefix):].replace(".", "_")
    if module.startswith("text_model."):
        return "lora_te_" + module.replace(".", "_")
    if module.startswith(_UNET_ROOTS):
        return "lora_unet_" + module.replace(".", "_")
    return None


def find_modules(keys) -> list[str]:
    return [m for m in modules_with(keys, _A) if kohya_name(m) is not None]


def load(module: str, tensors: dict[str, torch.Tensor]) -> Optional[tuple[str, Layer]]:
    if not has_all(tensors, module, (_A, _B)):
        return None
    name = kohya_name(module)
    layer = LowRankLayer(down=pop(tensors, module + _A), up=pop(tensors, module + _B),
                         alpha=pop_alpha(tensors, module))
    check(name, layer)
    magnitudes = [m for m in (pop(tensors, module + suffix) for suffix in _MAGNITUDE) if m is not None]
    if len(magnitudes) > 1:
        raise FormatError(f"module {name}: PEFT's DoRA magnitude is stored twice ({module}{_MAGNITUDE[0]} and "
                          f"{module}{_MAGNITUDE[1]})")
    return name, (DoraLayer(layer, magnitudes[0], on_output=True) if magnitudes else layer)
