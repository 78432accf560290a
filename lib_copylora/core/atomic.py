"""The one way CopyLoRA writes a file it may replace: LoRA files, resume states and the preset file alike.

Through a temporary file in the same folder, flushed and fsynced, then renamed over the target, so a reader (the
WebUI's Lora list, a crash, a second process) never sees half a file. The result gets the mode an ordinary new
file gets (0644), or the old file's when it replaces one. Without `overwrite`, an existing target raises
OutputExists, also when it appears while we write. The temporary file is removed whatever happens.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

from .errors import FormatError, OutputExists

PathLike = Union[str, os.PathLike]
NEW_FILE_MODE = 0o644  # mkstemp makes a private file; the result should read like any other


def write_atomic(path: PathLike, write: Callable[[BinaryIO], None], *, overwrite: bool = False) -> Path:
    """Call `write(handle)` on a temporary file beside `path`, then publish it as `path`. OSError becomes a
    FormatError naming the file (one line); anything `write` raises passes through, leaving no file behind."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExists(f"{path} exists; choose another name or ask to overwrite")
    if not path.parent.is_dir():
        raise FormatError(f"cannot write {path.name}: folder {path.parent} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise FormatError(f"cannot write {path.name}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else NEW_FILE_MODE)
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_without_overwrite(tmp, path)
    except OSError as exc:
        raise FormatError(f"cannot write {path.name}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _publish_without_overwrite(tmp: Path, path: Path) -> None:
    # A hard link fails when the name exists, closing the window between our check and the rename. Some file
    # systems cannot link; there the check before the write is all we have.
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExists(f"{path} appeared while writing; nothing was overwritten") from None
    except OSError:
        if path.exists():
            raise OutputExists(f"{path} appeared while writing; nothing was overwritten") from None
        os.replace(tmp, path)
