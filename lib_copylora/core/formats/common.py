"""Helpers the format adapters share: taking tensors out of a state dict and reading alpha."""

from __future__ import annotations

import re
from typing import Optional

import torch

from ..errors import FormatError

Tensor = torch.Tensor

# kohya module names: a prefix saying which model part, then the module path with dots turned into underscores.
KOHYA_MODULE = re.compile(r"^lora_(unet|te|te1|te2)_[A-Za-z0-9_]+$")


def modules_with(keys, suffix: str) -> list[str]:
    """Module names `m` for which `m + suffix` is a key (in key order, so reads are deterministic)."""
    return [key[: -len(suffix)] for key in keys if key.endswith(suffix) and len(key) > len(suffix)]


def has_all(tensors: dict[str, Tensor], module: str, suffixes) -> bool:
    return all(module + s in tensors for s in suffixes)


def pop(tensors: dict[str, Tensor], key: str) -> Optional[Tensor]:
    """Remove and return a tensor; consumed keys leave the dict so that what remains is what nobody used."""
    return tensors.pop(key, None)


def pop_alpha(tensors: dict[str, Tensor], module: str) -> Optional[float]:
    alpha = tensors.pop(f"{module}.alpha", None)
    if alpha is None:
        return None
    if alpha.numel() != 1:
        raise FormatError(f"{module}: alpha should be one number but has shape {tuple(alpha.shape)}")
    value = float(alpha.to(torch.float32).item())
    if value != value or value in (float("inf"), float("-inf")):
        raise FormatError(f"{module}: alpha is {value}")
    return value


def require(condition: bool, module: str, what: str) -> None:
    if not condition:
        raise FormatError(f"{module}: {what}")


def alpha_tensor(alpha: float) -> Tensor:
    # Kept in float32 whatever the save dtype: fp16 would round alphas such as 0.1 and shift ΔW.
    return torch.tensor(float(alpha), dtype=torch.float32)
