"""The training form's fields, derived from the dataclasses the engine validates (single source of truth).

Every setting of a `TrainRequest` section (`NetworkConfig`, `OptimConfig`, ... `DatasetConfig`) and the request's
own fields become a `FieldSpec`: which widget shows it, its label, its default and its one-line help, taken from
the dataclass field's `metadata["help"]`. A field is addressed by its key `(section, name)`; section "" is the
`TrainRequest` itself. Pure: no gradio, no WebUI.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Any, NamedTuple

from ..train.config import Route
from ..service.train_request import SECTIONS, SERVER_FIELDS, SWEEPABLE, TrainRequest

Key = tuple[str, str]
REQUEST = ""  # the section name of TrainRequest's own fields
AUTO_PRECISION = "auto"
PROMPTS: Key = ("sample", "prompts")
# Set by buttons or handled by their own widgets, not by a generic field widget.
SPECIAL: set[Key] = {("output", "overwrite"), ("output", "resume"), (REQUEST, "network"), (REQUEST, "optim"),
                     (REQUEST, "loop"), (REQUEST, "loss"), (REQUEST, "sample"), (REQUEST, "output"),
                     (REQUEST, "speed"), (REQUEST, "dataset")}
SECTION_TITLES = {REQUEST: "Route and output", "network": "Network", "optim": "Optimiser and schedule",
                  "loop": "Steps, precision and seed", "loss": "Loss", "sample": "Preview images",
                  "output": "Saving", "speed": "Speed (how fast, not what)",
                  "dataset": "Images, captions and buckets (A and B alike)"}
# Labels where the field name alone reads badly or repeats across sections (the WebUI keys saved UI defaults
# by label, so labels are kept unique).
LABELS: dict[Key, str] = {
    (REQUEST, "name"): "Output name", (REQUEST, "dataset_a"): "Image set A", (REQUEST, "dataset_b"): "Image set B",
    (REQUEST, "reg_a"): "Regularisation images for A", (REQUEST, "reg_b"): "Regularisation images for B",
    (REQUEST, "new_rank"): "Difference: SVD re-rank to", (REQUEST, "new_conv_rank"): "Difference: conv re-rank to",
    (REQUEST, "keep_parts"): "Keep A (and B) beside the result",
    (REQUEST, "subfolder"): "Lora subfolder", (REQUEST, "overwrite"): "Overwrite an existing result",
    ("network", "kind"): "Network", ("network", "rank"): "Rank (dim)", ("network", "alpha"): "Alpha",
    ("network", "lokr_factor"): "LoKr factor", ("optim", "learning_rate"): "Learning rate",
    ("optim", "text_encoder_lr"): "Text-encoder learning rate", ("loop", "seed"): "Training seed",
    ("loop", "max_steps"): "Steps", ("sample", "seed"): "Preview seed", ("sample", "steps"): "Preview steps",
    ("sample", "every_n_steps"): "Preview every N steps",
    ("sample", "every_n_epochs"): "Preview every N epochs", ("sample", "guidance_scale"): "Preview CFG scale",
    ("sample", "prompts"): "Preview prompts (one per line)", ("dataset", "seed"): "Data order seed",
    ("loss", "min_snr_gamma"): "Min-SNR gamma", ("optim", "betas"): "Betas (β1, β2)", ("optim", "eps"): "Epsilon",
    ("network", "use_tucker"): "Tucker decomposition", ("dataset", "enable_bucket"): "Aspect-ratio buckets",
    ("dataset", "flip_aug"): "Mirror images (flip)", ("output", "save_state"): "Save a resume state",
    ("optim", "num_cycles"): "Cosine restarts", ("network", "dora"): "DoRA (weight decomposition)",
    ("speed", "fused_lowrank"): "Fused LoRA forward", ("speed", "fused_optimizer"): "Fused AdamW",
    ("speed", "cache_text_encoder"): "Cache text-encoder outputs", ("speed", "host_attention"): "Fastest attention",
    ("speed", "compile"): "Compile (torch.compile)", ("speed", "read_loss_every"): "Read the loss every N steps",
    ("speed", "skip_guards"): "Settled steps skip guards",
}
# Defaults that differ from the dataclass's in the form: blank means "the server decides".
FORM_DEFAULTS: dict[Key, Any] = {("sample", "every_n_steps"): None, ("loop", "precision"): AUTO_PRECISION}
EXTRA_HELP: dict[Key, str] = {
    ("sample", "every_n_steps"): "; blank = CopyLoRA's setting",
    ("loop", "precision"): "; auto = the dtype the loaded model is held in",
    (REQUEST, "subfolder"): "; blank = CopyLoRA's setting",
}
SWEEP_HINT = " · a comma list sweeps (one run per value)"


class Widget(enum.Enum):
    CHECKBOX = "checkbox"
    DROPDOWN = "dropdown"
    NUMBER = "number"
    INTEGER = "integer"
    TEXT = "text"
    LINES = "lines"


class FieldSpec(NamedTuple):
    section: str
    name: str
    label: str
    help: str
    widget: Widget
    choices: tuple[str, ...]
    default: Any  # as the widget shows it
    sweepable: bool

    @property
    def key(self) -> Key:
        return self.section, self.name

    @property
    def elem_id(self) -> str:
        return f"copylora_{self.section or 'request'}_{self.name}"


def _label(key: Key) -> str:
    return LABELS.get(key, key[1].replace("_", " ").capitalize())


def _optional(hint: Any) -> tuple[Any, bool]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        return args[0], True
    return hint, False


def _widget(key: Key, hint: Any) -> tuple[Widget, tuple[str, ...]]:
    inner, optional = _optional(hint)
    if key == PROMPTS:
        return Widget.LINES, ()
    if key == (REQUEST, "route"):
        return Widget.DROPDOWN, tuple(route.value for route in Route)
    if key == ("loop", "precision"):
        return Widget.DROPDOWN, (AUTO_PRECISION, *(p.value for p in inner))
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return Widget.DROPDOWN, tuple(member.value for member in inner)
    if inner is bool:
        return Widget.CHECKBOX, ()
    if key in SWEEPABLE or optional or inner not in (int, float):
        return Widget.TEXT, ()  # text takes comma lists, blanks (None) and tuples
    return (Widget.INTEGER if inner is int else Widget.NUMBER), ()


def _display(value: Any, widget: Widget) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if widget is Widget.TEXT:
        if value is None:
            return ""
        return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)
    if widget is Widget.LINES:
        return "\n".join(value)
    return value


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _specs(section: str, cls: type) -> list[FieldSpec]:
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        key = (section, f.name)
        if key in SERVER_FIELDS or key in SPECIAL:
            continue
        widget, choices = _widget(key, hints[f.name])
        if FORM_DEFAULTS.get(key, "") is None:
            widget = Widget.TEXT  # a number box cannot stay blank (gradio shows 0), a text box can
        default = FORM_DEFAULTS[key] if key in FORM_DEFAULTS else _display(_default(f), widget)
        sweepable = key in SWEEPABLE
        help_text = f.metadata.get("help", "") + EXTRA_HELP.get(key, "") + (SWEEP_HINT if sweepable else "")
        specs.append(FieldSpec(section, f.name, _label(key), help_text, widget, choices, default, sweepable))
    return specs


def train_fields() -> dict[Key, FieldSpec]:
    """Every field of the training form, by key, in the dataclasses' order (request fields first)."""
    specs = _specs(REQUEST, TrainRequest)
    for section, cls in SECTIONS.items():
        specs += _specs(section, cls)
    return {spec.key: spec for spec in specs}
