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
    return relative


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
    if relative.suffix.lower() not in LORA_SUFFIXES:
        name = f"{name}.safetensors"
    path = resolve_inside(root, name, what, must_exist=False)
    if must_exist and not path.is_file():
        raise UnsafePath(f"{what}: no LoRA file {relative} in the Lora folder")
    return path


def relative_name(root: Path, path: Path) -> str:
    """How a path inside `root` is named in API answers: relative, with forward slashes."""
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
