"""The merge recipe stored in the output's `copylora` metadata: enough to know, and redo, how a file was made."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .lorafile import LoraFile

if TYPE_CHECKING:  # only for annotations: merge.py imports this module
    from .merge import MergeSpec

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """sha256 of the whole file, as the WebUI shows it for a LoRA (not kohya's payload-only `sshs_model_hash`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_input(lora: LoraFile) -> dict:
    path: Optional[Path] = Path(lora.path) if lora.path is not None else None
    return {
        "name": lora.name,
        "file": path.name if path is not None else None,
        "sha256": file_sha256(path) if path is not None and path.is_file() else None,
        "sshs_model_hash": lora.metadata.get("sshs_model_hash"),
        "family": lora.family.value,
    }


def build_recipe(loras: Sequence[LoraFile], spec: "MergeSpec", base: Optional[dict] = None) -> dict:
    """A JSON-ready description of the merge: inputs (with hashes), ratios, block weights and rank policy, and the
    base model (named by its hash, as its reader described it) when base-aware kinds needed one."""
    blocks = None
    if spec.blocks is not None:
        blocks = [None if b is None else b.describe() for b in spec.blocks]
    rank = {"mode": "svd", **spec.policy.describe()} if spec.reranks else {"mode": "concat"}
    return {
        "operation": "merge",
        "inputs": [describe_input(lora) for lora in loras],
        "ratios": list(spec.ratios),
        "te_ratios": None if spec.te_ratios is None else list(spec.te_ratios),
        "unet_ratios": None if spec.unet_ratios is None else list(spec.unet_ratios),
        "blocks": blocks,
        "rank": rank,
        "base": base,
    }
