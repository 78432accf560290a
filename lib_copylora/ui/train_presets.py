"""The Train panel's menu of training settings. The default is what copier users publish (docs/architecture.md §8):
LoRA rank 8, alpha 1, AdamW 8-bit, learning rate 1e-4, constant schedule, 4,000 steps (1 image × 5 repeats × 800
epochs), buckets up to 600×900, fp16 saves. AdamW 8-bit needs bitsandbytes; without it the menu picks AdamW and says
so.

Every preset sets the same fields (PRESET_KEYS), so switching presets never leaves one's value behind in another.
Values are as the widgets show them. Pure: no gradio, no WebUI.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from .fields import FieldSpec, Key

PRESET_KEYS: tuple[Key, ...] = (
    ("network", "kind"), ("network", "rank"), ("network", "alpha"), ("network", "conv_rank"),
    ("optim", "optimizer"), ("optim", "learning_rate"), ("optim", "scheduler"), ("loop", "max_steps"),
    ("loop", "epochs"), ("dataset", "resolution"), ("output", "save_precision"),
)
EIGHT_BIT, PLAIN_ADAMW = "adamw8bit", "adamw"


class TrainingPreset(NamedTuple):
    label: str
    values: dict[Key, Any]


_COPIER = {("network", "kind"): "lora", ("network", "rank"): "8", ("network", "alpha"): "1",
           ("network", "conv_rank"): "", ("optim", "optimizer"): EIGHT_BIT, ("optim", "learning_rate"): "1e-4",
           ("optim", "scheduler"): "constant", ("loop", "max_steps"): "4000", ("loop", "epochs"): "1",
           ("dataset", "resolution"): "600,900", ("output", "save_precision"): "fp16"}
TRAINING_PRESETS: dict[str, TrainingPreset] = {p.label: p for p in (
    TrainingPreset("Copier: rank 8, alpha 1, lr 1e-4, constant, 4000 steps", _COPIER),
    TrainingPreset("Copier, rank 16", {**_COPIER, ("network", "rank"): "16"}),
    TrainingPreset("Functional LoCon: rank 8, conv rank 8", {**_COPIER, ("network", "kind"): "locon",
                                                              ("network", "conv_rank"): "8"}),
    TrainingPreset("Quick check: 300 steps", {**_COPIER, ("loop", "max_steps"): "300"}),
)}
DEFAULT_PRESET = next(iter(TRAINING_PRESETS))


def preset_values(label: str, has_bitsandbytes: bool) -> dict[Key, Any]:
    """The widget values a preset sets; AdamW 8-bit becomes AdamW when bitsandbytes is missing."""
    preset = TRAINING_PRESETS[label]
    values = {key: preset.values[key] for key in PRESET_KEYS}
    if values[("optim", "optimizer")] == EIGHT_BIT and not has_bitsandbytes:
        values[("optim", "optimizer")] = PLAIN_ADAMW
    return values


def optimizer_note(has_bitsandbytes: bool) -> str:
    if has_bitsandbytes:
        return "AdamW 8-bit (bitsandbytes) as the copier articles use."
    return ("bitsandbytes is not installed, so the presets use plain AdamW instead of AdamW 8-bit: the same "
            "updates, with more memory for the optimiser state.")


def form_defaults(specs: Mapping[Key, FieldSpec], has_bitsandbytes: bool) -> dict[Key, Any]:
    """Every field's starting value: the dataclass defaults with the default preset on top."""
    return {**{key: spec.default for key, spec in specs.items()},
            **preset_values(DEFAULT_PRESET, has_bitsandbytes)}
