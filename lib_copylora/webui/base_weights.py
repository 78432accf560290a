"""The loaded model as the base of a merge: the weights DoRA, OFT/BOFT, IA3 and GLoRA modules modify.

The weight must be the model's own, unmodified: where the built-in Lora has merged networks into a layer it keeps
the original in `network_weights_backup` (on the CPU), so that is read first; otherwise the layer's weight is
untouched. SD2's and SDXL's OpenCLIP attention keeps q, k and v fused in one `in_proj_weight`: the kohya module's
third is returned. The model is named in the recipe by its checkpoint's hash as the WebUI computed it.
No `modules` import here: the caller passes `shared.sd_model`.
"""

from __future__ import annotations

import torch

from ..core.errors import BaseModelError
from ..core.naming import webui_layer_name
from .compat import model_family

_FUSED = {"_attn_q_proj": 0, "_attn_k_proj": 1, "_attn_v_proj": 2}


class LoadedModelBase:
    def __init__(self, sd_model):
        self.mapping = getattr(sd_model, "network_layer_mapping", None)
        if not self.mapping:
            raise BaseModelError("the loaded model does not list its layers (the built-in Lora has not mapped it, "
                                 "or this host has no such map): merge DoRA/OFT/IA3/GLoRA files with "
                                 "`python -m lib_copylora merge --base CHECKPOINT` instead")
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
