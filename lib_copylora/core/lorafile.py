"""The in-memory LoRA file: per-module layers keyed by kohya module name, plus metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .family import Family
from .layers import Layer, LayerKind


@dataclass
class LoraFile:
    """`layers` maps a kohya module name (`lora_unet_..._to_q`, `lora_te_...`, `lora_te1_...`) to its layer.

    `metadata` holds the safetensors header strings exactly as read (or as they will be written)."""

    layers: dict[str, Layer]
    family: Family
    metadata: dict[str, str] = field(default_factory=dict)
    path: Optional[Path] = None
    unused_keys: list[str] = field(default_factory=list)  # only filled by lenient reads (the prompt hook)
    sha256: Optional[str] = None  # of the file it was read from (the reader hashes the bytes it read), else None
    notes: list[str] = field(default_factory=list)  # what the reader accepted leniently, in words

    @property
    def needs_base(self) -> list[str]:
        """Modules whose ΔW depends on the weight they modify (DoRA, OFT/BOFT, IA3, GLoRA)."""
        return [name for name, layer in self.layers.items() if layer.needs_base]

    @property
    def kinds(self) -> set[LayerKind]:
        return {layer.kind for layer in self.layers.values()}

    @property
    def name(self) -> str:
        return self.path.stem if self.path is not None else self.metadata.get("ss_output_name", "lora")
