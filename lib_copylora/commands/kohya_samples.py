"""kohya's `--sample_prompts FILE`: a text file of preview prompts, one per line, each with optional ` --x value`
options (`--n` negative prompt, `--w`/`--h` size, `--d` seed, `--l` CFG scale, `--s` steps, ...), read onto our
preview settings.

Previews never change the trained file, so what our previews cannot do (a size per prompt, negative prompts, a
sampler, a seed per prompt) is noted, not refused; a file that cannot be read, has no prompt or gives an option a
value that is not a number stops the run with one line naming the file and line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..train.errors import TrainConfigError

MAX_FILE_BYTES = 1 << 20  # a prompt file larger than this is not a prompt file
# kohya's options that map onto one preview setting for all prompts: option -> (field, type)
SHARED = {"s": ("steps", int), "l": ("guidance_scale", float), "d": ("seed", int)}
# kohya's options our previews do not have, with what CopyLoRA does instead
NOT_USED = {"n": "negative prompts are not used", "w": "previews render at the training images' size",
            "h": "previews render at the training images' size", "ss": "previews use DDIM",
            "cn": "previews use no ControlNet", "am": "previews use no attention mask",
            "f": "previews render at the training images' size", "t": "previews use no attention mask"}


def read_sample_prompts(path: Path) -> tuple[list[str], dict[str, Any], list[str]]:
    """(prompts, shared settings {field: value}, notes) of a kohya prompt file."""
    where = f"--sample_prompts {path}"
    if path.suffix.lower() in (".toml", ".json"):
        raise TrainConfigError(f"{where}: CopyLoRA reads kohya's .txt prompt files (one prompt per line, options "
                               "as ' --s 20'); write the prompts that way")
    prompts: list[str] = []
    values: dict[str, list] = {}
    unused: set[str] = set()
    for number, line in enumerate(_lines(path, where), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        prompt, *options = (" " + text).split(" --")
        if not prompt.strip():
            raise TrainConfigError(f"{where}, line {number}: the line has options but no prompt")
        prompts.append(prompt.strip())
        for option in options:
            key, _, value = option.strip().partition(" ")
            if key in SHARED:
                values.setdefault(key, []).append(_number(where, number, key, value.strip()))
            else:
                unused.add(key)
    if not prompts:
        raise TrainConfigError(f"{where}: no prompt in the file (one per line; lines starting with # are comments)")
    return prompts, *_settings(values, unused)


def _lines(path: Path, where: str) -> list[str]:
    try:
        if not path.is_file():
            raise TrainConfigError(f"{where}: no such file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise TrainConfigError(f"{where}: the file is larger than {MAX_FILE_BYTES >> 20} MiB; is it the prompts?")
        return path.read_bytes().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise TrainConfigError(f"{where}: the file is not UTF-8 text") from None
    except OSError as error:
        raise TrainConfigError(f"{where}: cannot read the file ({error.strerror or error})") from None


def _number(where: str, line: int, key: str, text: str):
    kind = SHARED[key][1]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (kind is int and not value.is_integer()):
        raise TrainConfigError(f"{where}, line {line}: --{key} {text!r} is not a "
                               f"{'whole ' if kind is int else ''}number")
    return kind(value)


def _settings(values: dict[str, list], unused: set[str]) -> tuple[dict[str, Any], list[str]]:
    settings: dict[str, Any] = {}
    notes: list[str] = []
    for key, given in values.items():
        field = SHARED[key][0]
        settings[field] = given[0]
        if len(set(given)) > 1:
            notes.append(f"previews use one {field} for every prompt: the first line's --{key} {given[0]}")
    for key in sorted(unused):
        notes.append(f"the prompt option --{key} is not used: {NOT_USED.get(key, 'CopyLoRA previews do not have it')}")
    return settings, notes
