"""Which model family (SD1, SD2, SDXL) a LoRA was made for, and why we think so.

Evidence, strongest first: module names (SDXL alone has two text encoders, compvis-spelled UNet keys in kohya's
files, attentions in the first up block and an add-embedding; SD1/SD2 alone have a fourth down/up block and
attentions in the first down block); tensor shapes (text-encoder width and cross-attention context: 768 for SD1,
1024 for SD2, 2048 for SDXL); then the kohya metadata (`ss_base_model_version`, `ss_v2`). Files are sometimes merged
with stale metadata, which is why shapes outrank it. When nothing decides, SD1 is assumed and the reason says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

from .family import Family
from .layers import Layer

_SDXL_NAMES = re.compile(
    r"^lora_te[12]_|^lora_unet_(input_blocks|middle_block|output_blocks|label_emb)_|^lora_unet_up_blocks_0_attentions_"
    r"|^lora_unet_add_embedding_"
)
_SD12_NAMES = re.compile(r"^lora_unet_(down|up)_blocks_3_|^lora_unet_down_blocks_0_attentions_")
_TEXT_WIDTH = re.compile(r"^lora_te_text_model_encoder_layers_\d+_(self_attn_(q|k|v)_proj|mlp_fc1)$")
_CONTEXT = re.compile(r"_attn2_to_(k|v)$")
_BY_TEXT_WIDTH = {768: Family.SD1, 1024: Family.SD2}
_BY_CONTEXT = {768: Family.SD1, 1024: Family.SD2, 2048: Family.SDXL}


@dataclass(frozen=True)
class FamilyGuess:
    family: Family
    reason: str  # one line, e.g. "tensor shapes: cross-attention context 1024 in lora_unet_..."
    assumed: bool = False  # True when nothing in the file decided and SD1 was taken as the fallback


def _from_names(names: list[str]) -> tuple[Optional[Family], str]:
    for name in names:
        if _SDXL_NAMES.search(name):
            return Family.SDXL, f"module names: {name}"
    return None, ""


def _input_width(layer: Layer) -> Optional[int]:
    shape = getattr(layer, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) == 2 else None


def _from_shapes(layers: Mapping[str, Layer]) -> tuple[Optional[Family], str]:
    for name, layer in layers.items():
        width = _input_width(layer)
        if _CONTEXT.search(name) and width in _BY_CONTEXT:
            return _BY_CONTEXT[width], f"tensor shapes: cross-attention context {width} in {name}"
        if _TEXT_WIDTH.match(name) and width in _BY_TEXT_WIDTH:
            return _BY_TEXT_WIDTH[width], f"tensor shapes: text encoder width {width} in {name}"
    return None, ""


def _from_metadata(metadata: Mapping[str, str]) -> tuple[Optional[Family], str]:
    version = metadata.get("ss_base_model_version")
    family = Family.from_base_model_version(version) if version else None
    if family is not None:
        return family, f"metadata: ss_base_model_version={version}"
    v2 = metadata.get("ss_v2")
    if v2 == "True":
        return Family.SD2, "metadata: ss_v2=True"
    if v2 == "False":
        return Family.SD1, "metadata: ss_v2=False, no ss_base_model_version"
    return None, ""


def detect_family(layers: Mapping[str, Layer], metadata: Mapping[str, str]) -> FamilyGuess:
    names = list(layers)
    sd12_only = next((n for n in names if _SD12_NAMES.search(n)), None)
    found, reason = _from_names(names)
    if found is None:
        found, reason = _from_shapes(layers)
    meta_family, meta_reason = _from_metadata(metadata)
    if found is None and meta_family is not None and not (sd12_only and meta_family is Family.SDXL):
        found, reason = meta_family, meta_reason
    if found is None:
        if sd12_only:
            return FamilyGuess(Family.SD1, f"module names fit SD1 or SD2 ({sd12_only}); nothing tells which, "
                                           "assuming SD1", assumed=True)
        return FamilyGuess(Family.SD1, "nothing in the file names the model family; assuming SD1", assumed=True)
    if meta_family is not None and meta_family is not found:
        reason += f"; the metadata says {meta_family.label}, which does not fit"
    return FamilyGuess(found, reason)
