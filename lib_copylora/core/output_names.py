"""What a name we write a file under may be: one rule for trained and merged LoRAs, whoever asks (CLI, API, tab).

A name that the file system or another tool refuses must be refused before any work starts, not after an hour of
training: no path separators (a name, not a path), nothing unprintable (NUL ends a C string; control characters and
line breaks break logs and the WebUI's card list), none of the characters Windows forbids (the file may be copied
there), no leading '.' (hidden), and short enough that the longest name we derive from it (`NAME_A.safetensors`,
`NAME.A.trainstate`, the temporary `.NAME.safetensors.XXXXXXXX.tmp` of an atomic write) stays under the usual
255-byte limit of a file name.
"""

from __future__ import annotations

from typing import Optional

MAX_OUTPUT_NAME_BYTES = 200  # 255 minus the longest suffixes and the temporary file's decorations
_WINDOWS_FORBIDDEN = frozenset(':*?"<>|')
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def _shown(name: str) -> str:
    return repr(name) if len(name) <= 60 else repr(name[:60]) + f"... ({len(name)} characters)"


def output_name_problem(name: str) -> Optional[str]:
    """Why `name` cannot be an output file name (a file name, with or without its extension), or None."""
    if not isinstance(name, str):
        return f"{name!r} is not text"
    shown = _shown(name)
    if not name.strip():
        return "the name is empty"
    if "/" in name or "\\" in name:
        return f"{shown} has a path separator; give a plain name (the folder is set on its own)"
    if not name.isprintable():
        return f"{shown} has a control character, line break or other unprintable character"
    if _WINDOWS_FORBIDDEN & set(name):
        return f"{shown} has one of : * ? \" < > | (not allowed in file names)"
    if name.startswith("."):
        return f"{shown} starts with '.' (a hidden file)"
    if name != name.strip() or name.endswith("."):
        return f"{shown} starts or ends with a space or ends with '.'"
    if name.split(".")[0].upper() in _WINDOWS_DEVICES:
        return f"{shown} is a reserved device name on Windows"
    size = len(name.encode("utf-8"))
    if size > MAX_OUTPUT_NAME_BYTES:
        return f"{shown} is too long ({size} bytes; at most {MAX_OUTPUT_NAME_BYTES})"
    return None
