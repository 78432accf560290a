"""Per-module layer records: the tensors of one LoRA module and the ΔW they stand for.

Convention (docs/architecture.md §4): ΔW = (alpha / rank) · up @ down, in the target weight's shape. Conv k×k layers
use the flattened `out × (in·k·k)` form; a Tucker `mid` is folded with lycoris-lora's own functions. The LyCORIS kinds
(LoHa, LoKr) delegate their math to `lycoris.functional` so that our ΔW is theirs, not a rewrite.
"""

from __future__ import annotations

import enum
import importlib
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

from .errors import ShapeMismatch


def _functional(kind: str):
    """lycoris-lora's functional math for one kind, imported on first use: importing lycoris runs its package's
    `__init__`, which loads its wrappers and kohya modules too (seconds that `--help`, `presets` and `inspect` of a
    plain LoRA do not need; see bench/startup.py)."""
    return importlib.import_module(f"lycoris.functional.{kind}")


Tensor = torch.Tensor
Shape = tuple[int, ...]


class LayerKind(enum.Enum):
    LORA = "lora"  # kohya LoRA / LoCon (lora_up/lora_down[/lora_mid]), PEFT lora_A/lora_B
    LOHA = "loha"
    LOKR = "lokr"
    FULL = "full"
    NORM = "norm"  # LyCORIS norm layers: w_norm / b_norm, a full difference of a 1-D weight
    OFT = "oft"  # diagonal OFT (kohya's and LyCORIS' oft_blocks, old LyCORIS oft_diag): base-aware
    BOFT = "boft"  # butterfly OFT: base-aware
    IA3 = "ia3"  # base-aware
    GLORA = "glora"  # base-aware

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {LayerKind.LORA: "LoRA", LayerKind.LOHA: "LoHa", LayerKind.LOKR: "LoKr", LayerKind.FULL: "full",
           LayerKind.NORM: "norm", LayerKind.OFT: "OFT", LayerKind.BOFT: "BOFT", LayerKind.IA3: "IA3",
           LayerKind.GLORA: "GLoRA"}


def _f32(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.to(torch.float32)


@dataclass
class LowRankLayer:
    """kohya LoRA/LoCon: down (r, in[, kh, kw]), up (out, r[, 1, 1]), optional Tucker mid (r, r, kh, kw)."""

    down: Tensor
    up: Tensor
    alpha: Optional[float] = None
    mid: Optional[Tensor] = None
    kind = LayerKind.LORA
    needs_base = False

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank

    @property
    def shape(self) -> Shape:
        out_dim, in_dim = int(self.up.shape[0]), int(self.down.shape[1])
        kernel = self.mid.shape[2:] if self.mid is not None else self.down.shape[2:]
        return (out_dim, in_dim, *map(int, kernel))

    @property
    def is_conv(self) -> bool:
        return len(self.shape) == 4

    def delta(self, base: Optional[Tensor] = None) -> Tensor:
        return _functional("locon").diff_weight(_f32(self.down), _f32(self.up), _f32(self.mid), gamma=self.scale,
                                                backend="torch")

    def factors(self) -> tuple[Tensor, Tensor]:
        """ΔW as `U @ D` in float32: U (out, r) with the scale folded in, D (r, in·kh·kw). Tucker mid is folded
        into D, which is exact: D[a, i, y, x] = Σ_b mid[a, b, y, x] · down[b, i]."""
        up = _f32(self.up).reshape(self.up.shape[0], -1) * self.scale
        down = _f32(self.down)
        if self.mid is not None:
            down = torch.einsum("abyx,bi->aiyx", _f32(self.mid), down.reshape(down.shape[0], -1))
        return up, down.reshape(down.shape[0], -1)


@dataclass
class LohaLayer:
    """LyCORIS LoHa: ΔW = scale · (w1a @ w1b) ⊙ (w2a @ w2b), optionally Tucker (t1, t2)."""

    w1a: Tensor
    w1b: Tensor
    w2a: Tensor
    w2b: Tensor
    shape: Shape
    alpha: Optional[float] = None
    t1: Optional[Tensor] = None
    t2: Optional[Tensor] = None
    kind = LayerKind.LOHA
    needs_base = False
    stored_4d: bool = False  # a conv factor was stored (r, in, k, k); read flattened, as the WebUI does

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank

    @property
    def is_conv(self) -> bool:
        return len(self.shape) == 4

    def delta(self, base: Optional[Tensor] = None) -> Tensor:
        d = _functional("loha").diff_weight(
            _f32(self.w1b), _f32(self.w1a), _f32(self.w2b), _f32(self.w2a), _f32(self.t1), _f32(self.t2),
            gamma=self.scale, backend="torch",
        )
        return _reshape_checked(d, self.shape)


@dataclass
class LokrLayer:
    """LyCORIS LoKr: ΔW = scale · kron(w1, w2); each half either whole or a product of two factors."""

    shape: Shape
    w1: Optional[Tensor] = None
    w1a: Optional[Tensor] = None
    w1b: Optional[Tensor] = None
    w2: Optional[Tensor] = None
    w2a: Optional[Tensor] = None
    w2b: Optional[Tensor] = None
    t2: Optional[Tensor] = None
    alpha: Optional[float] = None
    kind = LayerKind.LOKR
    needs_base = False

    @property
    def rank(self) -> Optional[int]:
        """The factor rank when a half is factorised; None when both halves are whole."""
        for a in (self.w1b, self.w2b):
            if a is not None:
                return int(a.shape[0])
        return None

    @property
    def scale(self) -> float:
        # lycoris' rule: alpha/rank applies only when a half is factorised
        rank = self.rank
        if self.alpha is None or rank is None:
            return 1.0
        return float(self.alpha) / rank

    @property
    def is_conv(self) -> bool:
        return len(self.shape) == 4

    def delta(self, base: Optional[Tensor] = None) -> Tensor:
        d = _functional("lokr").kron_weight(
            _f32(self.w1), _f32(self.w1a), _f32(self.w1b), _f32(self.w2), _f32(self.w2a), _f32(self.w2b),
            _f32(self.t2), scale=self.scale, backend="torch",
        )
        return _reshape_checked(d, self.shape)


@dataclass
class FullLayer:
    """A full weight difference (`diff`), with an optional bias difference (`diff_b`)."""

    diff: Tensor
    diff_b: Optional[Tensor] = None
    kind = LayerKind.FULL
    needs_base = False
    alpha = None
    rank = None

    @property
    def shape(self) -> Shape:
        return tuple(int(s) for s in self.diff.shape)

    @property
    def is_conv(self) -> bool:
        return len(self.shape) == 4

    def delta(self, base: Optional[Tensor] = None) -> Tensor:
        return _f32(self.diff)


@dataclass
class NormLayer(FullLayer):
    """LyCORIS norm layer (`w_norm`, `b_norm`): the difference of a LayerNorm/GroupNorm weight and bias. The
    WebUI applies it like a full difference; it stays its own kind so inspect can name it."""

    kind = LayerKind.NORM


Layer = Union[LowRankLayer, LohaLayer, LokrLayer, FullLayer, NormLayer]


def _reshape_checked(delta: Tensor, shape: Shape) -> Tensor:
    if delta.numel() != math.prod(shape):
        raise ShapeMismatch(f"layer tensors give {tuple(delta.shape)} but the target weight is {shape}")
    return delta.reshape(shape)
