"""Exact merging of one module's parts: each part is a layer from one input LoRA and the weight it enters with.

Low-rank parts are concatenated (rank = Σ ranks) with each part's whole scale (alpha/rank · ratio · block weight)
folded into its own factors and the output alpha set to the new rank, so the output scale is exactly 1. This
avoids the traps of peer tools (docs/architecture.md §5): the ratio enters once (never into both factors),
factors of different LoRAs are never summed into each other (no cross terms), and the old alpha is never kept for
the wider rank.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, Sequence

import torch

from .errors import MergeError, ShapeMismatch
from .layers import FullLayer, Layer, LowRankLayer
from .rerank import DenseTerm, LowRankTerm, all_finite

Tensor = torch.Tensor


class Part(NamedTuple):
    """One input's contribution to a module: ΔW_part = weight · layer.delta()."""

    layer: Layer
    weight: float  # ratio (or te/unet ratio) × block weight
    source: str  # the input's name, for messages


def module_shape(name: str, parts: Sequence[Part]) -> tuple[int, ...]:
    """The target weight's shape all parts agree on; a linear (out, in) and a 1×1 conv (out, in, 1, 1) agree."""
    first = tuple(parts[0].layer.shape)
    for part in parts[1:]:
        shape = tuple(part.layer.shape)
        if _squeezed(shape) != _squeezed(first):
            raise ShapeMismatch(
                f"module {name}: {parts[0].source} has shape {first} but {part.source} has {shape}")
    return first


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[:2] if shape[2:] == (1, 1) else shape


def is_low_rank(parts: Sequence[Part]) -> bool:
    return all(isinstance(part.layer, LowRankLayer) for part in parts)


def _split_scale(scale: float) -> tuple[float, float]:
    """(up factor, down factor) whose product is `scale`: the magnitude split evenly, the sign on up."""
    root = math.sqrt(abs(scale))
    return math.copysign(root, scale), root


def _unscaled_factors(layer: LowRankLayer) -> tuple[Tensor, Tensor]:
    """up (out, r) and down (r, in·kh·kw) of the layer without its alpha/rank (Tucker mid folded into down)."""
    return dataclasses.replace(layer, alpha=None).factors()


def low_rank_term(parts: Sequence[Part], shape: tuple[int, ...]) -> LowRankTerm:
    """The exact merged ΔW of low-rank parts as stacked factors (out, R) @ (R, n)."""
    ups, downs = [], []
    for part in parts:
        up_factor, down_factor = _split_scale(part.layer.scale * part.weight)
        up, down = _unscaled_factors(part.layer)
        ups.append(up * up_factor)
        downs.append(down * down_factor)
    return LowRankTerm(torch.cat(ups, dim=1), torch.cat(downs, dim=0), shape)


def dense_term(parts: Sequence[Part], shape: tuple[int, ...]) -> DenseTerm:
    """The exact merged ΔW as a matrix (out, in·kh·kw), for kinds with no low-rank form."""
    total = torch.zeros(shape[0], math.prod(shape[1:]), dtype=torch.float32)
    for part in parts:
        total += part.weight * part.layer.delta().reshape(total.shape)  # base-aware parts go via base_merge.py
    return DenseTerm(total, shape)


def layer_from_factors(up: Tensor, down: Tensor, shape: tuple[int, ...]) -> LowRankLayer:
    """A LowRankLayer with scale 1 (alpha = rank) in kohya's layout: linear up (out, r), down (r, in); conv
    up (out, r, 1, 1), down (r, in, kh, kw)."""
    rank = int(down.shape[0])
    if len(shape) == 4:
        up = up.reshape(shape[0], rank, 1, 1)
        down = down.reshape(rank, shape[1], shape[2], shape[3])
    else:
        up, down = up.reshape(shape[0], rank), down.reshape(rank, shape[1])
    return LowRankLayer(down=down.contiguous(), up=up.contiguous(), alpha=float(rank))


def concat_layers(name: str, parts: Sequence[Part], shape: tuple[int, ...]) -> LowRankLayer:
    """Exact concat. All-Tucker parts with one kernel keep a block-diagonal mid; otherwise mid folds into down."""
    if _all_tucker(parts):
        return _concat_tucker(name, parts)
    term = low_rank_term(parts, shape)
    _check_finite(name, term.up, term.down)
    return layer_from_factors(term.up, term.down, shape)


def _all_tucker(parts: Sequence[Part]) -> bool:
    mids = [part.layer.mid for part in parts]
    return all(m is not None for m in mids) and len({tuple(m.shape[2:]) for m in mids}) == 1


def _concat_tucker(name: str, parts: Sequence[Part]) -> LowRankLayer:
    ups, downs = [], []
    for part in parts:
        up_factor, down_factor = _split_scale(part.layer.scale * part.weight)
        ups.append(part.layer.up.to(torch.float32).reshape(part.layer.up.shape[0], -1) * up_factor)
        downs.append(part.layer.down.to(torch.float32).reshape(part.layer.rank, -1) * down_factor)
    up, down = torch.cat(ups, dim=1), torch.cat(downs, dim=0)
    rank = int(down.shape[0])
    kernel = tuple(parts[0].layer.mid.shape[2:])
    mid = torch.zeros(rank, rank, *kernel, dtype=torch.float32)
    start = 0
    for part in parts:
        r = part.layer.rank
        mid[start:start + r, start:start + r] = part.layer.mid.to(torch.float32)
        start += r
    _check_finite(name, up, down, mid)
    return LowRankLayer(down=down.reshape(rank, -1, 1, 1), up=up.reshape(up.shape[0], rank, 1, 1),
                        alpha=float(rank), mid=mid)


def sum_full(name: str, parts: Sequence[Part], shape: tuple[int, ...]) -> FullLayer:
    """The exact merged module as a full weight difference (bias differences summed with the same weights)."""
    diff = dense_term(parts, shape).delta.reshape(shape)
    diff_b = merged_bias(parts)
    _check_finite(name, diff, *([] if diff_b is None else [diff_b]))
    return FullLayer(diff=diff, diff_b=diff_b)


def full_from_term(name: str, term: DenseTerm, parts: Sequence[Part]) -> FullLayer:
    """A module computed against the base, stored as a full difference (with any bias differences of its parts)."""
    diff = term.delta.reshape(term.shape)
    diff_b = merged_bias(parts)
    _check_finite(name, diff, *([] if diff_b is None else [diff_b]))
    return FullLayer(diff=diff, diff_b=diff_b)


def merged_bias(parts: Sequence[Part]) -> Optional[Tensor]:
    biases = [(p.weight, p.layer.diff_b) for p in parts
              if isinstance(p.layer, FullLayer) and p.layer.diff_b is not None]
    if not biases:
        return None
    return sum(weight * bias.to(torch.float32) for weight, bias in biases)


def _check_finite(name: str, *tensors: Tensor) -> None:
    for tensor in tensors:
        if not all_finite(tensor):
            raise MergeError(f"module {name}: the merged weights are not finite (NaN or inf in an input?)")
