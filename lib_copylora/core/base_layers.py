"""Layer kinds whose ΔW depends on the weight they modify: DoRA (beside any kind), OFT/BOFT, IA3 and GLoRA.

`delta(base)` takes the unmodified weight W of the target module (any float dtype; the math runs in float32) and
returns ΔW in W's shape, exactly as the WebUI v1.10.1 built-in Lora's `calc_updown` computes it at multiplier 1.
The WebUI's multiplier (prompt strength, block weight) then scales that ΔW linearly, so a merge stays linear in its
ratios once each ΔW is known. Facts carried over from the WebUI (extensions-builtin/Lora/network*.py):
- DoRA: the kind's scaled ΔW is added to W, each input column of the sum is rescaled to `dora_scale / ‖column‖`
  (broadcast as stored, so LyCORIS' per-output `(out, 1)` magnitudes are applied the way the WebUI applies them),
  and W is subtracted again. PEFT's DoRA (`lora_magnitude_vector`, which the WebUI does not load) rescales each
  output row instead, to its magnitude over the row's norm, as PEFT merges it (`on_output`).
- OFT: R = (I + Q)(I − Q)⁻¹ per block from Q = B − Bᵀ, ‖Q‖ clamped to `alpha · out` when alpha ≠ 0; W' = Rᵀ W per
  block of output rows (`oft_diag` stores R itself); BOFT chains butterfly stages; an optional `rescale` scales
  rows; ΔW = W' − W. The WebUI's scale is 1 for both.
- IA3: ΔW = W scaled per output row by `weight` (per input column when `on_input`).
- GLoRA: ΔW = B₂B₁ + W A₂A₁ in the WebUI's layout (scale 1: it never sets the rank); files in LyCORIS 4's layout
  (a1 (in, r), b1 (out, r)) are read as LyCORIS computes them, with its alpha/rank scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .errors import ShapeMismatch
from .layers import LayerKind

Tensor = torch.Tensor
Shape = tuple[int, ...]


def _f32(t: Tensor) -> Tensor:
    return t.to(torch.float32)


def _require_base(layer, base: Optional[Tensor]) -> Tensor:
    if base is None:
        raise ShapeMismatch(f"a {layer.label} layer needs the weight it modifies to give its ΔW")
    return _f32(base)


def _fit(delta: Tensor, base: Tensor, what: str) -> Tensor:
    if delta.numel() != base.numel():
        raise ShapeMismatch(f"{what} gives {tuple(delta.shape)} but the base weight is {tuple(base.shape)}")
    return delta.reshape(base.shape)


@dataclass
class DoraLayer:
    """Weight decomposition (`dora_scale`) around any other layer."""

    inner: object
    magnitude: Tensor
    on_output: bool = False  # PEFT's per-output-row magnitudes, stored (out,) or (out, 1, 1, 1) or (1, out, 1, 1)
    needs_base = True

    @property
    def kind(self) -> LayerKind:
        return self.inner.kind

    @property
    def label(self) -> str:
        return f"{self.inner.kind.label}+DoRA"

    @property
    def rank(self):
        return self.inner.rank

    @property
    def alpha(self):
        return self.inner.alpha

    @property
    def shape(self) -> Optional[Shape]:
        return getattr(self.inner, "shape", None)

    @property
    def is_conv(self) -> bool:
        return self.inner.is_conv

    def fits(self, base_shape: Shape) -> Optional[str]:
        return _inner_fits(self.inner, base_shape)

    def delta(self, base: Optional[Tensor] = None) -> Tensor:
        weight = _require_base(self, base)
        inner = self.inner.delta(weight) if self.inner.needs_base else self.inner.delta()
        merged = weight + _fit(inner, weight, f"the {self.inner.kind.label} part")  # ours from here: in place
        if self.on_output:
            return self._rescale_rows(merged, weight)
        # the norm of each input column, over output rows and kernel taps, as the WebUI's apply_weight_decompose;
        # reduced where it lies (a transposed copy of a 10240 × 1280 weight cost more than the norm itself)
        norm = torch.linalg.vector_norm(merged, dim=(0, *range(2, merged.dim())), keepdim=True)
        try:
            fits = torch.broadcast_shapes(self.magnitude.shape, norm.shape, merged.shape) == merged.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ShapeMismatch(f"dora_scale {tuple(self.magnitude.shape)} does not fit the base weight "
                                f"{tuple(weight.shape)}")
        return merged.mul_(_f32(self.magnitude) / norm).sub_(weight)

    def _rescale_rows(self, merged: Tensor, weight: Tensor) -> Tensor:
        # PEFT keeps one magnitude per output row in whichever layout its layer class uses: only the count matters
        if self.magnitude.numel() != merged.shape[0] or self.magnitude.dim() > merged.dim():
            raise ShapeMismatch(f"lora_magnitude_vector {tuple(self.magnitude.shape)} does not fit the base weight "
                                f"{tuple(weight.shape)} (one value per output row)")
        rows = (merged.shape[0], *[1] * (merged.dim() - 1))
        norm = torch.linalg.vector_norm(merged, dim=tuple(range(1, merged.dim())), keepdim=True)
        return merged.mul_(_f32(self.magnitude).reshape(rows) / norm).sub_(weight)


def _inner_fits(layer, base_shape: Shape) -> Optional[str]:
    fits = getattr(layer, "fits", None)
    if fits is not None:
        return fits(base_shape)
    shape = tuple(layer.shape)
    squeeze = (lambda s: s[:2] if s[2:] == (1, 1) else s)
    if squeeze(shape) != squeeze(tuple(base_shape)):
        return f"the LoRA is for a weight of shape {shape}"
    return None


def _cayley(blocks: Tensor, constraint: float) -> Tensor:
    """R = (I + Q)(I − Q)⁻¹ for Q = B − Bᵀ, with ‖Q‖ (over every block) clamped to `constraint` when it is not 0."""
    eye = torch.eye(blocks.shape[-1], dtype=torch.float32)
    q = blocks - blocks.transpose(-1, -2)
    if constraint != 0:
        norm = torch.norm(q.flatten())
        q = q * ((torch.clamp(norm, max=constraint) + 1e-8) / (norm + 1e-8))
    return (eye + q) @ torch.linalg.inv(eye - q)


@dataclass
class OftLayer:
    """OFT: `blocks` (n, b, b) as `oft_blocks` (a Cayley parameter) or `oft_diag` (R itself, `is_rotation`);
    BOFT: (m, n, b, b) butterfly stages. `alpha` is the constraint per output channel; `rescale` scales rows."""

    blocks: Tensor
    alpha: Optional[float] = None
    rescale: Optional[Tensor] = None
    is_rotation: bool = False
    needs_base = True

    @property
    def kind(self) -> LayerKind:
        return LayerKind.BOFT if self.blocks.dim() == 4 else LayerKind.OFT

    @property
    def label(self) -> str:
        return self.kind.label

    @property
    def rank(self) -> Optional[int]:
        return None

    @property
    def out_dim(self) -> int:
        return int(self.blocks.shape[-3] * self.blocks.shape[-1])

    @property
    def shape(self) -> Optional[Shape]:
        return None  # the input width comes from the base weight

    @property
    def is_conv(self) -> bool:
        return self.rescale is not None and self.rescale.dim() == 4

    def describe(self) -> tuple[str, str]:
        *stages, count, size, _ = (int(s) for s in self.blocks.shape)
        text = f"{count} blocks of {size}" + (f" in {stages[0]} butterfly stages" if stages else "")
        alpha = "none" if self.alpha is None or self.alpha == 0 else f"{self.alpha:g} (constraint per channel)"
        return text, alpha

    def fits(self, base_shape: Shape) -> Optional[str]:
        if int(base_shape[0]) != self.out_dim:
            return f"its blocks cover {self.out_dim} output channels"
        return None

    def delta(self, base: Optional[Tensor] = None) -> Tensor:
        weight = _require_base(self, base)
        blocks = _f32(self.blocks)
        if self.is_rotation:
            rotation = blocks
        else:
            rotation = _cayley(blocks, 0.0 if self.alpha is None else float(self.alpha) * self.out_dim)
        rotated = _butterfly(rotation, weight) if self.kind is LayerKind.BOFT else _block_diagonal(rotation, weight)
        if self.rescale is not None:
            rotated = _f32(self.rescale).reshape(-1, *[1] * (weight.dim() - 1)) * rotated
        return rotated - weight


def _block_diagonal(rotation: Tensor, weight: Tensor) -> Tensor:
    count, size, _ = rotation.shape
    rows = weight.reshape(count, size, *weight.shape[1:])
    return torch.einsum("knm,kn...->km...", rotation, rows).reshape(weight.shape)


def _butterfly(rotation: Tensor, weight: Tensor) -> Tensor:
    """The butterfly stages: stage i permutes rows so that blocks mix channels 2^i · b/2 apart."""
    stages, _, size, _ = rotation.shape
    half = size // 2
    out = weight
    rest = weight.shape[1:]
    for i in range(stages):
        stride = 2 ** i * half
        out = out.reshape(-1, 2, stride, *rest).transpose(1, 2).reshape(-1, size, *rest)
        out = torch.einsum("bij,bj...->bi...", rotation[i], out)
        out = out.reshape(-1, stride, 2, *rest).transpose(1, 2).reshape(weight.shape)
    return out


@dataclass
class Ia3Layer:
    """IA3: `weight` scales W per output row, or per input column when `on_input`."""

    weight: Tensor
    on_input: bool
    needs_base = True
    kind = LayerKind.IA3
    label = "IA3"
    rank = None
    alpha = None
    shape = None

    @property
    def is_conv(self) -> bool:
        return self.weight.dim() == 4

    def describe(self) -> tuple[str, str]:
        side = "input" if self.on_input else "output"
        return f"{self.weight.numel()} {side} scales", "none"

    def fits(self, base_shape: Shape) -> Optional[str]:
        axis = 1 if self.on_input else 0
        if len(base_shape) < 2 or int(base_shape[axis]) != self.weight.numel():
            return f"it scales {self.weight.numel()} {'input' if self.on_input else 'output'} channels"
        return None

    def delta(self, base: Optional[Tensor] = None) -> Tensor:
        weight = _require_base(self, base)
        scales = _f32(self.weight).flatten()
        if self.on_input:
            return weight * scales.reshape(1, -1, *[1] * (weight.dim() - 2))
        return weight * scales.reshape(-1, *[1] * (weight.dim() - 1))


@dataclass
class GloraLayer:
    """GLoRA: ΔW = scale · (B_up B_down + W A_left A_right). `webui_layout`: a1 (r, in), a2 (in, r), b1 (r, in),
    b2 (out, r) as the WebUI computes it (scale 1); otherwise LyCORIS 4: a1 (in, r), a2 (r, in), b1 (out, r),
    b2 (r, in), scale alpha/rank."""

    a1: Tensor
    a2: Tensor
    b1: Tensor
    b2: Tensor
    alpha: Optional[float] = None
    webui_layout: bool = True
    needs_base = True
    kind = LayerKind.GLORA
    label = "GLoRA"
    is_conv = False

    def _factors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(A_left (in, r), A_right (r, in), B_up (out, r), B_down (r, in))."""
        if self.webui_layout:
            return self.a2, self.a1, self.b2, self.b1
        return self.a1, self.a2, self.b1, self.b2

    @property
    def rank(self) -> int:
        return int(self._factors()[3].shape[0])

    @property
    def scale(self) -> float:
        if self.webui_layout or self.alpha is None:
            return 1.0
        return float(self.alpha) / self.rank

    @property
    def shape(self) -> Shape:
        _, _, up, down = self._factors()
        return int(up.shape[0]), int(down.shape[1])

    def fits(self, base_shape: Shape) -> Optional[str]:
        if tuple(base_shape) != self.shape:
            return f"the GLoRA is for a weight of shape {self.shape}"
        return None

    def delta(self, base: Optional[Tensor] = None) -> Tensor:
        weight = _require_base(self, base)
        left, right, up, down = (_f32(t) for t in self._factors())
        return (up @ down + (weight @ left) @ right) * self.scale
