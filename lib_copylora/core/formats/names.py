"""Facts carried by kohya module names: conv kernel sizes, and SDXL's canonical (compvis) spelling.

Why names: a LoHa, or a LoKr with a factorised second half, stores a conv layer flattened to `out × (in·k·k)`,
so its tensors do not say k. Stable Diffusion UNets use 3×3 for resnet convs, down/upsamplers, conv_in and
conv_out, and 1×1 for shortcut convs and (in SD1 only) the transformer's proj_in/proj_out.
"""

from __future__ import annotations

import re
from typing import Optional

_KERNEL_3X3 = re.compile(
    r"(_resnets_\d+_conv[12]|_in_layers_2|_out_layers_3|_downsamplers_0_conv|_upsamplers_0_conv"
    r"|^lora_unet_input_blocks_\d+_0_op|^lora_unet_output_blocks_\d+_\d+_conv|^lora_unet_conv_in"
    r"|^lora_unet_conv_out|^lora_unet_input_blocks_0_0|^lora_unet_out_2)$"
)
_KERNEL_1X1 = re.compile(r"(_conv_shortcut|_skip_connection)$")
_PROJ = re.compile(r"^lora_unet_.*_proj_(in|out)$")


def conv_kernel(name: str) -> Optional[tuple[int, int]]:
    """The kernel size a module of this name has in SD1/SD2/SDXL UNets, or None for linear layers and for
    proj_in/proj_out (a 1×1 conv in SD1, linear in SD2 and SDXL: see `is_sd1_conv_projection`)."""
    if _KERNEL_3X3.search(name):
        return (3, 3)
    if _KERNEL_1X1.search(name):
        return (1, 1)
    return None


def is_sd1_conv_projection(name: str) -> bool:
    return bool(_PROJ.match(name))


# --------------------------------------------------------------------------------- SDXL: diffusers -> compvis
_RESNET_PARTS = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
                 "conv_shortcut": "skip_connection", "norm1": "in_layers_0", "norm2": "out_layers_0"}
_TOP_LEVEL = {"conv_in": "input_blocks_0_0", "conv_out": "out_2", "conv_norm_out": "out_0",
              "time_embedding_linear_1": "time_embed_0", "time_embedding_linear_2": "time_embed_2",
              "add_embedding_linear_1": "label_emb_0_0", "add_embedding_linear_2": "label_emb_0_2"}
_DIFFUSERS_UNET = re.compile(
    r"^(?:(?P<side>down|up)_blocks_(?P<b>\d+)|mid_block)_(?P<part>resnets|attentions|downsamplers|upsamplers)"
    r"_(?P<j>\d+)_(?P<rest>.+)$"
)


def _resnet_rest(rest: str) -> str:
    return _RESNET_PARTS.get(rest, rest)


def _compvis_unet(inner: str) -> Optional[str]:
    """compvis path for a diffusers SDXL UNet path (underscored), or None if it is not one we know."""
    if inner in _TOP_LEVEL:
        return _TOP_LEVEL[inner]
    m = _DIFFUSERS_UNET.match(inner)
    if m is None:
        return None
    part, j, rest = m["part"], int(m["j"]), m["rest"]
    if m["side"] is None:  # mid_block: resnet 0, attention, resnet 1
        if part == "attentions":
            return f"middle_block_1_{rest}"
        return f"middle_block_{2 * j}_{_resnet_rest(rest)}" if part == "resnets" else None
    b = int(m["b"])
    if m["side"] == "down":
        if part == "downsamplers":
            return f"input_blocks_{3 * (b + 1)}_0_op" if rest == "conv" else None
        index = 3 * b + j + 1
    else:
        if part == "upsamplers":
            # SDXL's up blocks 0 and 1 both carry attentions, so the upsampler is the third entry.
            return f"output_blocks_{3 * b + 2}_2_conv" if rest == "conv" else None
        index = 3 * b + j
    slot, rest = (1, rest) if part == "attentions" else (0, _resnet_rest(rest))
    return f"{'input' if m['side'] == 'down' else 'output'}_blocks_{index}_{slot}_{rest}"


def sdxl_canonical_name(name: str) -> str:
    """kohya's SDXL spelling: `lora_te1_` for the first text encoder, compvis block names in the UNet."""
    if name.startswith("lora_te_"):
        return "lora_te1_" + name[len("lora_te_"):]
    if name.startswith("lora_unet_"):
        compvis = _compvis_unet(name[len("lora_unet_"):])
        if compvis is not None:
            return "lora_unet_" + compvis
    return name
