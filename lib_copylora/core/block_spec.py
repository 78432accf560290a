"""Block-weight specs: the text a user types (numbers, a preset name, either behind `lbw=`) as a checked object."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

from .blocks import BASE, BLOCK_FORMATS, accepted_counts, all_blocks, block_of, format_for
from .lora_tags import is_number
from .errors import NonFiniteSpec, SpecError
from .family import Family

MAX_MAGNITUDE = 1e4  # larger block weights are typos (a missing comma), not choices
SPEC_PREFIX = "lbw="
SWEEP_MODES = ("only", "without")
_RANDOM_FORMS = ("R", "U", "X")  # the LoRA Block Weight extension's random / inherited values


def _counts_text(family: Family) -> str:
    return " or ".join(str(n) for n in accepted_counts(family))


def families_for_count(count: int) -> tuple[Family, ...]:
    """The families that have a format with `count` values."""
    return tuple(family for family in Family if format_for(family, count) is not None)


def format_values(values: Iterable[float]) -> str:
    """`1,0,0.8` — the shortest text that reads back to the same floats."""
    texts = []
    for value in values:
        text = repr(float(value))
        texts.append(text[:-2] if text.endswith(".0") else text)
    return ",".join(texts)


def _first_non_finite(items: Sequence[str]) -> None:
    """NonFiniteSpec for the first nan/inf item, before any other complaint: such a spec is never applied."""
    for position, raw in enumerate(items, start=1):
        try:
            value = float(raw.strip())
        except ValueError:
            continue
        if not math.isfinite(value):
            raise NonFiniteSpec(f"block weight {position} of {len(items)} ({raw.strip()!r}) is not finite; "
                                "use a plain number")


def parse_values(text: str) -> tuple[float, ...]:
    """Comma-separated numbers; SpecError names the first bad item by its position (1-based), NonFiniteSpec the
    first nan or inf whatever else is wrong."""
    items = text.split(",")
    _first_non_finite(items)
    values = []
    for position, raw in enumerate(items, start=1):
        item = raw.strip()
        where = f"block weight {position} of {len(items)}"
        if not item:
            raise SpecError(f"{where} is empty; write a number between each pair of commas")
        try:
            value = float(item)
        except ValueError:
            hint = " (the R, U and X forms are not supported)" if item[0].upper() in _RANDOM_FORMS else ""
            raise SpecError(f"{where} ({item!r}) is not a number; write plain numbers like 0.5{hint}") from None
        if abs(value) > MAX_MAGNITUDE:
            raise SpecError(f"{where} ({item}) is out of range; use values with |v| <= {MAX_MAGNITUDE:g}")
        values.append(value)
    return tuple(values)


@dataclass(frozen=True)
class BlockWeights:
    """Per-block strength factors for one LoRA, in one of the family's formats (docs/architecture.md §6)."""

    family: Family
    blocks: tuple[str, ...]
    values: tuple[float, ...]
    source: str

    def __post_init__(self) -> None:
        if self.blocks not in tuple(fmt.blocks for fmt in BLOCK_FORMATS[self.family]):
            raise SpecError(f"{len(self.blocks)} blocks are not an {self.family.label} block format; "
                            f"use {_counts_text(self.family)}")
        if len(self.values) != len(self.blocks):
            raise SpecError(f"{len(self.values)} values for {len(self.blocks)} blocks; give one value per block")
        if not all(math.isfinite(v) for v in self.values):
            raise NonFiniteSpec(f"block weights must be finite numbers, got {format_values(self.values)}")

    def weight_for(self, kohya_name: str) -> float:
        """The factor this spec gives a module; the LoRA's own strength multiplies on top.

        Matches the LoRA Block Weight extension, so one prompt gives one image in both tools: it starts every module
        at factor 1 and overwrites it only for modules whose name falls in a block, so modules in no block (time
        and label embeddings, `conv_norm_out`, `conv_out`) keep factor 1, the LoRA's plain strength. It expands a
        short vector to the full format with 0 for every block the short format does not name.
        One known difference: that extension gives BASE only to text-encoder modules inside the encoder layers (the
        names it matches), so a text-encoder embedding or final norm, which kohya never trains, keeps factor 1 there
        and gets BASE here."""
        block = block_of(kohya_name, self.family)
        if block is None:
            return 1.0
        if block in self.blocks:
            return self.values[self.blocks.index(block)]
        return 0.0

    @property
    def is_identity(self) -> bool:
        """True when no module gets a factor other than 1: all ones in the full format (a short format zeroes the
        blocks it does not name, and modules may sit there)."""
        return len(self.blocks) == len(all_blocks(self.family)) and all(v == 1.0 for v in self.values)

    def describe(self) -> str:
        """The preset name it came from, else its values (`1,0,0.8,...`)."""
        if self.source and "," not in self.source:
            return self.source
        return format_values(self.values)

    def per_block(self) -> dict[str, float]:
        """Every block of the family with its factor (0 for blocks a short format does not name)."""
        named = dict(zip(self.blocks, self.values))
        return {block: named.get(block, 0.0) for block in all_blocks(self.family)}

    def uncovered_blocks(self, kohya_names: Iterable[str]) -> set[str]:
        """Blocks the given modules sit in that this format does not name (they get 0; worth a warning)."""
        touched = {block_of(name, self.family) for name in kohya_names}
        return {block for block in touched if block is not None and block not in self.blocks}

    def uncovered_note(self, who: str, kohya_names: Iterable[str]) -> Optional[str]:
        """The one warning for modules a short format leaves at 0 (prompt hook on A1111 and Forge, merges), or
        None when there are none."""
        uncovered = sorted(self.uncovered_blocks(kohya_names))
        if not uncovered:
            return None
        return (f"{who} has modules in {', '.join(uncovered)}, which the {len(self.values)}-value format does not "
                "name; they get weight 0 (use the long format to set them)")


def _from_values(values: tuple[float, ...], family: Family, source: str) -> BlockWeights:
    fmt = format_for(family, len(values))
    if fmt is None:
        noun = "value" if len(values) == 1 else "values"
        raise SpecError(f"got {len(values)} {noun} for an {family.label} model; use {_counts_text(family)}")
    return BlockWeights(family, fmt.blocks, values, source)


def _preset_hint(name: str, family: Family, presets: Mapping[str, Sequence[float]]) -> str:
    fitting = [n for n, values in presets.items() if format_for(family, len(values)) is not None]
    shown = difflib.get_close_matches(name, fitting, n=3, cutoff=0.5)
    shown += [n for n in fitting if n not in shown][: 6 - len(shown)]
    if not shown:
        return f"no preset fits an {family.label} model; give {_counts_text(family)} comma-separated numbers"
    return f"known {family.label} presets: {', '.join(shown)}"


def _from_preset(name: str, family: Family, presets: Mapping[str, Sequence[float]]) -> BlockWeights:
    values = tuple(float(v) for v in presets[name])
    if format_for(family, len(values)) is None:
        made_for = "/".join(f.label for f in families_for_count(len(values))) or "no family"
        raise SpecError(f"preset {name!r} has {len(values)} values (made for {made_for}); an {family.label} model "
                        f"takes {_counts_text(family)}; {_preset_hint(name, family, presets)}")
    return _from_values(values, family, name)


def parse_block_spec(text: str, family: Family, presets: Mapping[str, Sequence[float]]) -> BlockWeights:
    """`1,0,0.8,...`, `face`, `lbw=1,0,...` or `lbw=face` -> BlockWeights; SpecError says what is wrong."""
    spec = text.strip()
    if spec.startswith(SPEC_PREFIX):
        spec = spec[len(SPEC_PREFIX):].strip()
    if not spec:
        raise SpecError(
            f"empty block-weight spec; give a preset name or {_counts_text(family)} comma-separated numbers")
    if spec in presets:
        return _from_preset(spec, family, presets)
    if "," in spec or is_number(spec):
        return _from_values(parse_values(spec), family, spec)
    raise SpecError(f"unknown block-weight preset {spec!r}; {_preset_hint(spec, family, presets)}")


def sweep_specs(family: Family, fmt_count: int, mode: str) -> list[tuple[str, BlockWeights]]:
    """One spec per block of the format, to see where a LoRA acts.

    "only": the block at 1 and every other UNet block at 0, with BASE (the text encoder) kept at 1 in every item,
    so that each cell differs from the "BASE only" cell (text encoder alone) by exactly its block. "without": the
    block at 0 and all others at 1, BASE included as an item of its own."""
    fmt = format_for(family, fmt_count)
    if fmt is None:
        raise SpecError(f"no {fmt_count}-value block format for {family.label}; use {_counts_text(family)}")
    if mode not in SWEEP_MODES:
        raise SpecError(f"unknown sweep mode {mode!r}; use {' or '.join(SWEEP_MODES)}")
    specs = []
    for swept in fmt.blocks:
        if mode == "only":
            values = tuple(1.0 if block in (swept, BASE) else 0.0 for block in fmt.blocks)
            label = f"{swept} only"
        else:
            values = tuple(0.0 if block == swept else 1.0 for block in fmt.blocks)
            label = f"without {swept}"
        specs.append((label, BlockWeights(family, fmt.blocks, values, format_values(values))))
    return specs
