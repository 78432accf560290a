"""Where a kohya module's weight sits in a single-file SD1/SD2/SDXL checkpoint (compvis keys).

UNet modules map through core/naming.py to `model.diffusion_model.<compvis path>.weight`. Text encoders: SD1's
transformers CLIP under `cond_stage_model.transformer.`, SDXL's first under `conditioner.embedders.0.transformer.`;
SD2's and SDXL's second are OpenCLIP (`...model.transformer.resblocks.N.`), where q, k and v are thirds of one
fused `attn.in_proj_weight` (rows q, then k, then v) and the MLP is `mlp.c_fc` / `mlp.c_proj`.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

from .errors import FormatError
from .family import Family
from .naming import UNET_PREFIX, split_kohya_name, unet_path_diffusers_to_compvis, unet_path_style

_UNET_ROOT = "model.diffusion_model."
_CLIP_ROOTS = {(Family.SD1, "lora_te"): "cond_stage_model.transformer.",
               (Family.SD1, "lora_te1"): "cond_stage_model.transformer.",
               (Family.SDXL, "lora_te1"): "conditioner.embedders.0.transformer."}
_OPENCLIP_ROOTS = {(Family.SD2, "lora_te"): "cond_stage_model.model.transformer.resblocks.",
                   (Family.SDXL, "lora_te2"): "conditioner.embedders.1.model.transformer.resblocks."}
_OPENCLIP_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(self_attn\.(q|k|v|out)_proj|mlp\.fc1|mlp\.fc2)$")
_OPENCLIP_LEAVES = {"self_attn.out_proj": "attn.out_proj.weight", "mlp.fc1": "mlp.c_fc.weight",
                    "mlp.fc2": "mlp.c_proj.weight"}
_QKV = {"q": 0, "k": 1, "v": 2}

# Keys that tell the families apart (a text-encoder weight each family alone has).
FAMILY_MARKERS = ((Family.SDXL, "conditioner.embedders.1.model."), (Family.SD2, "cond_stage_model.model."),
                  (Family.SD1, "cond_stage_model.transformer."))


class CheckpointKey(NamedTuple):
    key: str
    third: Optional[int] = None  # q/k/v of a fused OpenCLIP in_proj_weight: which third of its rows


def checkpoint_key(module: str, family: Family) -> CheckpointKey:
    """The checkpoint tensor holding `module`'s weight; FormatError when the name has no place in `family`."""
    prefix, path = split_kohya_name(module)
    if prefix == UNET_PREFIX:
        if unet_path_style(path) == "diffusers":
            path = unet_path_diffusers_to_compvis(path, family)
        return CheckpointKey(f"{_UNET_ROOT}{path}.weight")
    clip = _CLIP_ROOTS.get((family, prefix))
    if clip is not None:
        return CheckpointKey(f"{clip}{path}.weight")
    openclip = _OPENCLIP_ROOTS.get((family, prefix))
    match = _OPENCLIP_LAYER.match(path) if openclip is not None else None
    if match is None:
        raise FormatError(f"module {module} has no weight in a {family.label} checkpoint")
    layer, leaf, qkv = match[1], match[2], match[3]
    if qkv in _QKV:
        return CheckpointKey(f"{openclip}{layer}.attn.in_proj_weight", _QKV[qkv])
    return CheckpointKey(f"{openclip}{layer}.{_OPENCLIP_LEAVES[leaf]}")
