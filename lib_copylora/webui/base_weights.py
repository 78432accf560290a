"""The loaded model as the base of a merge: the weights DoRA, OFT/BOFT, IA3 and GLoRA modules modify.

The weight must be the model's own, unmodified: where the built-in Lora has merged networks into a layer it keeps
the original in `network_weights_backup` (on the CPU), so that is read first; otherwise the layer's weight is
untouched. SD2's and SDXL's OpenCLIP attention keeps q, k and v fused in one `in_proj_weight`: the kohya module's
third is returned. The model is named in the recipe by its checkpoint's hash as the WebUI computed it.

Forge (`ForgeModelBase`) merges LoRAs as weight patches: its LoRA loader, one per part's model and shared by every
clone of that part's patcher, keeps each patched weight's original Parameter in `backup` (keyed by the weight's name
in that model) until the next refresh puts the originals back; that original is read first, else the live weight.
Its layers are found by kohya name as training finds them (forge_layers.py).
No `modules` import here: the caller passes the loaded model.
"""

from __future__ import annotations

import torch

from ..core.errors import BaseModelError
from ..core.naming import kohya_name_from_webui_layer, webui_layer_name
from .compat import UnsupportedModel, is_forge_model, model_family
from .forge_layers import FLOAT_STORAGE, weighted_layers

USE_BASE = "merge DoRA/OFT/IA3/GLoRA files with `python -m lib_copylora merge --base CHECKPOINT` instead"

_FUSED = {"_attn_q_proj": 0, "_attn_k_proj": 1, "_attn_v_proj": 2}


class LoadedModelBase:
    def __init__(self, sd_model):
        self.mapping = getattr(sd_model, "network_layer_mapping", None)
        if not self.mapping:
            raise BaseModelError("the loaded model does not list its layers (the built-in Lora has not mapped it, "
                                 f"or this host has no such map): {USE_BASE}")
        self.family = model_family(sd_model)
        self.info = getattr(sd_model, "sd_checkpoint_info", None)

    def weight(self, module: str) -> torch.Tensor:
        layer = webui_layer_name(module, self.family)
        if layer is None:
            raise BaseModelError(f"module {module}: the loaded {self.family.label} model has no such layer")
        for suffix, third in _FUSED.items():
            if layer.endswith(suffix) and layer not in self.mapping:
                fused = self._find(module, layer[: -len(suffix)] + "_attn")
                backup = getattr(fused, "network_weights_backup", None)
                weight = backup[0] if backup is not None else fused.in_proj_weight
                rows = weight.shape[0] // 3
                return weight[third * rows:(third + 1) * rows].detach().to("cpu", torch.float32, copy=True)
        target = self._find(module, layer)
        backup = getattr(target, "network_weights_backup", None)
        weight = backup if backup is not None else getattr(target, "weight", None)
        if weight is None:
            raise BaseModelError(f"module {module}: the loaded model's layer {layer} has no weight")
        return weight.detach().to("cpu", torch.float32, copy=True)

    def _find(self, module: str, layer: str):
        found = self.mapping.get(layer)
        if found is None:
            raise BaseModelError(f"module {module}: the loaded {self.family.label} model has no layer {layer}")
        return found

    def describe(self) -> dict:
        info = self.info
        return {"name": getattr(info, "title", None) or getattr(info, "name", None) or "loaded model",
                "family": self.family.value, "sha256": getattr(info, "sha256", None),
                "shorthash": getattr(info, "shorthash", None), "source": "the WebUI's loaded model"}


class ForgeModelBase:
    """Forge's loaded SD1/SD2/SDXL model (a `ForgeDiffusionEngine`), read only: nothing here writes a weight."""

    def __init__(self, sd_model):
        if sd_model is None or not is_forge_model(sd_model) or sd_model.forge_objects_original is None:
            raise BaseModelError(f"Forge has no model loaded (select a checkpoint and generate once), or {USE_BASE}")
        try:
            self.family = model_family(sd_model)
        except UnsupportedModel as error:
            raise BaseModelError(f"{error}: {USE_BASE}") from None
        objects = sd_model.forge_objects_original
        storage = objects.unet.model.storage_dtype
        if storage not in FLOAT_STORAGE:
            raise BaseModelError(f"the loaded model is stored as {storage} (quantised), not as its checkpoint's "
                                 f"weights: {USE_BASE}")
        self.layers = weighted_layers(objects, self.family)
        self.info = getattr(sd_model, "sd_checkpoint_info", None)

    def weight(self, module: str) -> torch.Tensor:
        layer = self.layers.get(_canonical_name(module, self.family))
        if layer is None:
            raise BaseModelError(f"module {module}: the loaded {self.family.label} model has no such layer")
        loader = getattr(layer.root, "lora_loader", None)
        original = None if loader is None else loader.backup.get(layer.key)
        weight = original if original is not None else layer.module._parameters["weight"]
        if getattr(weight, "gguf_cls", None) is not None or getattr(weight, "bnb_quantized", False) \
                or weight.dtype not in FLOAT_STORAGE:
            raise BaseModelError(f"module {module}: the loaded model holds {layer.key} as {weight.dtype} "
                                 f"(quantised): {USE_BASE}")
        return weight.detach().to("cpu", torch.float32, copy=True)

    def describe(self) -> dict:
        info = self.info
        return {"name": getattr(info, "title", None) or getattr(info, "name", None) or "loaded model",
                "family": self.family.value, "sha256": getattr(info, "sha256", None),
                "shorthash": getattr(info, "shorthash", None), "source": "Forge's loaded model"}


def _canonical_name(module: str, family) -> str:
    """A module in the naming style kohya writes for `family` (an SD1 file may name its UNet in compvis style, or
    its text encoder `lora_te1_`, as Forge's key map accepts); unchanged where the WebUI has no name for it."""
    layer = webui_layer_name(module, family)
    canonical = None if layer is None else kohya_name_from_webui_layer(layer, family)
    return canonical or module
