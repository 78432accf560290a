"""What the tab and the HTTP API ask for, turned into `TrainConfig`s exactly once (sweeps expanded first).

A request mirrors `TrainConfig`'s sections (`network`, `optim`, `loop`, `loss`, `sample`, `output`, `speed`,
`dataset`) as plain dicts keyed by the dataclass field names, so every training setting the CLI has is reachable
here without a second list of fields. Datasets are named relative to the datasets folder and results land in the
Lora folder; `safe_paths` refuses names that would leave them.

Sweeps: in the fields listed in SWEEPABLE, a comma list (`"1e-4, 5e-5"`) expands into one run per value; several
swept fields give every combination, run one after another. Each run's output name gets a suffix naming its values.
Pure: no WebUI import.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import itertools
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional

import torch

from ..core.errors import OutputExists
from ..core.output_names import MAX_OUTPUT_NAME_BYTES
from ..train.config import (LoopConfig, LossConfig, NetworkConfig, OptimConfig, OutputConfig, Precision, Route,
                            RouteConfig, SampleConfig, SpeedConfig, TrainConfig)
from ..train.data_config import DatasetConfig
from ..train.errors import TrainConfigError
from ..train.routes import existing_outputs
from .safe_paths import NAME_MAX_BYTES, check_file_name, resolve_inside

SECTIONS: dict[str, type] = {"network": NetworkConfig, "optim": OptimConfig, "loop": LoopConfig,
                             "loss": LossConfig, "sample": SampleConfig, "output": OutputConfig,
                             "speed": SpeedConfig, "dataset": DatasetConfig}
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
# Every run of a sweep is prepared (its configs built, its folders checked) before any is queued: a thousand-by-
# thousand sweep would hold the server for minutes, and no one means to queue more than a few hundred runs.
MAX_SWEEP_RUNS = 256
# Bytes a run appends to its name in the files it writes (`_A-step00000000.safetensors`, a resume state's
# `.A.trainstate`, the temporary file beside each): what core/output_names.py leaves, so both say one limit.
OUTPUT_NAME_RESERVE = NAME_MAX_BYTES - MAX_OUTPUT_NAME_BYTES


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
    new_conv_rank: Optional[int] = _help("difference route: rank of k×k conv modules after re-ranking; empty = "
                                         "new_rank", default=None)
    network: dict = _help("NetworkConfig fields (kind, rank, alpha, ...); rank/alpha/kind may be comma lists",
                          default_factory=dict)
    optim: dict = _help("OptimConfig fields (learning_rate may be a comma list, ...)", default_factory=dict)
    loop: dict = _help("LoopConfig fields (max_steps, epochs, seed, precision: auto|fp32|fp16|bf16, ...)",
                       default_factory=dict)
    loss: dict = _help("LossConfig fields (noise_offset, min_snr_gamma)", default_factory=dict)
    sample: dict = _help("SampleConfig fields (prompts, every_n_steps, steps, ...)", default_factory=dict)
    output: dict = _help("OutputConfig fields other than its folder and name (save_precision, save_every_n_steps, "
                         "save_state, resume)", default_factory=dict)
    speed: dict = _help("SpeedConfig fields (compile, read_loss_every, fused_lowrank, ...): how fast, not what",
                        default_factory=dict)
    dataset: dict = _help("DatasetConfig fields shared by A and B (resolution, batch_size, captions, buckets, ...)",
                          default_factory=dict)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.type == "str" and not isinstance(getattr(self, f.name), str):
                raise TrainConfigError(f"{f.name} must be a string, not {type(getattr(self, f.name)).__name__}")
        for section in SECTIONS:
            check_section(section, getattr(self, section))
        if not self.name or not self.dataset_a:
            raise TrainConfigError("a training request needs a name and dataset_a")


def unknown_fields(what: str, unknown: typing.Iterable[str], known: typing.Iterable[str]) -> str:
    """One line naming each unknown field with the closest known one: `unknown field max_step (did you mean
    max_steps?)`. Typos must not be dropped silently: a dropped `max_step` trains the config's default instead."""
    known = sorted(known)
    described = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        described.append(f"{name} (did you mean {close[0]}?)" if close else name)
    plural = "s" if len(described) > 1 else ""
    return f"{what}: unknown field{plural} {', '.join(described)}; known: {', '.join(known)}"


def check_section(section: str, values: Any) -> None:
    """A section's settings must be an object of the dataclass's field names, none of them set by the server."""
    if not isinstance(values, Mapping):
        raise TrainConfigError(f"{section} must be an object of settings, not {type(values).__name__}")
    bad_keys = [k for k in values if not isinstance(k, str)]
    if bad_keys:
        raise TrainConfigError(f"{section}: setting names must be strings, not {bad_keys[0]!r}")
    known = {f.name for f in dataclasses.fields(SECTIONS[section])}
    unknown = set(values) - known
    if unknown:
        raise TrainConfigError(unknown_fields(section, unknown, known - {k for s, k in SERVER_FIELDS if s == section}))
    fixed = sorted(k for k in values if (section, k) in SERVER_FIELDS)
    if fixed:
        raise TrainConfigError(f"{section}.{fixed[0]} is set by the server; use name, dataset_a/dataset_b "
                               "and subfolder instead")


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
    count = math.prod(len(items) for _, _, items in axes)
    if count > MAX_SWEEP_RUNS:
        raise TrainConfigError(f"the sweep makes {count} runs ({' × '.join(str(len(i)) for _, _, i in axes)}); at "
                               f"most {MAX_SWEEP_RUNS} can be queued at once")
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
    """A JSON/gradio value as the dataclass field's type (strings from comma lists and text boxes included).
    Anything else is refused here, naming the field, rather than failing deeper with a TypeError."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is typing.Union:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return _coerce(value, args[0], where)
    try:
        return _coerce_plain(value, hint, origin, args, where)
    except (TypeError, ValueError, OverflowError):
        raise TrainConfigError(f"{where}: {value!r} is not a valid {_type_name(hint)}") from None


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return "list"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return f"choice ({', '.join(str(k.value) for k in hint)})"
    return getattr(hint, "__name__", str(hint))


def _coerce_plain(value: Any, hint: Any, origin: Any, args: list, where: str) -> Any:
    if value is None or (isinstance(value, (dict, list, tuple)) and origin is not tuple):
        raise TypeError(value)
    if hint is bool:
        if isinstance(value, str):
            if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.strip().lower() in ("true", "1", "yes")
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise ValueError(value)
    if isinstance(value, bool):  # JSON true is not a number
        raise TypeError(value)
    if hint is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if isinstance(value, str) and not value.strip().lstrip("+-").isdigit():
            number = float(value)  # "1e3" and "4.0" name integers too
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
        return int(value)
    if hint is float:
        return float(value)
    if origin is tuple:
        items = split_list(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise TypeError(value)
        element = args[0] if args else str
        return tuple(_coerce(item, element, f"{where}[{i}]") for i, item in enumerate(items))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if not isinstance(value, (str, hint)):
            raise TypeError(value)
        return value.strip() if isinstance(value, str) else value
    if hint is str or (isinstance(hint, type) and issubclass(hint, Path)):
        if not isinstance(value, (str, int, float)):
            raise TypeError(value)
        return str(value)
    return value


def build_section(section: str, values: Mapping[str, Any], **server: Any) -> Any:
    """One section's config object from request values; every bad key or value is a TrainConfigError naming it."""
    check_section(section, values)
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(value, hints[name], f"{section}.{name}") for name, value in values.items()}
    return cls(**kwargs, **server)


def auto_precision(model_dtype: torch.dtype) -> Precision:
    """Train in the dtype the loaded model is held in: an fp16 model needs fp16 autocast for fp32 LoRA weights."""
    return {torch.float16: Precision.FP16, torch.bfloat16: Precision.BF16}.get(model_dtype, Precision.FP32)


def _dataset(request: TrainRequest, folders: Folders, name: str, reg: str, what: str, seed: int) -> DatasetConfig:
    """A set's config; its order, flips and caption shuffles follow the run's seed (as the CLI's one --seed), unless
    the request's dataset section gives a seed of its own."""
    data_dir = resolve_inside(folders.datasets, name, what, must_exist=True)
    reg_dir = resolve_inside(folders.datasets, reg, f"{what} regularisation", must_exist=True) if reg else None
    return build_section("dataset", {"seed": seed, **request.dataset}, data_dir=data_dir, reg_dir=reg_dir)


def output_dir(request: TrainRequest, folders: Folders) -> Path:
    if not request.subfolder.strip():
        return Path(folders.loras).resolve()
    return resolve_inside(folders.loras, request.subfolder, "subfolder")


def to_train_config(request: TrainRequest, folders: Folders, model_dtype: torch.dtype) -> TrainConfig:
    """One run's TrainConfig (call after `expand_sweeps`: a comma list left in a field is an error here)."""
    loop = dict(request.loop)
    if str(loop.get("precision", AUTO_PRECISION)).strip().lower() == AUTO_PRECISION:
        loop["precision"] = auto_precision(model_dtype)
    route = RouteConfig(route=request.route, keep_parts=request.keep_parts, new_rank=request.new_rank,
                        new_conv_rank=request.new_conv_rank)
    check_file_name(request.name.strip(), "name", reserve=OUTPUT_NAME_RESERVE)
    two_sets = route.route is not Route.SINGLE
    if two_sets and not request.dataset_b:
        raise TrainConfigError(f"the {request.route} route needs dataset_b as well as dataset_a")
    if not two_sets and (request.dataset_b or request.reg_b):
        raise TrainConfigError("the single route trains dataset_a alone: leave dataset_b and reg_b out, or choose "
                               "route copier or difference")
    loop_config = build_section("loop", loop)
    return TrainConfig(
        network=build_section("network", request.network), optim=build_section("optim", request.optim),
        loop=loop_config, loss=build_section("loss", request.loss),
        sample=build_section("sample", request.sample),
        output=build_section("output", {"overwrite": request.overwrite, **request.output},
                             output_dir=output_dir(request, folders), output_name=request.name),
        route=route, speed=build_section("speed", request.speed),
        dataset_a=_dataset(request, folders, request.dataset_a, request.reg_a, "dataset_a", loop_config.seed),
        dataset_b=(_dataset(request, folders, request.dataset_b, request.reg_b, "dataset_b", loop_config.seed)
                   if two_sets else None))


def prepare_run(request: TrainRequest, folders: Folders, model_dtype: torch.dtype) -> TrainConfig:
    """Everything a run can be refused for before it is queued: the full config (each section's checks) and a file
    it would write that already exists (the result, or a kept part; the trainer's own rule, unless overwriting)."""
    config = to_train_config(request, folders, model_dtype)
    existing = existing_outputs(config)
    if existing:
        raise OutputExists(f"{existing[0].name} already exists in the Lora folder; choose another name or ask to "
                           "overwrite")
    return config


def request_from_dict(values: Mapping[str, Any]) -> TrainRequest:
    """A TrainRequest from JSON-like data; an unknown key is an error naming it and the closest known one."""
    if not isinstance(values, Mapping):
        raise TrainConfigError(f"a training request must be an object, not {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(TrainRequest)}
    unknown = set(values) - known
    if unknown:
        raise TrainConfigError(unknown_fields("request", unknown, known))
    cleaned = {k: (dict(v) if k in SECTIONS and isinstance(v, Mapping) else v) for k, v in values.items()}
    cleaned = {k: v for k, v in cleaned.items() if not (k in SECTIONS and v is None)}
    return TrainRequest(**cleaned)
