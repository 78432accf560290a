"""Block-weight presets: the shipped defaults plus the user's file, in the LoRA Block Weight extension's format.

The format, as that extension reads it: one `NAME:v1,v2,...` per line, the name is what comes before the first
colon (stripped), values are comma-separated. A line containing `#` anywhere is a comment, and so are blank lines.
Where a name repeats, the last line wins. Like that extension we skip a line we cannot read (a wrong count, a typo,
a name no tag could use), but never silently: each costs that line only and comes back as a `PresetProblem` naming
the file and the line, which the adapters show (a silently missing preset is harder to debug).

Lines end at '\n' only (a '\r' before it is dropped), never at the other characters `str.splitlines()` splits on
(\v, \f, \x1c-\x1e, \x85, U+2028, U+2029): a name holding one of them would otherwise read back as two broken
lines and take every other preset with it. One rule, `preset_name_problem`, says what a name may be, for the
reader and the writer alike.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Mapping, NamedTuple, Optional, Sequence

from .atomic import write_atomic
from .block_spec import families_for_count, format_values, parse_values
from .blocks import BLOCK_FORMATS, accepted_counts
from .errors import SpecError
from .family import Family
from .lora_tags import is_number

PRESET_FILE_NAME = "block_weight_presets.txt"
PRESETS_ENV = "COPYLORA_PRESETS"
_DEFAULTS_FILE = Path(__file__).with_name("default_presets.txt")
# ':' ends the name in the file and splits a prompt tag, ',' makes a spec a list of numbers, '=' makes a tag item
# named, '<' and '>' end a tag, '#' makes the line a comment; whitespace and other unprintable characters are
# caught by `str.isprintable()`.
_FORBIDDEN_NAME_CHARS = frozenset(":,#=<>")
MAX_PRESET_NAME = 64


class PresetWarning(UserWarning):
    """A line of a preset file was skipped; the message names the file, the line and the reason."""


class PresetProblem(NamedTuple):
    """One skipped line of a preset file (line 0: the whole file could not be read)."""

    origin: str
    line: int
    reason: str

    def __str__(self) -> str:
        where = f"{self.origin}, line {self.line}" if self.line else self.origin
        return f"{where}: {self.reason}; {'line' if self.line else 'file'} skipped"


class PresetFile(NamedTuple):
    presets: dict[str, tuple[float, ...]]
    problems: list[PresetProblem]


def _preset_counts() -> tuple[int, ...]:
    return tuple(sorted({fmt.count for formats in BLOCK_FORMATS.values() for fmt in formats}))


def preset_name_problem(name: str) -> Optional[str]:
    """Why `name` cannot be a preset name, or None when it can: it must be usable as `<lora:NAME:w:PRESET>`'s spec
    and read back from the file as itself. The one rule for the file's reader and writer."""
    shown = repr(name) if len(name) <= MAX_PRESET_NAME else repr(name[:MAX_PRESET_NAME]) + "..."
    if not name:
        return "the preset has no name"
    if len(name) > MAX_PRESET_NAME:
        return f"preset name {shown} is longer than {MAX_PRESET_NAME} characters"
    if not name.isprintable() or any(c.isspace() for c in name):
        return f"preset name {shown} has a space, line break or control character"
    if _FORBIDDEN_NAME_CHARS & set(name):
        return f"preset name {shown} has one of : , # = < >"
    if is_number(name):  # `<lora:n:1:NAME>` would read it as the UNet strength
        return f"preset name {shown} reads as a number"
    return None


def _split_lines(text: str) -> list[str]:
    """Lines ending at '\n' only, each without its '\r\n' / '\n' ending (see the module notes)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


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


def _parse_line(line: str) -> tuple[str, tuple[float, ...]]:
    try:
        line.encode("utf-8")  # bytes that are not UTF-8 were kept as surrogates by `_file_text`
    except UnicodeEncodeError:
        raise SpecError("the line is not UTF-8 text") from None
    if ":" not in line:
        raise SpecError("expected NAME:v1,v2,... (or a comment starting with #)")
    name, values_text = (part.strip() for part in line.split(":", 1))
    problem = preset_name_problem(name)
    if problem:
        raise SpecError(problem)
    values = parse_values(values_text)
    _check_values(values)
    return name, values


def read_preset_text(text: str, origin: str) -> PresetFile:
    """Presets from file text; each line it cannot read is skipped and comes back as a PresetProblem."""
    presets: dict[str, tuple[float, ...]] = {}
    problems: list[PresetProblem] = []
    for number, line in enumerate(_split_lines(text), start=1):
        if _is_comment_or_blank(line):
            continue
        try:
            name, values = _parse_line(line)
        except SpecError as exc:
            problems.append(PresetProblem(origin, number, str(exc)))
            continue
        presets[name] = values
    return PresetFile(presets, problems)


def parse_preset_text(text: str, origin: str) -> dict[str, tuple[float, ...]]:
    """Presets from file text, strictly: SpecError names `origin` and the line number of the first bad line."""
    parsed = read_preset_text(text, origin)
    if parsed.problems:
        first = parsed.problems[0]
        raise SpecError(f"{first.origin}, line {first.line}: {first.reason}")
    return parsed.presets


def default_presets() -> dict[str, tuple[float, ...]]:
    """The presets CopyLoRA ships (docs/architecture.md §6)."""
    return parse_preset_text(_DEFAULTS_FILE.read_text(encoding="utf-8"), _DEFAULTS_FILE.name)


def user_preset_path() -> Path:
    """`$COPYLORA_PRESETS` if set, else `block_weight_presets.txt` at the extension root (this repository's root)."""
    override = os.environ.get(PRESETS_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[2] / PRESET_FILE_NAME


def _file_text(path: Path) -> Optional[str]:
    """The file's text (bytes that are not UTF-8 kept as surrogates, so a rewrite keeps them), None when absent;
    OSError when it exists but cannot be read."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return data.decode("utf-8", errors="surrogateescape")


def read_presets(path: Path | None = None) -> PresetFile:
    """The defaults with the user's file (`path`, else `user_preset_path()`) on top, and the lines of that file
    that were skipped. A missing file adds nothing; an unreadable one adds nothing and one problem."""
    path = Path(path) if path is not None else user_preset_path()
    presets = default_presets()
    try:
        text = _file_text(path)
    except OSError as exc:
        return PresetFile(presets, [PresetProblem(str(path), 0, f"cannot be read ({exc.strerror or exc})")])
    if text is None:
        return PresetFile(presets, [])
    user = read_preset_text(text, str(path))
    presets.update(user.presets)
    return PresetFile(presets, user.problems)


def load_presets(path: Path | None = None) -> dict[str, tuple[float, ...]]:
    """`read_presets(path)`'s presets; each skipped line becomes a PresetWarning (use `read_presets` to show them
    your own way)."""
    loaded = read_presets(path)
    for problem in loaded.problems:
        warnings.warn(PresetWarning(str(problem)), stacklevel=2)
    return loaded.presets


def presets_for(family: Family, presets: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, ...]]:
    """Only the presets whose length is one of the family's formats."""
    return {name: tuple(values) for name, values in presets.items() if family in families_for_count(len(values))}


def _check_name(name: str) -> str:
    problem = preset_name_problem(name)
    if problem:
        raise SpecError(f"{problem}; pick a plain name such as my_face")
    return name


def _write_lines_atomically(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # surrogateescape writes back, byte for byte, other lines that were not UTF-8
    text = "".join(line + "\n" for line in lines).encode("utf-8", errors="surrogateescape")
    write_atomic(path, lambda handle: handle.write(text), overwrite=True)


def _read_lines(path: Path) -> list[str]:
    """The file's lines as they are (endings aside), to write back all but the one that changes."""
    try:
        text = _file_text(path)
    except OSError as exc:
        raise SpecError(f"cannot read the preset file {path} ({exc.strerror or exc}); nothing was changed") from None
    return _split_lines(text) if text is not None else []


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
