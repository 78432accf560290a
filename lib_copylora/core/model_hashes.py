"""The base checkpoint's hashes, as kohya's train_network.py records them in a trained file.

`ss_sd_model_hash` is the WebUI's old model hash (the first 8 hex digits of sha256 over the 64 KiB read at 1 MiB)
and `ss_new_sd_model_hash` the sha256 of the whole file, the one the WebUI shows as a checkpoint's hash. A model
folder (diffusers) has neither, and kohya's placeholders for a missing file ("NOFILE", "IsADirectory") are never
written: a key is there with a real hash or not at all.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import NamedTuple, Optional, Union

from .safetensors_io import LEGACY_OFFSET, LEGACY_SIZE, window_hash

_CHUNK = 1 << 20
_LEGACY = re.compile(r"[0-9a-f]{8}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelHashes(NamedTuple):
    legacy: Optional[str] = None  # 8 lower-case hex digits: ss_sd_model_hash
    sha256: Optional[str] = None  # 64 lower-case hex digits: ss_new_sd_model_hash

    def metadata(self) -> dict[str, str]:
        """The kohya keys these hashes fill: only the ones known."""
        keys = {"ss_sd_model_hash": self.legacy, "ss_new_sd_model_hash": self.sha256}
        return {key: value for key, value in keys.items() if value}


def checked_hashes(legacy: object, sha256: object) -> ModelHashes:
    """Hashes a host reports, each kept only when it is a hash of its kind (anything else is dropped, not written)."""
    def keep(value: object, shape: re.Pattern) -> Optional[str]:
        return value.lower() if isinstance(value, str) and shape.fullmatch(value.lower()) else None
    return ModelHashes(keep(legacy, _LEGACY), keep(sha256, _SHA256))


def file_hashes(path: Union[str, os.PathLike]) -> ModelHashes:
    """Both hashes of a checkpoint file, read in 1 MiB chunks; no hashes for a folder or a file that cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(_CHUNK), b""):
                digest.update(chunk)
            file.seek(LEGACY_OFFSET)
            legacy = window_hash(file.read(LEGACY_SIZE))
    except OSError:  # a folder, a file gone or unreadable since the model loaded: the file just lacks the keys
        return ModelHashes()
    return ModelHashes(legacy, digest.hexdigest())
