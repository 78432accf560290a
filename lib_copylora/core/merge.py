"""Merging LoRAs: ΔW = Σ ratioᵢ · blockᵢ(module) · ΔWᵢ, stored exactly (concat) or re-ranked by SVD.

The merge is linear in its ratios (any sign), optionally per block and separately for the text encoder and the
UNet. Without a rank policy the output is exact: low-rank modules are concatenated (concat.py) and modules of kinds
with no low-rank form (LoHa, LoKr, full) become full weight differences. With one, every module is re-ranked to the
best approximation of its exact delta (rerank.py). Kinds whose ΔW depends on the weight they modify (DoRA, OFT,
IA3, GLoRA) need a base (base_weights.py); their modules' exact ΔW is computed against it (base_merge.py).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import torch

from . import concat
from .base_merge import base_aware_terms, require_base
from .base_weights import BaseWeights
from .concat import Part
from .devices import device_problem, parse_device
from .errors import FamilyMismatch, MergeError
from .layers import Layer
from .lorafile import LoraFile
from .metadata import standard_metadata, with_recipe
from .output_names import output_name_problem
from .naming import Component, component_of
from .rerank import DenseTerm, RankPolicy, rerank_terms

if TYPE_CHECKING:
    from .block_spec import BlockWeights


class MergeWarning(UserWarning):
    """Something the user should know about a merge that still succeeded (e.g. a module stored as full diff)."""


def _ratios(values, name: str) -> Optional[tuple[float, ...]]:
    if values is None:
        return None
    ratios = tuple(float(v) for v in values)
    if not all(math.isfinite(r) for r in ratios):
        raise MergeError(f"{name} must be finite numbers, got {list(values)}")
    return ratios


@dataclass(frozen=True)
class MergeSpec:
    """What to merge with what weights, and how to store the result."""

    ratios: tuple[float, ...] = field(metadata={"help": "one multiplier per input LoRA, any sign (B − A: 1 -1)"})
    te_ratios: Optional[tuple[float, ...]] = field(
        default=None, metadata={"help": "per-input multipliers for text-encoder modules, replacing `ratios` there"})
    unet_ratios: Optional[tuple[float, ...]] = field(
        default=None, metadata={"help": "per-input multipliers for UNet modules, replacing `ratios` there"})
    blocks: Optional[tuple[Optional["BlockWeights"], ...]] = field(
        default=None, metadata={"help": "per-input block weights (None for an input: all ones), multiplying "
                                        "each module's ratio by its block's weight"})
    new_rank: Optional[int] = field(
        default=None, metadata={"help": "SVD re-rank linear and 1×1 conv modules to this rank (None: exact concat)"})
    new_conv_rank: Optional[int] = field(
        default=None, metadata={"help": "rank for k×k conv modules when re-ranking (None: same as new_rank)"})
    energy: Optional[float] = field(
        default=None, metadata={"help": "re-rank to the smallest rank keeping this share (0, 1] of the squared "
                                        "singular values, capped by new_rank / new_conv_rank"})
    device: str = field(default="cpu", metadata={"help": "where the float32 math runs: cpu or cuda[:n]"})
    output_name: str = field(default="merged", metadata={"help": "the output's `ss_output_name` (card name)"})

    def __post_init__(self):
        ratios = _ratios(self.ratios, "ratios")
        if not ratios:
            raise MergeError("give at least one ratio (one per input LoRA)")
        object.__setattr__(self, "ratios", ratios)
        for name in ("te_ratios", "unet_ratios"):
            values = _ratios(getattr(self, name), name)
            if values is not None and len(values) != len(ratios):
                raise MergeError(f"{len(values)} {name} for {len(ratios)} ratios: give one per input LoRA")
            object.__setattr__(self, name, values)
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple(self.blocks))
            if len(self.blocks) != len(ratios):
                raise MergeError(f"{len(self.blocks)} block specs for {len(ratios)} ratios: give one per input")
        if self.new_conv_rank is not None and self.new_rank is None:
            raise MergeError("new_conv_rank needs new_rank (the rank of the linear modules) as well")
        self.policy  # validates the ranks and the energy
        device = parse_device(self.device) if isinstance(self.device, str) else None
        if device is None or device.type not in ("cpu", "cuda"):
            raise MergeError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        problem = output_name_problem(self.output_name)
        if problem:
            raise MergeError(f"output name: {problem}")

    @property
    def policy(self) -> RankPolicy:
        return RankPolicy(self.new_rank, self.new_conv_rank, self.energy)

    @property
    def reranks(self) -> bool:
        return self.new_rank is not None or self.energy is not None

    def recipe(self, loras: Sequence[LoraFile], base: Optional[dict] = None) -> dict:
        """What the output's `copylora` metadata records of this merge: inputs (with the hashes their reader
        took), ratios, block weights and rank policy, and the base model (named by its hash, as its reader
        described it) when base-aware kinds needed one. No I/O: an input not read from a file has no file hash."""
        blocks = None if self.blocks is None else [None if b is None else b.describe() for b in self.blocks]
        return {
            "operation": "merge",
            "inputs": [{"name": lora.name, "file": None if lora.path is None else Path(lora.path).name,
                        "sha256": lora.sha256, "sshs_model_hash": lora.metadata.get("sshs_model_hash"),
                        "family": lora.family.value} for lora in loras],
            "ratios": list(self.ratios),
            "te_ratios": None if self.te_ratios is None else list(self.te_ratios),
            "unet_ratios": None if self.unet_ratios is None else list(self.unet_ratios),
            "blocks": blocks,
            "rank": {"mode": "svd", **self.policy.describe()} if self.reranks else {"mode": "concat"},
            "base": base,
        }

    def weight(self, index: int, module: str) -> float:
        """The multiplier of input `index` for `module`: its (te/unet) ratio times its block weight."""
        ratio = self.ratios[index]
        if self.te_ratios is not None or self.unet_ratios is not None:
            component = component_of(module)
            if component is None:
                raise MergeError(f"module {module} is neither text encoder nor UNet, so te/unet ratios cannot apply")
            override = self.te_ratios if component is Component.TEXT_ENCODER else self.unet_ratios
            if override is not None:
                ratio = override[index]
        blocks = self.blocks[index] if self.blocks is not None else None
        return ratio if blocks is None else ratio * float(blocks.weight_for(module))


def merge_loras(loras: Sequence[LoraFile], spec: MergeSpec, base: Optional[BaseWeights] = None) -> LoraFile:
    """Merge the inputs as `spec` says; `base` gives the weights base-aware kinds modify (needed only when an input
    has such modules). Emits a MergeWarning for anything stored differently than asked."""
    loras = list(loras)
    if len(spec.ratios) != len(loras):
        raise MergeError(f"{len(loras)} models but {len(spec.ratios)} ratios: give one ratio per model")
    family = _common_family(loras)
    _check_device(spec.device)
    modules = _collect_parts(loras, spec)
    if not modules:
        raise MergeError("nothing to merge: every module has ratio or block weight 0")
    needing = require_base(modules, family, base)
    based = base_aware_terms(modules, needing, base) if needing else {}
    layers, notes = (_rerank_layers if spec.reranks else _concat_layers)(modules, spec, based)
    notes = _uncovered_block_notes(loras, spec) + notes
    merged = LoraFile(layers=layers, family=family)
    recipe = spec.recipe(loras, base.describe() if needing else None)
    merged.metadata = with_recipe(standard_metadata(merged, spec.output_name), recipe)
    for note in notes:
        warnings.warn(note, MergeWarning, stacklevel=2)
    return merged


def _common_family(loras: Sequence[LoraFile]):
    first = loras[0]
    for other in loras[1:]:
        if other.family is not first.family:
            raise FamilyMismatch(
                f"{first.name} is a {first.family.label} LoRA but {other.name} is {other.family.label}: "
                "LoRAs for different model families cannot be merged")
    return first.family


def _check_device(device: str) -> None:
    problem = device_problem(torch.device(device))
    if problem:
        raise MergeError(f"device {device} asked for, but {problem}: use --device cpu")


def _collect_parts(loras: Sequence[LoraFile], spec: MergeSpec) -> dict[str, list[Part]]:
    """Module name → its non-zero parts, in first-seen order. A module present in only some inputs is kept;
    a part whose weight is exactly 0 contributes nothing and is left out."""
    modules: dict[str, list[Part]] = {}
    for index, lora in enumerate(loras):
        for name, layer in lora.layers.items():
            weight = spec.weight(index, name)
            if weight != 0.0:
                modules.setdefault(name, []).append(Part(layer, weight, lora.name))
    return modules


def _uncovered_block_notes(loras: Sequence[LoraFile], spec: MergeSpec) -> list[str]:
    """A short block format zeroes the blocks it does not name (as the LoRA Block Weight extension does): say so
    when an input has modules there, since that silently drops part of it."""
    notes = []
    for index, lora in enumerate(loras):
        blocks = spec.blocks[index] if spec.blocks is not None else None
        note = blocks.uncovered_note(lora.name, lora.layers) if blocks is not None else None
        if note is not None:
            notes.append(note)
    return notes


def _concat_layers(modules: dict[str, list[Part]], spec: MergeSpec,
                   based: dict[str, DenseTerm]) -> tuple[dict[str, Layer], list[str]]:
    layers: dict[str, Layer] = {}
    full: list[str] = []
    for name, parts in modules.items():
        if name in based:
            layers[name] = concat.full_from_term(name, based[name], parts)
            continue
        shape = concat.module_shape(name, parts)
        if concat.is_low_rank(parts):
            layers[name] = concat.concat_layers(name, parts, shape)
        else:
            layers[name] = concat.sum_full(name, parts, shape)
            full.append(name)
    notes = []
    if full:
        notes.append(f"{len(full)} module(s) include LoHa/LoKr/full/norm layers, which have no low-rank form: stored "
                     f"exactly as full weight differences (give a new rank to get LoRA factors): {_names(full)}")
    if based:
        notes.append(f"{len(based)} module(s) are DoRA/OFT/IA3/GLoRA, whose ΔW depends on the base: computed "
                     f"against it and stored exactly as full weight differences: {_names(list(based))}")
    return layers, notes


def _rerank_layers(modules: dict[str, list[Part]], spec: MergeSpec,
                   based: dict[str, DenseTerm]) -> tuple[dict[str, Layer], list[str]]:
    terms = {}
    dropped_bias: list[str] = []
    kept_full: dict[str, Layer] = {}
    for name, parts in modules.items():
        if name in based:
            terms[name] = based[name]
            continue
        shape = concat.module_shape(name, parts)
        if len(shape) == 1:  # norm weights: a LoRA cannot hold a 1-D difference, so they stay exact
            kept_full[name] = concat.sum_full(name, parts, shape)
        elif concat.is_low_rank(parts):
            terms[name] = concat.low_rank_term(parts, shape)
        else:
            terms[name] = concat.dense_term(parts, shape)
            if concat.merged_bias(parts) is not None:
                dropped_bias.append(name)
    factors = rerank_terms(terms, spec.policy, spec.device)
    layers: dict[str, Layer] = {}
    for name in modules:
        if name in kept_full:
            layers[name] = kept_full[name]
        else:
            up, down = factors[name]
            layers[name] = concat.layer_from_factors(up, down, terms[name].shape)
    notes = []
    if kept_full:
        notes.append(f"{len(kept_full)} norm module(s) have 1-D weights, which a LoRA cannot hold: kept exact as "
                     f"full differences: {_names(list(kept_full))}")
    if dropped_bias:
        notes.append(f"{len(dropped_bias)} module(s) had bias differences, which a low-rank LoRA cannot hold: "
                     f"dropped when re-ranking: {_names(dropped_bias)}")
    return layers, notes


def _names(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more

