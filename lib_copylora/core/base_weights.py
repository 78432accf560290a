"""The weights base-aware kinds (DoRA, OFT/BOFT, IA3, GLoRA) modify, from wherever they come.

A merge asks a `BaseWeights` for one module's unmodified weight at a time. Two providers exist: a single-file
checkpoint read lazily (`CheckpointBase`, for the CLI), and the WebUI's loaded model (lib_copylora/webui/
base_weights.py). Each names itself for the merge recipe with a hash its reader computed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Protocol

import torch
from safetensors import SafetensorError, safe_open

from .checkpoint_keys import FAMILY_MARKERS, checkpoint_key
from .errors import BaseModelError, FormatError
from .family import Family

Tensor = torch.Tensor


class BaseWeights(Protocol):
    family: Family

    def weight(self, module: str) -> Tensor:
        """The unmodified weight of a kohya-named module; BaseModelError naming the module when there is none."""

    def describe(self) -> dict:
        """For the recipe: at least `name` and a hash (`sha256`, or what the host knows)."""


class CheckpointBase:
    """A single-file SD1/SD2/SDXL checkpoint (.safetensors, compvis keys), opened lazily: only the tensors asked
    for are read, one at a time, so a 7 GB SDXL file never sits in memory whole."""

    def __init__(self, path: Path, sha256: str):
        self.path = Path(path)
        self.sha256 = sha256
        try:
            self._file = safe_open(str(self.path), framework="pt", device="cpu")
            self._keys = set(self._file.keys())
        except (SafetensorError, OSError) as error:
            raise BaseModelError(f"{self.path.name}: cannot read it as a safetensors checkpoint ({error})") from None
        self.family = _checkpoint_family(self._keys, self.path.name)

    def weight(self, module: str) -> Tensor:
        try:
            where = checkpoint_key(module, self.family)
        except FormatError:
            raise BaseModelError(f"module {module}: the base {self.path.name} ({self.family.label}) has no such "
                                 "layer") from None
        if where.key not in self._keys:
            raise BaseModelError(f"module {module}: the base {self.path.name} has no {where.key}")
        if where.third is None:
            return self._file.get_tensor(where.key)
        fused = self._file.get_slice(where.key)
        rows = fused.get_shape()[0] // 3
        return fused[where.third * rows:(where.third + 1) * rows]

    def describe(self) -> dict:
        return {"name": self.path.name, "family": self.family.value, "sha256": self.sha256}


def _checkpoint_family(keys: set[str], label: str) -> Family:
    if not any(key.startswith("model.diffusion_model.") for key in keys):
        raise BaseModelError(f"{label}: not a single-file SD checkpoint (no model.diffusion_model.* keys)")
    for family, marker in FAMILY_MARKERS:
        if any(key.startswith(marker) for key in keys):
            return family
    raise BaseModelError(f"{label}: its text-encoder keys match no SD1, SD2 or SDXL checkpoint")


def open_checkpoint_base(path, sha256: Optional[str] = None) -> CheckpointBase:
    """Open a base checkpoint for a merge; the hash is computed here, on the reader side, unless given."""
    path = Path(path)
    if not path.is_file():
        raise BaseModelError(f"{path}: no such base checkpoint")
    base = CheckpointBase(path, sha256="")
    base.sha256 = sha256 if sha256 is not None else _file_sha256(path)
    return base


def _file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of the whole file, as the WebUI shows a checkpoint's, streamed: the file is never in memory whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
