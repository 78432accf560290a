"""Block-weight presets: the shipped defaults plus the user's file, in the LoRA Block Weight extension's format.

The format, as that extension reads it: one `NAME:v1,v2,...` per line, the name is what comes before the first
colon (stripped), values are comma-separated. A line containing `#` anywhere is a comment, and so are blank lines.
Where a name repeats, the last line wins. Unlike that extension, which silently skips a line it cannot read (a
wrong count, a typo), we report it with its line number: a silently missing preset is harder to debug.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from .atomic import write_atomic
from .block_spec import families_for_count, format_values, parse_values
from .blocks import BLOCK_FORMATS, accepted_counts
from .errors import SpecError
from .family import Family

PRESET_FILE_NAME = "block_weight_presets.txt"
PRESETS_ENV = "COPYLORA_PRESETS"
_DEFAULTS_FILE = Path(__file__).with_name("default_presets.txt")
_FORBIDDEN_NAME_CHARS = set(":,#=<>") | {" ", "\t", "\n", "\r"}


def _preset_counts() -> tuple[int, ...]:
    return tuple(sorted({fmt.count for formats in BLOCK_FORMATS.values() for fmt in formats}))


def _is_comment_or_blank(line: str) -> bool:
    return not line.strip() or "#" in line


def _preset_name(line: str) -> str | None:
    """The name a non-comment line defines, or None for comments and blank lines."""
    if _is_comment_or_blank(line) or ":" not in line:
        return None
    return line.split(":", 1)[0].strip()


def _check_values(values: tuple[float, ...]) -> None:
    if len(values) not in _preset_counts():
        per_family = ", ".join(f"{f.label}: {' or '.join(map(str, accepted_counts(f)))}" for f in Family)
        raise SpecError(f"{len(values)} values fit no block format; use {per_family}")


def parse_preset_text(text: str, origin: str) -> dict[str, tuple[float, ...]]:
    """Presets from file text; SpecError names `origin` and the line number of a line it cannot read."""
    presets: dict[str, tuple[float, ...]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if _is_comment_or_blank(line):
            continue
        try:
            if ":" not in line:
                raise SpecError("expected NAME:v1,v2,... (or a comment starting with #)")
            name, values_text = (part.strip() for part in line.split(":", 1))
            if not name:
                raise SpecError("the preset has no name before the colon")
            values = parse_values(values_text)
            _check_values(values)
        except SpecError as exc:
            raise SpecError(f"{origin}, line {number}: {exc}") from None
        presets[name] = values
    return presets


def default_presets() -> dict[str, tuple[float, ...]]:
    """The presets CopyLoRA ships (docs/architecture.md §6)."""
    return parse_preset_text(_DEFAULTS_FILE.read_text(encoding="utf-8"), _DEFAULTS_FILE.name)


def user_preset_path() -> Path:
    """`$COPYLORA_PRESETS` if set, else `block_weight_presets.txt` at the extension root (this repository's root)."""
    override = os.environ.get(PRESETS_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[2] / PRESET_FILE_NAME


def load_presets(path: Path | None = None) -> dict[str, tuple[float, ...]]:
    """The defaults with the user's file (`path`, else `user_preset_path()`) on top; a missing file adds nothing."""
    path = Path(path) if path is not None else user_preset_path()
    presets = default_presets()
    if path.is_file():
        presets.update(parse_preset_text(path.read_text(encoding="utf-8"), str(path)))
    return presets


def presets_for(family: Family, presets: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, ...]]:
    """Only the presets whose length is one of the family's formats."""
    return {name: tuple(values) for name, values in presets.items() if family in families_for_count(len(values))}


def _check_name(name: str) -> str:
    if not name or _FORBIDDEN_NAME_CHARS & set(name):
        raise SpecError(f"preset name {name!r} is empty or has a space or one of : , # = < >; pick a plain name")
    return name


def _write_lines_atomically(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(line + "\n" for line in lines).encode("utf-8")
    write_atomic(path, lambda handle: handle.write(text), overwrite=True)


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def save_preset(name: str, values: Sequence[float], path: Path | None = None) -> Path:
    """Add or replace `name` in the user's file, keeping every other line and comment; returns the file's path."""
    path = Path(path) if path is not None else user_preset_path()
    _check_name(name)
    values = parse_values(format_values(values))  # the same checks (finite, in range) as typed values
    _check_values(values)
    new_line = f"{name}:{format_values(values)}"
    lines, replaced = [], False
    for line in _read_lines(path):
        if _preset_name(line) != name:
            lines.append(line)
        elif not replaced:  # the first definition takes the new values, later duplicates go
            lines.append(new_line)
            replaced = True
    if not replaced:
        lines.append(new_line)
    _write_lines_atomically(path, lines)
    return path


def delete_preset(name: str, path: Path | None = None) -> Path:
    """Remove `name` from the user's file, keeping every other line; SpecError if the file does not define it."""
    path = Path(path) if path is not None else user_preset_path()
    lines = _read_lines(path)
    kept = [line for line in lines if _preset_name(line) != name]
    if len(kept) == len(lines):
        if name in default_presets():
            raise SpecError(f"{name!r} is a built-in preset and cannot be deleted; save one of the same name to "
                            f"override it")
        raise SpecError(f"no preset named {name!r} in {path}")
    _write_lines_atomically(path, kept)
    return path
