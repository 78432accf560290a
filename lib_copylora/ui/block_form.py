"""The Block weights panel's data: the four block formats as slider layouts, presets in and out of the sliders,
and a LoRA's blocks in words. Pure: no gradio, no WebUI.

The panel holds MAX_SLIDERS sliders; a format shows its first `count` ones, each named by its block
(BASE, IN01, ...), in the order the LoRA Block Weight extension established (core/blocks.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

from ..core.blocks import BLOCK_FORMATS
from ..core.describe import describe_lora, format_description
from ..core.errors import SpecError
from ..core.family import Family
from ..core.formats import read_lora


class FormatChoice(NamedTuple):
    label: str  # what the format menu shows
    families: tuple[Family, ...]
    blocks: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.blocks)


def _format_choices() -> tuple[FormatChoice, ...]:
    by_blocks: dict[tuple[str, ...], list[Family]] = {}
    for family, formats in BLOCK_FORMATS.items():
        for fmt in formats:
            by_blocks.setdefault(fmt.blocks, []).append(family)
    return tuple(FormatChoice(f"{'/'.join(f.label for f in families)}: {len(blocks)} blocks", tuple(families),
                              blocks) for blocks, families in by_blocks.items())


FORMAT_CHOICES = _format_choices()
MAX_SLIDERS = max(choice.count for choice in FORMAT_CHOICES)
SLIDER_RANGE = (-2.0, 2.0)


def format_choice(label: str) -> FormatChoice:
    for choice in FORMAT_CHOICES:
        if choice.label == label:
            return choice
    raise SpecError(f"unknown block format {label!r}")


def choice_for_count(count: int) -> FormatChoice:
    """The format with `count` values (17 and 26 are SD1/SD2, 12 and 20 SDXL)."""
    for choice in FORMAT_CHOICES:
        if choice.count == count:
            return choice
    raise SpecError(f"{count} values fit no block format ({', '.join(c.label for c in FORMAT_CHOICES)})")


class SliderState(NamedTuple):
    label: str
    visible: bool


def slider_layout(label: str) -> list[SliderState]:
    """Each of the MAX_SLIDERS sliders: its block name and whether the format shows it."""
    blocks = format_choice(label).blocks
    return [SliderState(blocks[i] if i < len(blocks) else f"#{i + 1}", i < len(blocks)) for i in range(MAX_SLIDERS)]


def preset_form(name: str, presets: Mapping[str, Sequence[float]]) -> tuple[str, list[float]]:
    """A preset as (format label, MAX_SLIDERS values; those past its count are 0)."""
    if name not in presets:
        raise SpecError(f"no preset named {name!r}")
    values = [float(v) for v in presets[name]]
    return choice_for_count(len(values)).label, values + [0.0] * (MAX_SLIDERS - len(values))


def slider_values(label: str, values: Sequence[float]) -> list[float]:
    """The values a format's visible sliders hold, in block order."""
    return [float(v) for v in values[:format_choice(label).count]]


def preset_lines(presets: Mapping[str, Sequence[float]]) -> str:
    """The presets as the file writes them, for a read-only overview."""
    from ..core.block_spec import format_values

    return "\n".join(f"{name}:{format_values(values)}" for name, values in presets.items())


def inspect_lora(path: Path) -> str:
    """What a LoRA file holds: kind, family, rank/alpha, the blocks it touches in each format (core/describe.py)."""
    return format_description(describe_lora(read_lora(path, strict=False)))
