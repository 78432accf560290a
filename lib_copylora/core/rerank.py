"""SVD re-rank: the best rank-k approximation of a merged ΔW, computed without forming ΔW when we need not.

A merged LoRA delta is a sum of low-rank products, ΔW = U @ D with U = [s1·U1 … sn·Un] (out × R) and
D = [D1; …; Dn] (R × in·kh·kw). Orthonormalising both sides (U = Qu·Ru, Dᵀ = Qd·Rd) leaves a small R × R core
Ru·Rdᵀ whose SVD is the SVD of ΔW; truncating it gives the same rank-k approximation a dense SVD of ΔW would
(Eckart–Young), at a cost linear in the layer size instead of cubic. Kinds with no low-rank form (LoHa, LoKr,
full, and every module computed against a base: DoRA, OFT, IA3, GLoRA) take the dense route (`dense_svd`): the
top singular directions of ΔW from the Gram matrix of its smaller side, refined in float64, which is the same
truncation a full SVD gives at a fraction of its cost. Same-shape modules are decomposed as one batch: hundreds
of tiny LAPACK calls are dominated by per-call overhead (docs/architecture.md §5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence, Union

import torch

from .errors import MergeError

Tensor = torch.Tensor

# Bound on the elements of one stacked batch, so SDXL-sized dense groups do not need gigabytes at once.
_MAX_BATCH_ELEMENTS = 32 * 1024 * 1024


@dataclass(frozen=True)
class RankPolicy:
    """How many singular directions each re-ranked module keeps."""

    new_rank: Optional[int] = field(
        default=None, metadata={"help": "rank of linear and 1×1 conv modules (None: no cap)"})
    new_conv_rank: Optional[int] = field(
        default=None, metadata={"help": "rank of k×k conv modules (None: same as new_rank)"})
    energy: Optional[float] = field(
        default=None,
        metadata={"help": "keep the smallest rank holding at least this share (0, 1] of the squared singular "
                          "values, capped by the ranks above (None: always the cap)"})

    def __post_init__(self):
        for name in ("new_rank", "new_conv_rank"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value or value <= 0):
                raise MergeError(f"{name} must be a positive whole number, got {value!r}")
        if self.energy is not None and not (0.0 < float(self.energy) <= 1.0):
            raise MergeError(f"energy must be in (0, 1], got {self.energy!r}")

    def cap_for(self, shape: Sequence[int]) -> Optional[int]:
        is_kxk_conv = len(shape) == 4 and tuple(shape[2:]) != (1, 1)
        if is_kxk_conv and self.new_conv_rank is not None:
            return int(self.new_conv_rank)
        return None if self.new_rank is None else int(self.new_rank)

    def choose_rank(self, singular_values: Tensor, shape: Sequence[int]) -> int:
        """The kept rank for one module, given its singular values (descending)."""
        available = int(singular_values.numel())
        cap = self.cap_for(shape)
        rank = available if cap is None else min(cap, available)
        if self.energy is not None:
            squared = singular_values.double().square()
            total = float(squared.sum())
            if total > 0.0:
                # a tiny slack so an energy of exactly 1.0 is reached despite rounding in the cumulative sum
                needed = int(torch.searchsorted(squared.cumsum(0), total * float(self.energy) * (1 - 1e-12)))
                rank = min(rank, needed + 1)
            else:
                rank = 1
        return max(1, rank)

    def describe(self) -> dict:
        return {"new_rank": self.new_rank, "new_conv_rank": self.new_conv_rank, "energy": self.energy}


def all_finite(tensor: Tensor) -> bool:
    """True when no element is NaN or ±inf. A sum instead of a boolean mask (50× faster on CPU): NaN and inf
    survive it; it could only overflow for weights near 1e38 / numel, which no LoRA holds (nor fp16 could save)."""
    return bool(torch.isfinite(tensor.sum()))


class Spectrum(NamedTuple):
    """A thin SVD ΔW = left @ diag(values) @ right: left (out, m), values (m,), right (m, n)."""

    left: Tensor
    values: Tensor
    right: Tensor


def low_rank_svd(ups: Tensor, downs: Tensor) -> Spectrum:
    """Thin SVD of `ups @ downs` for stacked factors ups (B, out, R), downs (B, R, n), never forming the product."""
    q_up, r_up = torch.linalg.qr(ups)  # (B, out, a), (B, a, R)
    q_down, r_down = torch.linalg.qr(downs.mT)  # (B, n, b), (B, b, R)
    left, values, right = torch.linalg.svd(r_up @ r_down.mT, full_matrices=False)
    return Spectrum(q_up @ left, values, right @ q_down.mT)


# Directions kept beyond the asked rank while refining: they absorb what float32's Gram could not separate.
_OVERSAMPLE = 8


class GramSpectrum(NamedTuple):
    """The smaller side's Gram eigendecomposition of stacked deltas (B, out, n): squared singular values (B, s),
    descending, accurate to float32 relative to the largest; the matching right singular vectors of the tall
    view (B, s, s), as columns; `flipped` when the tall view is ΔWᵀ (out < n)."""

    squared: Tensor
    vectors: Tensor
    flipped: bool


def gram_spectrum(deltas: Tensor) -> GramSpectrum:
    flipped = deltas.shape[-2] < deltas.shape[-1]
    tall = deltas.mT if flipped else deltas  # (B, big, small)
    eigenvalues, vectors = torch.linalg.eigh(tall.mT @ tall)
    return GramSpectrum(eigenvalues.flip(-1).clamp_min(0), vectors.flip(-1), flipped)


def dense_svd(deltas: Tensor, keep: Optional[int] = None, gram: Optional[GramSpectrum] = None) -> Spectrum:
    """The top `keep` (None: all) singular triplets of stacked dense deltas (B, out, n), for kinds with no low-rank
    form. Exact-then-truncated like a full SVD, not a sketch: the Gram eigenvectors of the smaller side span the
    top directions up to float32 rounding; one float64 step of subspace iteration (V ← orth(ΔWᵀΔW V)) and a
    Rayleigh–Ritz SVD of the thin ΔW V then give the triplets to float64 accuracy. Costs a Gram product and an
    s × s eigendecomposition instead of an SVD of the whole matrix (tests/test_rerank_dense.py holds it to
    torch.linalg.svd's truncation, rank-deficient and ill-conditioned inputs included)."""
    gram = gram_spectrum(deltas) if gram is None else gram
    tall = deltas.mT if gram.flipped else deltas
    small = tall.shape[-1]
    width = small if keep is None else min(small, keep + _OVERSAMPLE)
    tall64 = tall.to(torch.float64)
    basis, _ = torch.linalg.qr(tall64.mT @ (tall64 @ gram.vectors[..., :width].to(torch.float64)))
    left, values, right = torch.linalg.svd(tall64 @ basis, full_matrices=False)
    right = right @ basis.mT  # (B, m, small)
    left, values, right = (t.to(deltas.dtype) for t in (left, values, right))
    if gram.flipped:  # ΔWᵀ = L Σ R, so ΔW = Rᵀ Σ Lᵀ
        return Spectrum(right.mT, values, left.mT)
    return Spectrum(left, values, right)


def truncate(spectrum: Spectrum, rank: int) -> tuple[Tensor, Tensor]:
    """Factors (up (…, out, k), down (…, k, n)) of the rank-k truncation, batched or not, the magnitude split
    evenly between them so that neither factor over- or underflows when saved in fp16."""
    root = spectrum.values[..., :rank].clamp_min(0).sqrt()
    return spectrum.left[..., :rank] * root[..., None, :], root[..., :, None] * spectrum.right[..., :rank, :]


class LowRankTerm(NamedTuple):
    """A module's merged ΔW as `up @ down` (float32, any device); `shape` is the target weight's shape."""

    up: Tensor
    down: Tensor
    shape: tuple[int, ...]


class DenseTerm(NamedTuple):
    """A module's merged ΔW as a matrix (out, in·kh·kw); `shape` is the target weight's shape."""

    delta: Tensor
    shape: tuple[int, ...]


Term = Union[LowRankTerm, DenseTerm]


def rerank_terms(terms: dict[str, Term], policy: RankPolicy, device: str = "cpu") -> dict[str, tuple[Tensor, Tensor]]:
    """Re-rank every module: name → (up (out, k), down (k, n)) on the CPU in float32.

    Modules whose stacked factors (or dense deltas) have equal shapes are decomposed in one batched call."""
    groups: dict[tuple, list[str]] = {}
    for name, term in terms.items():
        key = _group_key(term)
        groups.setdefault(key, []).append(name)
    result: dict[str, tuple[Tensor, Tensor]] = {}
    for key, names in groups.items():
        for chunk in _chunks(names, _chunk_size(key)):
            result.update(_rerank_group([terms[n] for n in chunk], chunk, policy, device))
    return {name: result[name] for name in terms}


def _group_key(term: Term) -> tuple:
    if isinstance(term, LowRankTerm):
        return ("low", tuple(term.up.shape), tuple(term.down.shape))
    return ("dense", tuple(term.delta.shape))


def _chunk_size(key: tuple) -> int:
    per_item = sum(math.prod(shape) for shape in key[1:])
    return max(1, _MAX_BATCH_ELEMENTS // max(1, per_item))


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _rerank_group(terms: list[Term], names: list[str], policy: RankPolicy, device: str) -> dict:
    if isinstance(terms[0], LowRankTerm):
        ups = torch.stack([t.up for t in terms]).to(device=device, dtype=torch.float32)
        downs = torch.stack([t.down for t in terms]).to(device=device, dtype=torch.float32)
        # LAPACK refuses non-finite input with a message that names no module; say which one
        _refuse_non_finite(names, _sums(ups) + _sums(downs), "merged weights (NaN or inf in an input)")
        spectra = low_rank_svd(ups, downs)
        ranks = _ranks(spectra.values, terms, policy)
    else:
        deltas = torch.stack([t.delta for t in terms]).to(device=device, dtype=torch.float32)
        _refuse_non_finite(names, _sums(deltas), "merged weights (NaN or inf in an input)")
        # Each module scaled to max |entry| 1 first: its float32 Gram squares the entries, which would overflow
        # above ~1e19 and flush to zero below ~1e-19; the spectrum scales back exactly.
        scale = deltas.abs().amax(dim=(1, 2), keepdim=True)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        unit = deltas / scale
        # the ranks come from the whole spectrum (an energy share needs every value), then only those are refined
        gram = gram_spectrum(unit)
        ranks = _ranks(gram.squared.sqrt(), terms, policy)
        left, values, right = dense_svd(unit, max(ranks), gram)
        spectra = Spectrum(left, values * scale[:, :, 0], right)
    # Split the whole batch at once (per-module tensor calls dominate for small layers), then slice each module.
    ups, downs = truncate(spectra, max(ranks))
    _refuse_non_finite(names, _sums(ups) + _sums(downs), "re-ranked weights")
    ups, downs = ups.cpu(), downs.cpu()
    # clone: each module owns its tensors, so savers that refuse shared storage never see a view of the batch
    return {name: (ups[index, :, :rank].clone(), downs[index, :rank].clone())
            for index, (name, rank) in enumerate(zip(names, ranks))}


def _ranks(values: Tensor, terms: list[Term], policy: RankPolicy) -> list[int]:
    values = values.cpu()
    return [policy.choose_rank(values[index], term.shape) for index, term in enumerate(terms)]


def _sums(batch: Tensor) -> Tensor:
    """One sum per module of a batch: NaN and inf survive it (see all_finite)."""
    return batch.sum(dim=(1, 2))


def _refuse_non_finite(names: list[str], sums: Tensor, what: str) -> None:
    bad = [name for name, ok in zip(names, torch.isfinite(sums).tolist()) if not ok]
    if bad:
        raise MergeError(f"module {bad[0]}: its {what} are not finite")
