"""One merge run for every face: the CLI (`commands/merge.py`), the tab and the HTTP API.

`run_merge_job` does what each of them needs done the same way: the count checks, reading the inputs, the block
specs parsed against each input's family, the merge with its warnings captured, the one dtype table, the atomic
write. `MergeRequest` is what the tab and the API send (inputs named inside the Lora folder); its merge settings
are `MergeSpec`'s own fields, defaults and help texts, so the two cannot drift apart. `run_merge` resolves a
request inside the Lora folder; the caller holds the WebUI's queue lock and refreshes the Lora list (the service).
Pure: no WebUI import.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, NamedTuple, Optional, Sequence

from ..core.errors import MergeError, OutputExists
from ..core.merge import MergeSpec
from .merge_options import NO_BLOCKS, SAVE_ALIASES, SAVE_PRECISIONS, save_dtype
from .safe_paths import lora_file_inside, relative_name, resolve_inside

if TYPE_CHECKING:
    from ..core.base_weights import BaseWeights
    from ..core.lorafile import LoraFile

BaseProvider = Callable[[], "BaseWeights"]


def check_inputs(models: int, ratios: int, blocks: Optional[int]) -> None:
    """The counts both faces check before anything is read."""
    if not models:
        raise MergeError("give at least one input LoRA")
    if ratios != models:
        raise MergeError(f"{models} models but {ratios} ratios: give one ratio per model")
    if blocks is not None and blocks != models:
        raise MergeError(f"{models} models but {blocks} block specs: give one per model ({NO_BLOCKS} for none)")


@dataclass(frozen=True)
class MergeJob:
    """One merge of files into a file. Both faces build one and call `run_merge_job`."""

    inputs: tuple[Path, ...]
    spec: MergeSpec  # ratios and rank policy; the block weights are added once the inputs' families are known
    target: Path
    save_precision: str = "fp16"
    overwrite: bool = False
    block_specs: Optional[tuple[str, ...]] = None  # per input: numbers, a preset name, or NO_BLOCKS
    presets: Mapping[str, Sequence[float]] = field(default_factory=dict)
    # The weights base-aware kinds (DoRA, OFT/BOFT, IA3, GLoRA) modify: the CLI's `--base CHECKPOINT`, the WebUI's
    # loaded model (webui/base_weights.py, through the service's host). A provider, not the weights: it is called
    # in `run_merge_job` only when an input has such modules, so a checkpoint nobody needs is neither hashed nor
    # opened, and the loaded model is read under the host's exclusive section.
    base_weights: Optional[BaseProvider] = None

    def __post_init__(self) -> None:
        check_inputs(len(self.inputs), len(self.spec.ratios),
                     None if self.block_specs is None else len(self.block_specs))
        if SAVE_ALIASES.get(self.save_precision, self.save_precision) not in SAVE_PRECISIONS:
            raise MergeError(f"save precision must be one of {', '.join(SAVE_PRECISIONS)}, "
                             f"not {self.save_precision!r}")


class MergeOutcome(NamedTuple):
    loras: list["LoraFile"]
    merged: "LoraFile"
    spec: MergeSpec  # with the block weights
    written: Path
    warnings: list[str]
    seconds: tuple[float, float, float]  # read, merge, write
    notes: list[str]  # what the readers accepted leniently, per input
    base: Optional["BaseWeights"]  # the base the merge used; None when no input needed one


def _parse_blocks(job: MergeJob, loras) -> Optional[tuple]:
    if job.block_specs is None or all(text.strip() == NO_BLOCKS for text in job.block_specs):
        return None
    from ..core.block_spec import parse_block_spec

    return tuple(None if text.strip() == NO_BLOCKS else parse_block_spec(text, lora.family, job.presets)
                 for text, lora in zip(job.block_specs, loras))


def run_merge_job(job: MergeJob) -> MergeOutcome:
    from ..core.formats import read_lora, write_lora
    from ..core.merge import MergeWarning, merge_loras

    started = time.perf_counter()
    loras = [read_lora(path) for path in job.inputs]
    spec = dataclasses.replace(job.spec, blocks=_parse_blocks(job, loras))
    needs_base = any(lora.needs_base for lora in loras)
    base = job.base_weights() if needs_base and job.base_weights is not None else None
    read_done = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MergeWarning)
        merged = merge_loras(loras, spec, base)
    merge_done = time.perf_counter()
    job.target.parent.mkdir(parents=True, exist_ok=True)
    written = write_lora(merged, job.target, dtype=save_dtype(job.save_precision), overwrite=job.overwrite)
    seconds = (read_done - started, merge_done - read_done, time.perf_counter() - merge_done)
    notes = [f"{lora.name}: {note}" for lora in loras for note in lora.notes]
    return MergeOutcome(loras, merged, spec, written, [str(w.message) for w in caught], seconds, notes, base)


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


_SPEC_FIELDS = {f.name: f for f in dataclasses.fields(MergeSpec)}
# MergeSpec fields a request sets itself: the ratios and block weights come per input, the name from `output`.
NOT_FROM_SPEC = ("ratios", "blocks", "output_name")


def _from_spec(name: str):
    """A request field with MergeSpec's default and help text for the field of the same name."""
    spec_field = _SPEC_FIELDS[name]
    return field(default=spec_field.default, metadata=dict(spec_field.metadata))


@dataclass(frozen=True)
class MergeRequest:
    models: tuple[str, ...] = _help("input LoRAs, names inside the Lora folder (.safetensors may be left out)")
    ratios: tuple[float, ...] = _help("one multiplier per input, any sign (B − A: 1, -1)")
    output: str = _help("output name inside the Lora folder (or `subfolder`), without .safetensors")
    subfolder: str = _help("folder inside the Lora folder to write to; empty = the Lora folder", default="")
    te_ratios: Optional[tuple[float, ...]] = _from_spec("te_ratios")
    unet_ratios: Optional[tuple[float, ...]] = _from_spec("unet_ratios")
    blocks: Optional[tuple[str, ...]] = _help(f"per-input block weights: numbers, a preset name, or {NO_BLOCKS}",
                                              default=None)
    new_rank: Optional[int] = _from_spec("new_rank")
    new_conv_rank: Optional[int] = _from_spec("new_conv_rank")
    energy: Optional[float] = _from_spec("energy")
    save_precision: str = _help("fp16, bf16 or fp32", default="fp16")
    device: str = _from_spec("device")
    overwrite: bool = _help("replace an existing output", default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        check_inputs(len(self.models), len(self.ratios), None if self.blocks is None else len(self.blocks))
        if self.save_precision not in SAVE_PRECISIONS:
            raise MergeError(f"save_precision must be one of {', '.join(SAVE_PRECISIONS)}, not {self.save_precision!r}")

    def spec(self, output_name: str) -> MergeSpec:
        """The MergeSpec of this request (its block weights are parsed once the inputs are read)."""
        values = {name: getattr(self, name) for name in _SPEC_FIELDS if name not in NOT_FROM_SPEC}
        return MergeSpec(ratios=tuple(self.ratios), output_name=output_name, **values)


class MergeResult(NamedTuple):
    path: Path
    name: str  # relative to the Lora folder
    tag: str
    modules: int
    warnings: list[str]


def output_path(request: MergeRequest, lora_dir: Path) -> Path:
    folder = resolve_inside(lora_dir, request.subfolder, "subfolder") if request.subfolder.strip() else lora_dir
    return lora_file_inside(folder, request.output, "output")


def run_merge(request: MergeRequest, lora_dir: Path, presets: Mapping[str, Sequence[float]],
              base_weights: Optional[BaseProvider] = None) -> MergeResult:
    """`base_weights`: the host's model as the base of DoRA/OFT/IA3/GLoRA inputs (see `MergeJob.base_weights`)."""
    lora_dir = Path(lora_dir).resolve()
    target = output_path(request, lora_dir)
    if target.exists() and not request.overwrite:
        raise OutputExists(f"{relative_name(lora_dir, target)} exists in the Lora folder; choose another name or "
                           "ask to overwrite")
    paths = [lora_file_inside(lora_dir, name, f"models[{i}]", must_exist=True) for i, name in enumerate(request.models)]
    job = MergeJob(tuple(paths), request.spec(target.stem), target, request.save_precision, request.overwrite,
                   None if request.blocks is None else tuple(request.blocks), presets, base_weights)
    outcome = run_merge_job(job)
    written = outcome.written
    return MergeResult(written, relative_name(lora_dir, written), f"<lora:{written.stem}:1>",
                       len(outcome.merged.layers), outcome.warnings)
