"""Block-weight formats (docs/architecture.md §6) and the block each LoRA module belongs to.

Blocks follow the compvis UNet: INnn = `input_blocks.nn`, MID = `middle_block`, OUTnn = `output_blocks.nn`, and
BASE = every text-encoder module (`naming.component_of`). Diffusers names map there by naming's own index rule
(`naming.compvis_block`: down level b, layer j -> IN(3b+j+1), its downsampler -> IN(3b+3), up level b, layer j ->
OUT(3b+j), its upsampler -> OUT(3b+2)), and `conv_in` -> IN00. The time embedding, the SDXL label embedding,
`conv_norm_out` and `conv_out` are in no block.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .family import Family
from .naming import DOWN_LAYERS, UNET_LAYOUTS, UNET_PREFIX, UP_LAYERS, Component, compvis_block, component_of

BASE = "BASE"
MID = "MID"


class BlockFormat(NamedTuple):
    count: int
    blocks: tuple[str, ...]


def _ins(*numbers: int) -> tuple[str, ...]:
    return tuple(f"IN{n:02d}" for n in numbers)


def _outs(*numbers: int) -> tuple[str, ...]:
    return tuple(f"OUT{n:02d}" for n in numbers)


def _format(*blocks: str) -> BlockFormat:
    return BlockFormat(len(blocks), tuple(blocks))


# The orders the LoRA Block Weight extension established: the short formats list only the blocks a plain LoRA
# (attention and resnet layers kohya trains by default) touches; the long ones list every block.
_SD_FORMATS = (
    _format(BASE, *_ins(1, 2, 4, 5, 7, 8), MID, *_outs(*range(3, 12))),
    _format(BASE, *_ins(*range(12)), MID, *_outs(*range(12))),
)
BLOCK_FORMATS: dict[Family, tuple[BlockFormat, ...]] = {
    Family.SD1: _SD_FORMATS,
    Family.SD2: _SD_FORMATS,
    Family.SDXL: (
        _format(BASE, *_ins(4, 5, 7, 8), MID, *_outs(*range(6))),
        _format(BASE, *_ins(*range(9)), MID, *_outs(*range(9))),
    ),
}


def accepted_counts(family: Family) -> tuple[int, ...]:
    return tuple(fmt.count for fmt in BLOCK_FORMATS[family])


def format_for(family: Family, count: int) -> BlockFormat | None:
    """The family's format with `count` values, or None."""
    return next((fmt for fmt in BLOCK_FORMATS[family] if fmt.count == count), None)


def all_blocks(family: Family) -> tuple[str, ...]:
    """Every block of the family, in order (the longest format)."""
    return max(BLOCK_FORMATS[family], key=lambda fmt: fmt.count).blocks


_DIFFUSERS_BLOCK = re.compile(r"(down|up)_blocks_(\d+)_(resnets|attentions|downsamplers|upsamplers)_(\d+)(?:_|$)")
_COMPVIS_BLOCK = re.compile(r"(input|output)_blocks_(\d+)(?:_|$)")
_MIDDLE = re.compile(r"(?:mid_block|middle_block)(?:_|$)")
_CONV_IN = re.compile(r"conv_in(?:_|$)")


def _diffusers_block(match: re.Match, family: Family) -> str | None:
    direction, level, kind, layer = match.group(1), int(match.group(2)), match.group(3), int(match.group(4))
    layout = UNET_LAYOUTS[family]
    if level >= layout.levels:
        return None
    down = direction == "down"
    if kind in ("resnets", "attentions") and layer < (DOWN_LAYERS if down else UP_LAYERS):
        index = compvis_block(down, level, layer)
    elif kind == ("downsamplers" if down else "upsamplers") and layer == 0 and level < layout.levels - 1:
        index = compvis_block(down, level, 2)  # the sampler takes the place of a third layer
    else:
        return None
    return f"{'IN' if down else 'OUT'}{index:02d}"


def block_of(kohya_name: str, family: Family) -> str | None:
    """The block a module belongs to ("BASE", "IN00".., "MID", "OUT00"..), or None for modules in no block.

    Accepts diffusers-style and compvis-style UNet names for every family. None also for names outside this
    family's UNet (an SD1 `input_blocks_10` on SDXL): such a module is in none of the family's blocks."""
    component = component_of(kohya_name)
    if component is Component.TEXT_ENCODER:
        return BASE
    if component is not Component.UNET:
        return None
    name = kohya_name[len(UNET_PREFIX) + 1:]
    if _MIDDLE.match(name):
        return MID
    if _CONV_IN.match(name):
        return "IN00"
    match = _DIFFUSERS_BLOCK.match(name)
    if match:
        return _diffusers_block(match, family)
    match = _COMPVIS_BLOCK.match(name)
    if match:
        block = f"{'IN' if match.group(1) == 'input' else 'OUT'}{int(match.group(2)):02d}"
        return block if block in all_blocks(family) else None
    return None
