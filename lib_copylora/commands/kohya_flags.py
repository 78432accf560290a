"""kohya sd-scripts' `train_network.py` command lines, read by `train` as faithfully as CopyLoRA can.

Every flag of kohya's parser that a LoRA user plausibly passes is one of: ours already (same name, same meaning:
train_flags.py); mapped onto one of our fields here; accepted with a one-line note on stderr because it only
concerns speed, memory or logging; or refused before anything loads, saying what it would have changed and what
to use instead. A flag that would change the trained file is never dropped quietly. docs/cli.md lists them all.

A line that names the model the kohya way (`--pretrained_model_name_or_path`) is read as kohya reads it: where it
leaves a setting out, kohya's default applies (the text encoder is trained, no buckets, rank 4, ...), listed in one
note line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from ..train.errors import TrainConfigError
from .kohya_args import NATIVE_KINDS, network_fields, optimizer_fields, split_pairs
from .kohya_samples import read_sample_prompts
from .kohya_table import FLAG, NOTED, REFUSED, VALUE, VALUES
from .train_flags import _dest

# (b) mapped onto our settings: flag -> arity (what each means is in apply_kohya_flags)
MAPPED = {
    "pretrained_model_name_or_path": VALUE, "train_data_dir": VALUE, "v2": FLAG, "sdxl": FLAG,
    "network_module": VALUE, "network_args": VALUES, "optimizer_args": VALUES, "unet_lr": VALUE,
    "network_train_unet_only": FLAG, "use_8bit_adam": FLAG, "use_lion_optimizer": FLAG,
    "caption_extention": VALUE, "save_state_on_train_end": FLAG, "torch_compile": FLAG, "sample_prompts": VALUE,
}
# the settings kohya's train_network.py takes when its command line leaves them out, where ours differ
KOHYA_DEFAULTS = (
    ("network", "train_text_encoder", True, "the text encoder is trained (--network_train_unet_only: not)"),
    ("network", "rank", 4, "rank 4"),
    ("dataset", "enable_bucket", False, "no buckets (--enable_bucket)"),
    ("dataset", "folder_name_as_caption", True, "uncaptioned images take their folder's name as caption"),
    ("dataset", "max_bucket_reso", 1024, "max_bucket_reso 1024"),
    ("optim", "learning_rate", 2e-6, "--learning_rate 2e-6"),
    ("output", "save_precision", "fp32", "saved in fp32"),
)


def _kdest(name: str) -> str:
    return f"kohya__{name}"


def _add(group, name: str, arity: str, help_text: str) -> None:
    spec: dict[str, Any] = {"action": "store_true", "default": None} if arity == FLAG else \
        {"nargs": "*" if arity == VALUES else None, "default": None, "metavar": "X"}
    group.add_argument(f"--{name}", dest=_kdest(name), help=help_text, **spec)


def add_kohya_flags(parser: argparse.ArgumentParser) -> None:
    mapped = parser.add_argument_group(
        "kohya sd-scripts flags", "train_network.py's own spellings (docs/cli.md, 'kohya command lines')")
    helps = {"pretrained_model_name_or_path": "the model, as --model; the line is then read with kohya's defaults",
             "train_data_dir": "the image folder, as --data", "v2": "an SD2 model (--family sd2)",
             "sdxl": "an SDXL model (--family sdxl)",
             "network_module": "networks.lora, or lora, locon, loha, lokr",
             "network_args": "key=value: conv_dim, conv_alpha, algo, use_tucker, factor, dora_wd",
             "optimizer_args": "key=value: weight_decay, betas=B1,B2, eps",
             "unet_lr": "learning rate of the UNet modules (over --learning_rate, which the text encoder keeps)",
             "network_train_unet_only": "train the UNet only", "use_8bit_adam": "--optimizer_type adamw8bit",
             "use_lion_optimizer": "--optimizer_type lion", "caption_extention": "--caption_extension",
             "save_state_on_train_end": "--save_state", "torch_compile": "--compile unet",
             "sample_prompts": "a kohya prompt file: one preview prompt per line (--s steps, --l scale, --d seed)"}
    for name, arity in MAPPED.items():
        _add(mapped, name, arity, helps[name])
    other = parser.add_argument_group("kohya flags noted or refused", "see docs/cli.md, 'kohya command lines'")
    for name, entry in NOTED.items():
        _add(other, name, entry.arity, argparse.SUPPRESS)
    for name, entry in REFUSED.items():
        _add(other, name, entry.arity, argparse.SUPPRESS)


def _given(args, name: str) -> Any:
    return getattr(args, _kdest(name), None)


def _shown(value: Any) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


def _set(args, section: str, field: str, value: Any, flag: str) -> None:
    """Set a field from a kohya flag; the same field given differently by another flag is refused."""
    dest = _dest(section, field)
    current = getattr(args, dest, None)
    current = tuple(current) if isinstance(current, list) else current
    if current is not None and current != value:
        raise TrainConfigError(f"{flag} sets {field} to {value}, but the command line also gives {current}: keep one")
    setattr(args, dest, value)


def apply_kohya_flags(args: argparse.Namespace, note: Optional[Callable[[str], None]] = None) -> list[str]:
    """Read the kohya spellings on `args` into our settings, in place (once). Refuses (TrainConfigError) what it
    must; returns the notes (and prints each to stderr, or hands it to `note`)."""
    if getattr(args, "kohya_applied", None) is not None:
        return args.kohya_applied
    notes: list[str] = []
    for name, entry in REFUSED.items():
        value = _given(args, name)
        if value is not None and not (entry.arity != FLAG and _shown(value) in entry.neutral):
            shown = f"--{name}" if entry.arity == FLAG else f"--{name} {_shown(value)}"[:80]
            raise TrainConfigError(f"{shown} would {entry.text}")
    for name, entry in NOTED.items():
        value = _given(args, name)
        if value is not None and not (entry.arity != FLAG and _shown(value) in entry.neutral):
            notes.append(f"--{name} is not needed: {entry.text}")
    _map_forms(args)
    _map_model_and_data(args)
    _map_network(args)
    _map_rest(args, notes)
    if _given(args, "pretrained_model_name_or_path") is not None:
        _kohya_defaults(args, notes)  # before --unet_lr, which leaves --learning_rate to the text encoder
    _map_optimizer(args, notes)
    args.kohya_applied = notes
    for line in notes:
        (note or (lambda text: print(f"note: {text}", file=sys.stderr)))(line)
    return notes


def _map_forms(args) -> None:
    """kohya's forms of our own flags (train_flags.SPEC_OVERRIDES) as our fields' values."""
    rates = getattr(args, _dest("optim", "text_encoder_lr"), None)
    if isinstance(rates, list):
        if len(set(rates)) > 1 or len(rates) > 2:
            raise TrainConfigError(f"--text_encoder_lr {' '.join(map(str, rates))}: CopyLoRA trains SDXL's two text "
                                   "encoders at one rate: give one value")
        setattr(args, _dest("optim", "text_encoder_lr"), rates[0])
    resume = getattr(args, _dest("output", "resume"), None)
    if isinstance(resume, str):
        raise TrainConfigError(f"--resume {resume[:60]}: CopyLoRA cannot read kohya's (accelerate's) state folders; "
                               "it continues its own runs from the .trainstate beside the output: give --resume "
                               "alone")


def _map_model_and_data(args) -> None:
    kohya_model = _given(args, "pretrained_model_name_or_path")
    if kohya_model is not None:
        if args.model is not None:
            raise TrainConfigError("give the model once: --model or --pretrained_model_name_or_path")
        args.model = Path(kohya_model)
    if args.model is None:
        raise TrainConfigError("give the model: --model PATH (kohya's --pretrained_model_name_or_path)")
    data = _given(args, "train_data_dir")
    if data is not None:
        if args.data is not None:
            raise TrainConfigError("give the image folder once: --data or --train_data_dir")
        args.data = Path(data)
    families = [f for f, flag in (("sd2", "v2"), ("sdxl", "sdxl")) if _given(args, flag)]
    if families:
        if len(families) > 1 or (args.family is not None and args.family != families[0]):
            raise TrainConfigError(f"--v2, --sdxl and --family disagree ({', '.join(families + [args.family or ''])})")
        args.family = families[0]


def _map_network(args) -> None:
    module = _given(args, "network_module")
    if module is None:
        module = getattr(args, _dest("network", "kind"), None) or "lora"
    elif module not in NATIVE_KINDS and module != "networks.lora":
        if module == "lycoris.kohya":
            raise TrainConfigError(
                "--network_module lycoris.kohya would train LyCORIS' preset 'full', which also adapts conv_in, "
                "conv_out and the time embedding; CopyLoRA's lycoris networks keep kohya's module set: write "
                "--network_module locon (or loha, lokr) and keep --network_args")
        raise TrainConfigError(f"--network_module {module} is not a network CopyLoRA trains: use networks.lora, "
                               f"or {', '.join(NATIVE_KINDS)}")
    kind = "lora" if module == "networks.lora" else module
    if _given(args, "network_module") is not None:
        _set(args, "network", "kind", kind, f"--network_module {module}")
    fields = network_fields(module, kind, split_pairs("--network_args", _given(args, "network_args")))
    for field, value in fields.items():
        if field == "kind":
            setattr(args, _dest("network", "kind"), value)
        else:
            _set(args, "network", field, value, "--network_args")


def _map_optimizer(args, notes: list[str]) -> None:
    chosen = [k for k, flag in (("adamw8bit", "use_8bit_adam"), ("lion", "use_lion_optimizer")) if _given(args, flag)]
    if len(chosen) > 1:
        raise TrainConfigError("--use_8bit_adam and --use_lion_optimizer pick two optimisers: keep one")
    for kind in chosen:
        _set(args, "optim", "optimizer", kind, "--use_8bit_adam" if kind == "adamw8bit" else "--use_lion_optimizer")
    optimizer = getattr(args, _dest("optim", "optimizer"), None) or "adamw"
    pairs = split_pairs("--optimizer_args", _given(args, "optimizer_args"))
    for field, value in optimizer_fields(optimizer, pairs).items():
        _set(args, "optim", field, value, "--optimizer_args")
    unet_lr = _given(args, "unet_lr")
    if unet_lr is not None:
        learning_rate = getattr(args, _dest("optim", "learning_rate"), None)
        # kohya: --unet_lr for the UNet, --learning_rate for a text encoder without --text_encoder_lr
        if learning_rate is not None and getattr(args, _dest("optim", "text_encoder_lr"), None) is None:
            setattr(args, _dest("optim", "text_encoder_lr"), learning_rate)
        setattr(args, _dest("optim", "learning_rate"), float(unet_lr))
    warmup = getattr(args, _dest("optim", "warmup_steps"), None)
    if isinstance(warmup, float):  # kohya: a float below 1 is a share of the training steps
        steps = getattr(args, _dest("loop", "max_steps"), None)
        if not 0 <= warmup < 1 or not steps or getattr(args, _dest("loop", "epochs"), None) is not None:
            raise TrainConfigError(f"--lr_warmup_steps {warmup} is a share of the training steps, which CopyLoRA "
                                   "knows only with --max_train_steps (and no --max_train_epochs): give a number "
                                   "of steps")
        setattr(args, _dest("optim", "warmup_steps"), int(warmup * steps))
        notes.append(f"--lr_warmup_steps {warmup} of {steps} steps: {int(warmup * steps)} warm-up steps")


def _map_rest(args, notes: list[str]) -> None:
    steps, epochs = (getattr(args, _dest("loop", f), None) for f in ("max_steps", "epochs"))
    if steps is not None and epochs is not None:  # kohya: epochs override steps
        setattr(args, _dest("loop", "max_steps"), None)
        notes.append(f"--max_train_epochs {epochs} overrides --max_train_steps {steps}, as in kohya's scripts")
    if _given(args, "network_train_unet_only"):
        _set(args, "network", "train_text_encoder", False, "--network_train_unet_only")
    extension = _given(args, "caption_extention")
    if extension is not None:
        _set(args, "dataset", "caption_extension", extension, "--caption_extention")
    if _given(args, "save_state_on_train_end"):
        _set(args, "output", "save_state", True, "--save_state_on_train_end")
        notes.append("--save_state_on_train_end: a resume state is written at the end and beside every save")
    if _given(args, "torch_compile"):
        _set(args, "speed", "compile", "unet", "--torch_compile")
    _map_sample_prompts(args, notes)


def _map_sample_prompts(args, notes: list[str]) -> None:
    given = _given(args, "sample_prompts")
    if given is None:
        return
    if getattr(args, _dest("sample", "prompts"), None):
        raise TrainConfigError("give the preview prompts once: --sample_prompt TEXT or --sample_prompts FILE")
    prompts, settings, more = read_sample_prompts(Path(given))
    setattr(args, _dest("sample", "prompts"), prompts)
    for field, value in settings.items():
        _set(args, "sample", field, value, f"--sample_prompts {given}")
    notes.extend(more)


def _kohya_defaults(args, notes: list[str]) -> None:
    applied = []
    for section, field, value, text in KOHYA_DEFAULTS:
        dest = _dest(section, field)
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)
            applied.append(text)
    if getattr(args, _dest("loop", "max_steps"), None) is None and \
            getattr(args, _dest("loop", "epochs"), None) is None:
        setattr(args, _dest("loop", "max_steps"), 1600)
        applied.append("1600 steps")
    if applied:
        notes.append("kohya's defaults for what this line leaves out: " + ", ".join(applied))
