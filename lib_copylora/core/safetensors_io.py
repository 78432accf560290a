"""Reading and writing .safetensors files safely, reproducibly and atomically, plus kohya's `sshs_*` hashes.

The header is checked before any tensor is touched, so a truncated or corrupt file becomes one FormatError that
names the file and the reason, never a Rust panic or a half-read dict. Files are written by our own serialiser:
the same layout as `safetensors.torch.save` (8-byte little-endian header length, compact JSON header padded with
spaces to a multiple of 8, tensor data sorted by dtype then name), but with the metadata keys sorted, because the
library writes them in hash-map order and the same LoRA would otherwise give different bytes on every save.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Mapping, NamedTuple, Union

import torch
import safetensors.torch

from .atomic import write_atomic
from .errors import FormatError

Tensor = torch.Tensor
PathLike = Union[str, os.PathLike]

# safetensors dtype names, highest first in the order the library lays tensor data out (measured against
# safetensors.torch.save): matching it keeps our payload, and so kohya's `sshs_model_hash`, identical to theirs.
_DTYPES: tuple[tuple[str, torch.dtype], ...] = (
    ("I64", torch.int64),
    ("F64", torch.float64),
    ("F32", torch.float32),
    ("I32", torch.int32),
    ("BF16", torch.bfloat16),
    ("F16", torch.float16),
    ("I16", torch.int16),
    ("F8_E4M3", torch.float8_e4m3fn),
    ("F8_E5M2", torch.float8_e5m2),
    ("I8", torch.int8),
    ("U8", torch.uint8),
    ("BOOL", torch.bool),
)
_NAME_OF = {dtype: name for name, dtype in _DTYPES}
_ITEMSIZE = {name: torch.empty((), dtype=dtype).element_size() for name, dtype in _DTYPES}
_LAYOUT_RANK = {name: rank for rank, (name, _) in enumerate(_DTYPES)}

_MAX_HEADER = 100 * 1024 * 1024  # the library's own limit; a larger length means a corrupt file
LEGACY_OFFSET, LEGACY_SIZE = 0x100000, 0x10000  # the old WebUI hash's window: 64 KiB read at 1 MiB


def _fail(path: PathLike, reason: str) -> FormatError:
    return FormatError(f"{Path(path).name}: {reason}")


# ----------------------------------------------------------------------------------------------------- reading
def parse_header(head: bytes, file_size: int, path: PathLike) -> tuple[dict, dict[str, str], int]:
    """Validate a header; `head` holds at least the file's first 8 + header-length bytes (the whole file will
    do). Return (tensor entries, metadata, payload start)."""
    if file_size < 8 or len(head) < 8:
        raise _fail(path, f"too short to be a safetensors file ({file_size} bytes)")
    size = int.from_bytes(head[:8], "little")
    if size > _MAX_HEADER or size + 8 > file_size or size + 8 > len(head):
        raise _fail(path, f"header length {size} does not fit a file of {file_size} bytes (truncated or not "
                          "a safetensors file)")
    try:
        header = json.loads(head[8:8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"header is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _fail(path, "__metadata__ is not a map of strings")
    payload = file_size - 8 - size
    for name, entry in header.items():
        _check_entry(name, entry, payload, path)
    return header, metadata, 8 + size


def _check_entry(name: str, entry, payload: int, path: PathLike) -> None:
    if not isinstance(entry, dict) or entry.get("dtype") not in _ITEMSIZE:
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        raise _fail(path, f"tensor {name!r} has an unsupported or missing dtype {dtype!r}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise _fail(path, f"tensor {name!r} has a malformed shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise _fail(path, f"tensor {name!r} has malformed data offsets {offsets!r}")
    begin, end = offsets
    if end > payload:
        raise _fail(path, f"tensor {name!r} ends at byte {end} of the data but the file holds only {payload} "
                          "(truncated?)")
    if begin < 0 or end - begin != math.prod(shape) * _ITEMSIZE[entry["dtype"]]:
        raise _fail(path, f"tensor {name!r}: data offsets {offsets} do not match shape {shape}")


class SafetensorsFile(NamedTuple):
    tensors: dict[str, Tensor]
    metadata: dict[str, str]
    sha256: str  # of the whole file, as the WebUI shows it (not kohya's payload-only `sshs_model_hash`)


def read_safetensors(path: PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors (on the CPU, in their stored dtypes) and the metadata of a .safetensors file."""
    tensors, metadata, _ = read_safetensors_file(path)
    return tensors, metadata


def read_safetensors_file(path: PathLike) -> SafetensorsFile:
    """`read_safetensors` plus the file's sha256, hashed from the bytes already read (no second read)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from None
    _, metadata, _ = parse_header(data, len(data), path)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # SafetensorError lives in a Rust extension; anything it raises means corrupt
        first_line = (str(exc).splitlines() or [exc.__class__.__name__])[0]
        raise _fail(path, f"not a readable safetensors file ({first_line})") from None
    return SafetensorsFile(tensors, dict(metadata), hashlib.sha256(data).hexdigest())


def read_safetensors_metadata(path: PathLike) -> dict[str, str]:
    """Only the header metadata, without reading the tensor data."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            file_size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else 0
            head += fh.read(min(size, _MAX_HEADER))
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from None
    _, metadata, _ = parse_header(head, file_size, path)
    return dict(metadata)


# ----------------------------------------------------------------------------------------------------- writing
def _layout(tensors: Mapping[str, Tensor]) -> list[str]:
    """Tensor names in the order their data is laid out: by dtype as the library does, then by name."""
    for name, tensor in tensors.items():
        if tensor.dtype not in _NAME_OF:
            raise FormatError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot store")
    return sorted(tensors, key=lambda n: (_LAYOUT_RANK[_NAME_OF[tensors[n].dtype]], n))


def _tensor_bytes(tensor: Tensor) -> bytes:
    # A byte view keeps bf16 (which numpy lacks) exact; reshape first because 0-dim tensors cannot be re-viewed.
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def serialize_safetensors(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file; the same inputs always give the same bytes."""
    header: dict = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
        if bad:
            raise FormatError(f"metadata values must be strings; not so for {bad[:10]}")
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    chunks, offset = [], 0
    for name in _layout(tensors):
        tensor = tensors[name]
        blob = _tensor_bytes(tensor)
        header[name] = {"dtype": _NAME_OF[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        chunks.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def write_bytes_atomic(path: PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Write `data` to `path` atomically (core/atomic.py: temporary file, fsync, rename; never over an existing
    file unless asked)."""
    return write_atomic(path, lambda handle: handle.write(data), overwrite=overwrite)


def write_safetensors(path: PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None,
                      *, overwrite: bool = False) -> Path:
    return write_bytes_atomic(path, serialize_safetensors(tensors, metadata), overwrite=overwrite)


# ------------------------------------------------------------------------------------------------------ hashes
def payload_sha256(data: bytes) -> str:
    """sd-webui-additional-networks' "addnet" hash: sha256 of everything after the header."""
    size = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + size:]).hexdigest()


def legacy_hash(data: bytes) -> str:
    """additional-networks' old hash: the first 8 hex digits of sha256 of 64 KiB read at offset 1 MiB."""
    return window_hash(data[LEGACY_OFFSET:LEGACY_OFFSET + LEGACY_SIZE])


def window_hash(window: bytes) -> str:
    """The old hash of a file (the WebUI's model hash too) from its window: those 64 KiB, fewer for a short file."""
    return hashlib.sha256(window).hexdigest()[:8]


def kohya_hashes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as kohya's sd-scripts precomputes them: over the file the tensors
    make with only the `ss_*` metadata, so later user edits of other metadata do not change them."""
    training_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    data = serialize_safetensors(tensors, training_only)
    return payload_sha256(data), legacy_hash(data)
