"""A merge asked for by the tab or the API: inputs from the Lora folder, the result written back into it.

`MergeRequest` is validated once, turned into a `MergeSpec`, and run by `run_merge`; the caller holds the WebUI's
queue lock and refreshes the Lora list. Pure: no WebUI import (the folders come in as paths).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import torch

from ..core.block_spec import parse_block_spec
from ..core.errors import MergeError, OutputExists
from ..core.formats import read_lora, write_lora
from ..core.merge import MergeSpec, MergeWarning, merge_loras
from .safe_paths import lora_file_inside, relative_name, resolve_inside

SAVE_DTYPES = ("fp16", "bf16", "fp32")
NO_BLOCKS = "-"


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass(frozen=True)
class MergeRequest:
    models: tuple[str, ...] = _help("input LoRAs, names inside the Lora folder (.safetensors may be left out)")
    ratios: tuple[float, ...] = _help("one multiplier per input, any sign (B − A: 1, -1)")
    output: str = _help("output name inside the Lora folder (or `subfolder`), without .safetensors")
    subfolder: str = _help("folder inside the Lora folder to write to; empty = the Lora folder", default="")
    te_ratios: Optional[tuple[float, ...]] = _help("per-input multipliers for text-encoder modules", default=None)
    unet_ratios: Optional[tuple[float, ...]] = _help("per-input multipliers for UNet modules", default=None)
    blocks: Optional[tuple[str, ...]] = _help(f"per-input block weights: numbers, a preset name, or {NO_BLOCKS}",
                                              default=None)
    new_rank: Optional[int] = _help("SVD re-rank to this rank; None = exact (ranks add up)", default=None)
    new_conv_rank: Optional[int] = _help("rank of k×k conv modules when re-ranking", default=None)
    energy: Optional[float] = _help("re-rank each module to keep this share of its energy", default=None)
    save_precision: str = _help("fp16, bf16 or fp32", default="fp16")
    device: str = _help("where the math runs: cpu or cuda", default="cpu")
    overwrite: bool = _help("replace an existing output", default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        if not self.models:
            raise MergeError("give at least one input LoRA")
        if len(self.ratios) != len(self.models):
            raise MergeError(f"{len(self.models)} models but {len(self.ratios)} ratios: give one per model")
        if self.save_precision not in SAVE_DTYPES:
            raise MergeError(f"save_precision must be one of {', '.join(SAVE_DTYPES)}, not {self.save_precision!r}")
        if self.blocks is not None and len(self.blocks) != len(self.models):
            raise MergeError(f"{len(self.models)} models but {len(self.blocks)} block specs: one per model "
                             f"({NO_BLOCKS} for none)")


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
              base_weights: Optional[Callable[[], object]] = None) -> MergeResult:
    """`base_weights` makes the base-weights provider (core/base_weights.py) DoRA/OFT/IA3/GLoRA inputs need; it is
    called only when an input has such modules."""
    lora_dir = Path(lora_dir).resolve()
    target = output_path(request, lora_dir)
    if target.exists() and not request.overwrite:
        raise OutputExists(f"{relative_name(lora_dir, target)} exists in the Lora folder; choose another name or "
                           "ask to overwrite")
    paths = [lora_file_inside(lora_dir, name, f"models[{i}]", must_exist=True) for i, name in enumerate(request.models)]
    spec = MergeSpec(ratios=tuple(request.ratios), te_ratios=request.te_ratios, unet_ratios=request.unet_ratios,
                     new_rank=request.new_rank, new_conv_rank=request.new_conv_rank, energy=request.energy,
                     device=request.device, output_name=target.stem)
    loras = [read_lora(path) for path in paths]
    if request.blocks is not None:
        blocks = tuple(None if text.strip() == NO_BLOCKS else parse_block_spec(text, lora.family, presets)
                       for text, lora in zip(request.blocks, loras))
        spec = dataclasses.replace(spec, blocks=blocks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MergeWarning)
        needs_base = base_weights is not None and any(lora.needs_base for lora in loras)
        merged = merge_loras(loras, spec, base_weights() if needs_base else None)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[request.save_precision]
    target.parent.mkdir(parents=True, exist_ok=True)
    written = write_lora(merged, target, dtype=dtype, overwrite=request.overwrite)
    return MergeResult(written, relative_name(lora_dir, written), f"<lora:{written.stem}:1>", len(merged.layers),
                       [str(w.message) for w in caught])
