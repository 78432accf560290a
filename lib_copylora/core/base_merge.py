"""The exact ΔW of modules with base-aware parts (DoRA, OFT/BOFT, IA3, GLoRA), computed against the base weight.

Each such module's merged ΔW is Σ weightᵢ · ΔWᵢ(W) with W the unmodified base weight (the WebUI scales each ΔW by
its multiplier after computing it, so the sum stays linear in the ratios). The result is dense: it is stored as a
full difference, or re-ranked like any other dense term.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .base_weights import BaseWeights
from .concat import Part
from .errors import BaseModelError, ShapeMismatch
from .family import Family
from .rerank import DenseTerm


def layer_label(layer) -> str:
    return getattr(layer, "label", None) or layer.kind.label


def base_aware_modules(modules: dict[str, list[Part]]) -> list[str]:
    return [name for name, parts in modules.items() if any(part.layer.needs_base for part in parts)]


def require_base(modules: dict[str, list[Part]], family: Family, base: Optional[BaseWeights]) -> list[str]:
    """The modules that need the base; BaseModelError when there is none or it is of another family."""
    names = base_aware_modules(modules)
    if not names:
        return names
    first = next(part for part in modules[names[0]] if part.layer.needs_base)
    if base is None:
        raise BaseModelError(
            f"{first.source}: module {names[0]} is {layer_label(first.layer)}, whose ΔW depends on the weight it "
            f"modifies ({len(names)} such module(s)): give the base model with --base CHECKPOINT")
    if base.family is not family:
        raise BaseModelError(f"module {names[0]}: the base is a {base.family.label} model but the LoRAs are "
                             f"{family.label}")
    return names


def _check_fit(name: str, parts: Sequence[Part], shape: tuple[int, ...]) -> None:
    for part in parts:
        fits = getattr(part.layer, "fits", None)
        if fits is not None:
            reason = fits(shape)
        else:
            squeeze = (lambda s: s[:2] if s[2:] == (1, 1) else s)
            own = tuple(part.layer.shape)
            reason = None if squeeze(own) == squeeze(shape) else f"the LoRA is for a weight of shape {own}"
        if reason is not None:
            raise BaseModelError(f"module {name}: the base weight has shape {shape} but in {part.source} {reason}")


def base_aware_term(name: str, parts: Sequence[Part], base: BaseWeights) -> DenseTerm:
    weight = base.weight(name).to(torch.float32)
    shape = tuple(int(s) for s in weight.shape)
    _check_fit(name, parts, shape)
    total = torch.zeros(shape[0], math.prod(shape[1:]), dtype=torch.float32)
    for part in parts:
        try:
            delta = part.layer.delta(weight) if part.layer.needs_base else part.layer.delta()
        except ShapeMismatch as error:
            raise BaseModelError(f"module {name}: {part.source}: {error}") from None
        total.add_(delta.reshape(total.shape), alpha=part.weight)
    return DenseTerm(total, shape)


def base_aware_terms(modules: dict[str, list[Part]], names: Sequence[str], base: BaseWeights) -> dict[str, DenseTerm]:
    return {name: base_aware_term(name, modules[name], base) for name in names}
