"""What the tab and the HTTP API ask for, turned into `TrainConfig`s exactly once (sweeps expanded first).

A request mirrors `TrainConfig`'s sections (`network`, `optim`, `loop`, `loss`, `sample`, `output`, `dataset`) as
plain dicts keyed by the dataclass field names, so every training setting the CLI has is reachable here without a
second list of fields. Datasets are named relative to the datasets folder and results land in the Lora folder;
`safe_paths` refuses names that would leave them.

Sweeps: in the fields listed in SWEEPABLE, a comma list (`"1e-4, 5e-5"`) expands into one run per value; several
swept fields give every combination, run one after another. Each run's output name gets a suffix naming its values.
Pure: no WebUI import.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional

import torch

from ..train.config import (LoopConfig, LossConfig, NetworkConfig, OptimConfig, OutputConfig, Precision,
                            RouteConfig, SampleConfig, TrainConfig)
from ..train.data_config import DatasetConfig
from ..train.errors import TrainConfigError
from .safe_paths import resolve_inside

SECTIONS: dict[str, type] = {"network": NetworkConfig, "optim": OptimConfig, "loop": LoopConfig,
                             "loss": LossConfig, "sample": SampleConfig, "output": OutputConfig,
                             "dataset": DatasetConfig}
# (section, field) → the short label its value gets in the output name of a swept run
SWEEPABLE: dict[tuple[str, str], str] = {
    ("network", "kind"): "", ("network", "rank"): "r", ("network", "alpha"): "a",
    ("network", "conv_rank"): "cr", ("network", "conv_alpha"): "ca",
    ("optim", "optimizer"): "", ("optim", "learning_rate"): "lr", ("optim", "text_encoder_lr"): "telr",
    ("optim", "weight_decay"): "wd", ("optim", "scheduler"): "",
    ("loop", "max_steps"): "s", ("loop", "epochs"): "e", ("loop", "seed"): "seed", ("loop", "clip_skip"): "cs",
    ("loss", "noise_offset"): "no", ("loss", "min_snr_gamma"): "snr",
}
# Fields the server fills in: the request names things relative to the configured folders instead.
SERVER_FIELDS = {("output", "output_dir"), ("output", "output_name"), ("dataset", "data_dir"),
                 ("dataset", "reg_dir")}
AUTO_PRECISION = "auto"


class Folders(NamedTuple):
    """The folders requests are resolved in (from `--copylora-dir`, the Lora folder and the settings)."""

    datasets: Path  # image sets: <copylora dir>/datasets
    outputs: Path  # previews and logs of runs: <copylora dir>/outputs
    loras: Path  # the WebUI's Lora folder: results are written here (or in `subfolder` of it)


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass(frozen=True)
class TrainRequest:
    """One submission from the tab or the API; sweeps make it several runs."""

    name: str = _help("output name (file name without .safetensors, and the <lora:name:1> tag)")
    dataset_a: str = _help("image set A (or the only set), a folder name inside the datasets folder")
    route: str = _help("single, copier (B trained on base + A) or difference (B − A)", default="single")
    dataset_b: str = _help("image set B for the copier and difference routes", default="")
    reg_a: str = _help("regularisation images for A, a folder inside the datasets folder; empty = none",
                       default="")
    reg_b: str = _help("regularisation images for B; empty = none", default="")
    subfolder: str = _help("folder inside the Lora folder the result is written to; empty = the Lora folder",
                           default="")
    overwrite: bool = _help("replace an existing result of the same name", default=False)
    keep_parts: bool = _help("also save A (and B) beside the result", default=False)
    new_rank: Optional[int] = _help("difference route: SVD re-rank B − A to this rank", default=None)
    network: dict = _help("NetworkConfig fields (kind, rank, alpha, ...); rank/alpha/kind may be comma lists",
                          default_factory=dict)
    optim: dict = _help("OptimConfig fields (learning_rate may be a comma list, ...)", default_factory=dict)
    loop: dict = _help("LoopConfig fields (max_steps, epochs, seed, precision: auto|fp32|fp16|bf16, ...)",
                       default_factory=dict)
    loss: dict = _help("LossConfig fields (noise_offset, min_snr_gamma)", default_factory=dict)
    sample: dict = _help("SampleConfig fields (prompts, every_n_steps, steps, ...)", default_factory=dict)
    output: dict = _help("OutputConfig fields other than its folder and name (save_precision, save_every_n_steps, "
                         "save_state, resume)", default_factory=dict)
    dataset: dict = _help("DatasetConfig fields shared by A and B (resolution, batch_size, captions, buckets, ...)",
                          default_factory=dict)

    def __post_init__(self) -> None:
        for section in SECTIONS:
            values = getattr(self, section)
            if not isinstance(values, Mapping):
                raise TrainConfigError(f"{section} must be an object of settings, not {type(values).__name__}")
            known = {f.name for f in dataclasses.fields(SECTIONS[section])}
            unknown = sorted(set(values) - known)
            if unknown:
                raise TrainConfigError(f"{section}: unknown setting(s) {', '.join(unknown)}; known: "
                                       f"{', '.join(sorted(known))}")
            fixed = sorted(k for k in values if (section, k) in SERVER_FIELDS)
            if fixed:
                raise TrainConfigError(f"{section}.{fixed[0]} is set by the server; use name, dataset_a/dataset_b "
                                       "and subfolder instead")
        if not self.name or not self.dataset_a:
            raise TrainConfigError("a training request needs a name and dataset_a")


def split_list(value: Any) -> list[Any]:
    """`"1e-4, 5e-5"` → ["1e-4", "5e-5"]; a list stays a list; anything else is one value."""
    if isinstance(value, str) and "," in value:
        items = [item.strip() for item in value.split(",")]
        if any(not item for item in items):
            raise TrainConfigError(f"{value!r}: an empty item in a comma list")
        return items
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _label(section: str, name: str, value: Any) -> str:
    text = re.sub(r"[^A-Za-z0-9.+-]", "", str(value))
    return f"{SWEEPABLE[(section, name)]}{text}"


def expand_sweeps(request: TrainRequest) -> list[TrainRequest]:
    """One request per combination of the swept values (the request itself when nothing is swept)."""
    axes: list[tuple[str, str, list[Any]]] = []
    for (section, name) in SWEEPABLE:
        values = getattr(request, section)
        if name in values:
            items = split_list(values[name])
            if len(items) > 1:
                axes.append((section, name, items))
    if not axes:
        return [request]
    runs = []
    for combination in itertools.product(*(items for _, _, items in axes)):
        sections = {s: dict(getattr(request, s)) for s in SECTIONS}
        labels = []
        for (section, name, _), value in zip(axes, combination):
            sections[section][name] = value
            labels.append(_label(section, name, value))
        runs.append(dataclasses.replace(request, name=f"{request.name}-{'-'.join(labels)}", **sections))
    return runs


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """A JSON/gradio value as the dataclass field's type (strings from comma lists and text boxes included)."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is typing.Union:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return _coerce(value, args[0], where)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.strip().lower() in ("true", "1", "yes")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "." in value else int(value)
        if hint is float:
            return float(value)
        if origin is tuple:
            return tuple(split_list(value)) if isinstance(value, str) else tuple(value)
    except (TypeError, ValueError):
        raise TrainConfigError(f"{where}: {value!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return value.strip() if isinstance(value, str) and isinstance(hint, type) and issubclass(hint, enum.Enum) \
        else value


def build_section(section: str, values: Mapping[str, Any], **server: Any) -> Any:
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(value, hints[name], f"{section}.{name}") for name, value in values.items()}
    return cls(**kwargs, **server)


def auto_precision(model_dtype: torch.dtype) -> Precision:
    """Train in the dtype the loaded model is held in: an fp16 model needs fp16 autocast for fp32 LoRA weights."""
    return {torch.float16: Precision.FP16, torch.bfloat16: Precision.BF16}.get(model_dtype, Precision.FP32)


def _dataset(request: TrainRequest, folders: Folders, name: str, reg: str, what: str) -> DatasetConfig:
    data_dir = resolve_inside(folders.datasets, name, what, must_exist=True)
    reg_dir = resolve_inside(folders.datasets, reg, f"{what} regularisation", must_exist=True) if reg else None
    return build_section("dataset", request.dataset, data_dir=data_dir, reg_dir=reg_dir)


def output_dir(request: TrainRequest, folders: Folders) -> Path:
    if not request.subfolder.strip():
        return Path(folders.loras).resolve()
    return resolve_inside(folders.loras, request.subfolder, "subfolder")


def to_train_config(request: TrainRequest, folders: Folders, model_dtype: torch.dtype) -> TrainConfig:
    """One run's TrainConfig (call after `expand_sweeps`: a comma list left in a field is an error here)."""
    loop = dict(request.loop)
    if str(loop.get("precision", AUTO_PRECISION)).strip().lower() == AUTO_PRECISION:
        loop["precision"] = auto_precision(model_dtype)
    routes = {"route": request.route, "keep_parts": request.keep_parts, "new_rank": request.new_rank}
    two_sets = request.route != "single"
    if two_sets and not request.dataset_b:
        raise TrainConfigError(f"the {request.route} route needs dataset_b as well as dataset_a")
    return TrainConfig(
        network=build_section("network", request.network), optim=build_section("optim", request.optim),
        loop=build_section("loop", loop), loss=build_section("loss", request.loss),
        sample=build_section("sample", request.sample),
        output=build_section("output", {"overwrite": request.overwrite, **request.output},
                             output_dir=output_dir(request, folders), output_name=request.name),
        route=RouteConfig(**routes),
        dataset_a=_dataset(request, folders, request.dataset_a, request.reg_a, "dataset_a"),
        dataset_b=_dataset(request, folders, request.dataset_b, request.reg_b, "dataset_b") if two_sets else None)


def request_from_dict(values: Mapping[str, Any]) -> TrainRequest:
    """A TrainRequest from JSON-like data; unknown top-level keys are an error that lists the known ones."""
    known = {f.name for f in dataclasses.fields(TrainRequest)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrainConfigError(f"unknown request field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    cleaned = {k: (dict(v) if k in SECTIONS and v is not None else v) for k, v in values.items()}
    cleaned = {k: v for k, v in cleaned.items() if not (k in SECTIONS and v is None)}
    return TrainRequest(**cleaned)
