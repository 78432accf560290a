"""Names the API and the tab receive, turned into paths that stay inside CopyLoRA's configured folders.

A request names a dataset, a LoRA or an output relative to a folder the WebUI's owner configured (the datasets
folder, the Lora folder). Anything that would leave that folder is refused with a one-line reason: absolute paths,
`..`, drive letters, and symbolic links that point outside (checked on the resolved path, so a link anywhere along
the way counts). Pure: no WebUI import, so it is tested on its own.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from ..core.errors import CopyLoraError

LORA_SUFFIXES = (".safetensors",)
# Most file systems hold at most 255 bytes in one file or folder name; a longer one fails deep inside a job with
# ENAMETOOLONG, so names are measured here, where they arrive.
NAME_MAX_BYTES = 255
# Files are written atomically through `.NAME.XXXXXXXX.tmp` beside the target: 14 bytes more than the name.
TEMPORARY_RESERVE = 14


class UnsafePath(CopyLoraError):
    """A requested name would leave the folder it must stay in (the API answers HTTP 400)."""


def _check_name(name: str, what: str) -> PurePosixPath:
    if not isinstance(name, str) or not name.strip():
        raise UnsafePath(f"{what}: the name is empty")
    if "\x00" in name:
        raise UnsafePath(f"{what}: the name contains a NUL character")
    text = name.strip().replace("\\", "/")
    if PurePosixPath(text).is_absolute() or PureWindowsPath(name).drive or PureWindowsPath(name).root:
        raise UnsafePath(f"{what}: {name!r} is an absolute path; give a name relative to its folder")
    relative = PurePosixPath(text)
    if any(part == ".." for part in relative.parts):
        raise UnsafePath(f"{what}: {name!r} contains '..'; give a name inside its folder")
    if not relative.parts or relative.parts == (".",):
        raise UnsafePath(f"{what}: {name!r} names the folder itself, not something inside it")
    for part in relative.parts:
        check_file_name(part, what)
    return relative


def check_file_name(name: str, what: str, reserve: int = 0) -> None:
    """Refuse a file or folder name with a control character (they break listings, logs and some file systems)
    or one the file system cannot hold (`reserve`: bytes the caller appends to it later)."""
    bad = next((c for c in name if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise UnsafePath(f"{what}: the name contains the control character U+{ord(bad):04X}")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size + reserve > NAME_MAX_BYTES:
        raise UnsafePath(f"{what}: a name of {size} bytes is too long (at most {NAME_MAX_BYTES - reserve} bytes)")


def resolve_inside(root: Path, name: str, what: str = "path", must_exist: bool = False) -> Path:
    """`root / name` resolved, or UnsafePath when it is (or its links lead) outside `root`."""
    relative = _check_name(name, what)
    base = Path(root).resolve()
    candidate = (base / relative).resolve()  # follows every symlink on the way, existing or not
    if candidate != base and not candidate.is_relative_to(base):
        raise UnsafePath(f"{what}: {name!r} leads outside its folder (a symbolic link pointing elsewhere?)")
    if candidate == base:
        raise UnsafePath(f"{what}: {name!r} names the folder itself, not something inside it")
    if must_exist and not candidate.exists():
        raise UnsafePath(f"{what}: {name!r} does not exist in its folder")
    return candidate


def lora_file_inside(root: Path, name: str, what: str = "LoRA", must_exist: bool = False) -> Path:
    """A LoRA file in the Lora folder: `name`, `name.safetensors` or `sub/name`; the suffix is added if missing."""
    relative = _check_name(name, what)
    file_name = relative.name
    if relative.suffix.lower() not in LORA_SUFFIXES:
        name, file_name = f"{name}.safetensors", f"{file_name}.safetensors"
    # an output's temporary file must fit too
    check_file_name(file_name, what, reserve=0 if must_exist else TEMPORARY_RESERVE)
    path = resolve_inside(root, name, what, must_exist=False)
    if must_exist and not path.is_file():
        raise UnsafePath(f"{what}: no LoRA file {relative} in the Lora folder")
    return path


def relative_name(root: Path, path: Path) -> str:
    """How a path inside `root` is named in API answers: relative, with forward slashes."""
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
