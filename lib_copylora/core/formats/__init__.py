"""Reading and writing LoRA files: any supported format in, kohya's format out.

Read: the registry (registry.py) turns keys into layers, first matching adapter wins; every key must be used
(strict) or is recorded in `LoraFile.unused_keys` (lenient); the family is detected (core/detect.py) and the names
and ambiguous shapes that depend on it are settled. Write: kohya key names, alpha as a 0-dim float32 tensor,
standard metadata filled in where missing, kohya's `sshs_*` hashes, atomically, never over an existing file unless
asked.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Union

import torch

from ..detect import detect_family
from ..errors import FormatError, OutputExists
from ..family import Family
from ..layers import Layer, LayerKind
from ..lorafile import LoraFile
from ..metadata import standard_metadata
from ..base_layers import DoraLayer
from ..safetensors_io import kohya_hashes, read_safetensors_file, write_safetensors
from . import full, glora, ia3, kohya_lora, loha, lokr, norm, oft
from .names import is_sd1_conv_projection, sdxl_canonical_name
from .registry import ADAPTERS, collect_layers, describe_leftovers

__all__ = ["read_lora", "lora_from_state_dict", "lora_to_state_dict", "write_lora", "ADAPTERS"]

PathLike = Union[str, os.PathLike]
_WRITERS = {LayerKind.LORA: kohya_lora.to_state_dict, LayerKind.LOHA: loha.to_state_dict,
            LayerKind.LOKR: lokr.to_state_dict, LayerKind.FULL: full.to_state_dict, LayerKind.NORM: norm.to_state_dict,
            LayerKind.OFT: oft.to_state_dict, LayerKind.BOFT: oft.to_state_dict, LayerKind.IA3: ia3.to_state_dict,
            LayerKind.GLORA: glora.to_state_dict}
_HASH_KEYS = ("sshs_model_hash", "sshs_legacy_hash")


def read_lora(path: PathLike, *, strict: bool = True) -> LoraFile:
    path = Path(path)
    tensors, metadata, sha256 = read_safetensors_file(path)
    return dataclasses.replace(lora_from_state_dict(tensors, metadata, strict=strict, path=path), sha256=sha256)


def lora_from_state_dict(tensors: dict[str, torch.Tensor], metadata: Optional[dict[str, str]] = None, *,
                         strict: bool = True, path: Optional[PathLike] = None) -> LoraFile:
    label = Path(path).name if path is not None else "state dict"
    metadata = dict(metadata or {})
    if not tensors:
        raise FormatError(f"{label}: holds no tensors")
    collected = collect_layers(tensors)
    if not collected.layers:
        sample = ", ".join(list(tensors)[:5])
        raise FormatError(f"{label}: no LoRA keys among its {len(tensors)} tensors (e.g. {sample})")
    if collected.leftover and strict:
        raise FormatError(f"{label}: {describe_leftovers(collected.leftover)}")
    family = detect_family(collected.layers, metadata).family
    layers = _settle(collected.layers, family, label)
    return LoraFile(layers=layers, family=family, metadata=metadata,
                    path=Path(path) if path is not None else None, unused_keys=list(collected.leftover),
                    notes=_lenient_notes(layers))


def _lenient_notes(layers: dict[str, Layer]) -> list[str]:
    stored_4d = [name for name, layer in layers.items() if getattr(_inner(layer), "stored_4d", False)]
    if not stored_4d:
        return []
    return [f"{len(stored_4d)} LoHa module(s) store a conv factor 4-D; read flattened, as the WebUI reads them "
            f"(e.g. {stored_4d[0]})"]


def _inner(layer):
    return layer.inner if isinstance(layer, DoraLayer) else layer


def _settle(layers: dict[str, Layer], family: Family, label: str) -> dict[str, Layer]:
    """Apply what only the family decides: SDXL's canonical names, and SD1's 1×1-conv proj_in/proj_out for the
    kinds whose tensors store them flattened (LoHa, LoKr)."""
    settled: dict[str, Layer] = {}
    for name, layer in sorted(layers.items()):
        if family is Family.SDXL:
            name = sdxl_canonical_name(name)
        elif family is Family.SD1 and is_sd1_conv_projection(name):
            layer = _as_1x1_conv(layer)
        if name in settled:
            raise FormatError(f"{label}: module {name} is stored twice under different spellings")
        settled[name] = layer
    return settled


def _as_1x1_conv(layer: Layer) -> Layer:
    if isinstance(layer, DoraLayer):
        return dataclasses.replace(layer, inner=_as_1x1_conv(layer.inner))
    if layer.kind in (LayerKind.LOHA, LayerKind.LOKR) and len(layer.shape) == 2:
        return dataclasses.replace(layer, shape=(*layer.shape, 1, 1))
    return layer


def lora_to_state_dict(lora: LoraFile, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    if not dtype.is_floating_point:
        raise FormatError(f"cannot save LoRA tensors as {dtype}")
    out: dict[str, torch.Tensor] = {}
    for name in sorted(lora.layers):
        layer = lora.layers[name]
        out.update(_WRITERS[layer.kind](name, _inner(layer), dtype))
        if isinstance(layer, DoraLayer):
            if layer.on_output:  # the WebUI rescales input columns by dora_scale: these numbers would mean another ΔW
                raise FormatError(f"module {name}: PEFT's per-output DoRA magnitudes have no kohya form the WebUI "
                                  "applies; merge the file with a base (--base) to store its exact ΔW")
            out[name + ".dora_scale"] = layer.magnitude.to(dtype)
    return out


def _check_finite(tensors: dict[str, torch.Tensor], label: str, dtype: torch.dtype) -> None:
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            module, _, part = key.partition(".")
            raise FormatError(f"refusing to write {label}: module {module} has non-finite values in {part} "
                              f"(as {str(dtype).replace('torch.', '')}); nothing was written")


def write_lora(lora: LoraFile, path: PathLike, *, dtype: torch.dtype = torch.float16,
               overwrite: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExists(f"{path} exists; choose another name or ask to overwrite")
    tensors = lora_to_state_dict(lora, dtype)
    _check_finite(tensors, path.name, dtype)
    metadata = {k: v for k, v in lora.metadata.items() if k not in _HASH_KEYS}
    for key, value in standard_metadata(lora, path.stem).items():
        metadata.setdefault(key, value)
    model_hash, legacy = kohya_hashes(tensors, metadata)
    metadata.update(sshs_model_hash=model_hash, sshs_legacy_hash=legacy)
    return write_safetensors(path, tensors, metadata, overwrite=overwrite)
