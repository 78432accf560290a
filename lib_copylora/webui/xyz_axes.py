"""Our X/Y/Z plot axes (docs/architecture.md §7): strength, block-weight preset and block sweep.

Each axis edits the LoRA tags of the cell's own copy of `p` (its prompt and hires prompt), so the conditioning
cache, the infotext, hires fix and the API all behave as for a prompt typed by hand. Values are `VALUE` or
`LORA_NAME:VALUE`; without a name they apply to the first LoRA tag of the prompt.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from ..core import lora_tags
from ..core.axis_values import expand_strengths, split_csv
from ..core.block_spec import format_values, sweep_specs
from ..core.blocks import BLOCK_FORMATS
from ..core.family import Family
from ..core.presets import presets_for
from . import compat, patching
from .paths import webui_presets

log = logging.getLogger("copylora")

STRENGTH = "CopyLoRA: strength"
PRESET = "CopyLoRA: block preset"
SWEEP = "CopyLoRA: block sweep"
SWEEP_MODES = ("only", "without")
AXES_KEY = ("X/Y/Z axes",)


def _edit_prompts(p, edit: Callable[[str, Optional[str]], str], value: str) -> None:
    name, payload = lora_tags.split_axis_value(value)
    try:
        p.prompt = edit(p.prompt, name, payload)
    except ValueError as exc:
        raise RuntimeError(f"{value}: {exc}") from None
    hr_prompt = getattr(p, "hr_prompt", "")
    if hr_prompt:
        try:
            p.hr_prompt = edit(hr_prompt, name, payload)
        except ValueError:
            pass  # a hires prompt without the tag simply keeps its own


def apply_strength(p, value: str, _values) -> None:
    _edit_prompts(p, lambda prompt, name, v: lora_tags.set_strength(prompt, float(v), name), value)


def apply_preset(p, value: str, _values) -> None:
    _edit_prompts(p, lambda prompt, name, v: lora_tags.set_block_spec(prompt, v, name), value)


def current_family() -> Family:
    """The loaded model's family; UnsupportedModel (one line, shown by the X/Y/Z plot) for SD3, Flux, ..."""
    from modules import shared

    return compat.model_family(shared.sd_model)


def sweep_table(family: Family) -> dict[str, str]:
    """Sweep label ('IN05 only', 'without IN05') → the spec text in the family's short format."""
    count = min(fmt.count for fmt in BLOCK_FORMATS[family])
    table = {}
    for mode in SWEEP_MODES:
        for label, weights in sweep_specs(family, count, mode):
            table[label] = format_values(weights.values)
    return table


def apply_sweep(p, value: str, _values) -> None:
    table = sweep_table(current_family())

    def edit(prompt: str, name: Optional[str], label: str) -> str:
        if label not in table:
            raise ValueError(f"'{label}' is not a block sweep value for this model; pick one of the listed values")
        return lora_tags.set_block_spec(prompt, table[label], name)

    _edit_prompts(p, edit, value)


def format_plain(_p, opt, value) -> str:
    name, payload = lora_tags.split_axis_value(str(value))
    shown = f"strength {payload}" if opt.label == STRENGTH else payload
    return f"{name}: {shown}" if name else shown


def _family_for_choices() -> Optional[Family]:
    try:
        return current_family()
    except compat.UnsupportedModel as exc:  # the menus stay empty; say why once per look at them
        log.warning("CopyLoRA: X/Y/Z block axes: %s", exc)
        return None


def preset_choices() -> list[str]:
    family = _family_for_choices()
    return [] if family is None else sorted(presets_for(family, webui_presets()))


def sweep_choices() -> list[str]:
    family = _family_for_choices()
    return [] if family is None else list(sweep_table(family))


def confirm_presets(_p, values) -> None:
    known = webui_presets()
    for value in values:
        _name, payload = lora_tags.split_axis_value(value)
        if payload not in known and not _looks_numeric(payload):
            raise RuntimeError(f"unknown block-weight preset '{payload}'; add it in the CopyLoRA tab or pick a listed one")


def _looks_numeric(spec: str) -> bool:
    try:
        [float(x) for x in spec.split(",")]
    except ValueError:
        return False
    return True


def register_axes() -> bool:
    """Add our axes to the WebUI's X/Y/Z plot once (re-imports of our script must not duplicate them)."""
    xyz = compat.xyz_module()
    if xyz is None:
        return False
    existing = {opt.label for opt in xyz.axis_options}
    wanted = [
        xyz.AxisOption(STRENGTH, str, apply_strength, format_value=format_plain, prepare=expand_strengths),
        xyz.AxisOption(PRESET, str, apply_preset, format_value=format_plain, confirm=confirm_presets,
                       choices=preset_choices, prepare=split_csv),
        xyz.AxisOption(SWEEP, str, apply_sweep, format_value=format_plain, choices=sweep_choices, prepare=split_csv),
    ]
    xyz.axis_options.extend(opt for opt in wanted if opt.label not in existing)
    patching.add(AXES_KEY, xyz, _remove_axes, "X/Y/Z axes")
    return True


def _remove_axes(xyz) -> None:
    xyz.axis_options[:] = [o for o in xyz.axis_options if o.label not in (STRENGTH, PRESET, SWEEP)]


def unregister_axes() -> None:
    patching.undo(AXES_KEY)

