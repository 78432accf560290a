"""Command-line flags for every field of TrainConfig's parts and of DatasetConfig, with kohya's names where kohya has
the setting (network_dim, optimizer_type, lr_scheduler, max_train_steps, mixed_precision, ...).

Flags are made from the dataclasses themselves, so a field added to a config gets a flag (named after the field)
and its help string without touching this file; the table below only renames. Every flag defaults to "not given",
so the dataclasses' own defaults stay the single source of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import typing
from pathlib import Path
from typing import Any, Optional

from ..train.config import (LoopConfig, LossConfig, NetworkConfig, OptimConfig, OutputConfig, RouteConfig,
                            SampleConfig, SpeedConfig)
from ..train.data_config import DatasetConfig

SECTIONS: dict[str, type] = {
    "network": NetworkConfig, "optim": OptimConfig, "loop": LoopConfig, "loss": LossConfig,
    "sample": SampleConfig, "output": OutputConfig, "route": RouteConfig, "dataset": DatasetConfig,
    "speed": SpeedConfig,
}

# (section, field) -> option strings; the first is the one `--help` leads with. Fields not listed get `--<field>`.
KOHYA_NAMES: dict[tuple[str, str], tuple[str, ...]] = {
    ("network", "kind"): ("--algo",),  # --network_module (with kohya's module names too): kohya_flags.py
    ("network", "rank"): ("--network_dim",),
    ("network", "alpha"): ("--network_alpha",),
    ("network", "conv_rank"): ("--conv_dim",),
    ("optim", "optimizer"): ("--optimizer_type",),
    ("optim", "learning_rate"): ("--learning_rate",),  # --unet_lr: kohya_flags.py
    ("optim", "scheduler"): ("--lr_scheduler",),
    ("optim", "warmup_steps"): ("--lr_warmup_steps",),
    ("optim", "num_cycles"): ("--lr_scheduler_num_cycles",),
    ("loop", "max_steps"): ("--max_train_steps",),
    ("loop", "epochs"): ("--max_train_epochs",),
    ("loop", "precision"): ("--mixed_precision",),
    ("sample", "prompts"): ("--sample_prompt",),
    ("sample", "every_n_steps"): ("--sample_every_n_steps",),
    ("sample", "every_n_epochs"): ("--sample_every_n_epochs",),
    ("sample", "steps"): ("--sample_steps",),
    ("sample", "guidance_scale"): ("--sample_guidance_scale",),
    ("sample", "seed"): ("--sample_seed",),
    ("output", "output_dir"): ("--output", "--output_dir"),
    ("dataset", "batch_size"): ("--train_batch_size", "--batch_size"),
    ("dataset", "reg_dir"): ("--reg_data_dir", "--reg-dir"),
}
# Given elsewhere: the image folders have their own flags (--data, --data-a, --data-b); one --seed serves both the
# loop and the datasets.
NOT_FLAGS = {("dataset", "data_dir"), ("dataset", "seed")}
# kohya's spellings of precisions: mixed_precision "no", save_precision "float".
PRECISION_ALIASES = {"no": "fp32", "float": "fp32", "fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


def _dest(section: str, name: str) -> str:
    return f"{section}__{name}"


def _plain_type(hint: Any) -> Any:
    """`Optional[int]` -> int; other hints unchanged."""
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def _int_or_share(text: str) -> "int | float":
    """kohya's --lr_warmup_steps: a number of steps, or a float below 1 for a share of them (kohya_flags.py)."""
    try:
        return int(text)
    except ValueError:
        return float(text)  # argparse turns a ValueError into its one-line refusal


# fields whose flag reads values as kohya's does, differently from the field's type (kohya_flags.py turns them into
# the field's value): a share of the steps, SDXL's two text-encoder rates, `--resume` with kohya's state folder
SPEC_OVERRIDES: dict[tuple[str, str], dict] = {
    ("optim", "warmup_steps"): {"type": _int_or_share, "metavar": "N"},
    ("optim", "text_encoder_lr"): {"type": float, "nargs": "+", "metavar": "X"},
    ("output", "resume"): {"nargs": "?", "const": True, "metavar": "STATE"},
}


def _argument_spec(hint: Any) -> dict:
    kind = _plain_type(hint)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        values = [e.value for e in kind]
        if {"fp32", "fp16", "bf16"} <= set(values):
            # kohya's spellings ("no", "float") are accepted too
            return {"type": lambda v: PRECISION_ALIASES.get(v, v), "choices": values, "metavar": "{fp32,fp16,bf16}"}
        # kohya spells optimisers in any case (AdamW8bit, Lion)
        return {"type": lambda v: v.lower() if v.lower() in values else v, "choices": values}
    origin = typing.get_origin(kind)
    if origin is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return {"action": "append", "type": args[0], "metavar": "TEXT"}
        return {"nargs": len(args), "type": args[0], "metavar": "X"}
    if kind is Path:
        return {"type": Path, "metavar": "DIR"}
    metavar = {int: "N", float: "X"}.get(kind, "TEXT")
    return {"type": kind if kind in (int, float, str) else str, "metavar": metavar}


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
    else:
        return ""
    if isinstance(value, enum.Enum):
        value = value.value
    return f" (default: {value})"


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, grouped by section."""
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings")
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if (section, field.name) in NOT_FLAGS:
                continue
            names = KOHYA_NAMES.get((section, field.name), (f"--{field.name}",))
            spec = SPEC_OVERRIDES.get((section, field.name)) or _argument_spec(hints[field.name])
            help_text = field.metadata.get("help", "") + _default_text(field)
            group.add_argument(*names, dest=_dest(section, field.name), default=None, help=help_text, **spec)


def section_values(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The fields of `section` that were given on the command line."""
    values = {}
    for field in dataclasses.fields(SECTIONS[section]):
        value = getattr(args, _dest(section, field.name), None)
        if value is not None:
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return values


def build_section(args: argparse.Namespace, section: str, **extra: Any) -> Any:
    return SECTIONS[section](**{**section_values(args, section), **extra})


def dataset_config(args: argparse.Namespace, data_dir: Path, seed: Optional[int]) -> DatasetConfig:
    extra = {"seed": seed} if seed is not None else {}
    return build_section(args, "dataset", data_dir=data_dir, **extra)
