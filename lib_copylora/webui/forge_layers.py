"""Forge's layers by kohya module name, read against lllyasviel/stable-diffusion-webui-forge at commit
dfdcbab685e57677014f05a3309b48cc87383167. Training asks which layers to wrap, a merge whose weight a DoRA, OFT, IA3
or GLoRA module modifies; both name them here, so what one writes the other finds.

The UNet sits in the UNet patcher's `KModel` as `diffusion_model`, in the compvis layout of the checkpoint; kohya's
name follows from its path through core/naming.py, in kohya's style for the family. The text encoders are Hugging
Face CLIP models in one `ModuleDict` under `clip_l` / `clip_h` / `clip_g` (SD2's and SDXL's OpenCLIP included, so
q, k and v are separate layers, never thirds of a fused projection); kohya's name is the prefix Forge's own LoRA
key map gives each key, then the path under `transformer`.

Forge's LoRA loader keys its patches, and the originals it keeps while patches are merged in, by a weight's name
inside the patcher's model (`diffusion_model.<path>.weight`, `clip_l.transformer.<path>.weight`): `ForgeLayer.key`.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import torch

from ..core.family import Family
from ..core.naming import kohya_name_from_webui_layer

# The text encoders by their key in Forge's CLIP ModuleDict, with the kohya prefix of each (the names Forge's own
# LoRA key map gives them, so what is trained loads in Forge, A1111 and kohya's tools alike).
ENCODER_PREFIXES = {Family.SD1: {"clip_l": "lora_te"}, Family.SD2: {"clip_h": "lora_te"},
                    Family.SDXL: {"clip_l": "lora_te1", "clip_g": "lora_te2"}}
UNET_KEY_ROOT = "diffusion_model"
# What Forge stores a model's weights as when it holds them as they are, not quantised (NF4, FP4, FP8, GGUF)
FLOAT_STORAGE = (torch.float32, torch.float16, torch.bfloat16)


class ForgeLayer(NamedTuple):
    root: torch.nn.Module  # the patcher's model: it owns the LoRA loader and the originals that loader keeps
    key: str  # the weight's name inside `root`, as Forge's LoRA loader keys patches and originals
    module: torch.nn.Module


class TextEncoder(NamedTuple):
    key: str  # `clip_l`, `clip_h`, `clip_g`
    prefix: str  # `lora_te`, `lora_te1`, `lora_te2`
    transformer: torch.nn.Module  # the Hugging Face CLIP text model's wrapper; kohya paths start under it


def unet_kohya_name(path: str, family: Family) -> Optional[str]:
    """The kohya name of the UNet layer at `path` (dotted, inside `diffusion_model`); None where kohya has none."""
    return kohya_name_from_webui_layer(f"{UNET_KEY_ROOT}_{path.replace('.', '_')}", family)


def text_kohya_name(prefix: str, path: str) -> str:
    """The kohya name of the text-encoder layer at `path` (dotted, under `transformer`: `text_model.encoder...`)."""
    return f"{prefix}_{path.replace('.', '_')}"


def text_encoders(objects, family: Family) -> Iterator[TextEncoder]:
    encoders = objects.clip.cond_stage_model
    for key, prefix in ENCODER_PREFIXES[family].items():
        yield TextEncoder(key, prefix, getattr(encoders, key).transformer)


def _weight_of(module: torch.nn.Module) -> Optional[torch.Tensor]:
    return module._parameters.get("weight")


def weighted_layers(objects, family: Family) -> dict[str, ForgeLayer]:
    """Every layer of the UNet and the text encoders that holds a weight, by kohya name (`objects`: the engine's
    `forge_objects_original`, whose patchers share their models with the clones LoRAs are patched on)."""
    layers: dict[str, ForgeLayer] = {}
    kmodel = objects.unet.model
    for path, module in kmodel.diffusion_model.named_modules():
        name = unet_kohya_name(path, family) if path and _weight_of(module) is not None else None
        if name is not None:
            layers[name] = ForgeLayer(kmodel, f"{UNET_KEY_ROOT}.{path}.weight", module)
    encoders = objects.clip.cond_stage_model
    for encoder in text_encoders(objects, family):
        for path, module in encoder.transformer.named_modules():
            if path and _weight_of(module) is not None:
                layers[text_kohya_name(encoder.prefix, path)] = ForgeLayer(
                    encoders, f"{encoder.key}.transformer.{path}.weight", module)
    return layers
