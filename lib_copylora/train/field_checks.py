"""Checks shared by the config dataclasses' `__post_init__` (TrainConfig's parts, DatasetConfig), so that every
adapter (CLI, API, tab) gets the same refusal, with one line naming the field, before any work starts.

Values come from argparse, JSON bodies and gradio widgets, so types are checked too: a bool is not a number, a
string is not a rank, NaN and inf pass no comparison and so pass a plain `value < 0` test unless refused here.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import fields
from typing import Optional

MAX_STEPS = 10_000_000  # far above any real run; a typo such as 1e20 steps would never end
MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed
MAX_NOTE_CHARS = 1000  # a free-text note kept in a file's metadata


def _shown(value) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"


class FieldChecks:
    """The checks, raising `error` (each config family has its own typed error)."""

    def __init__(self, error: type[Exception]):
        self.error = error

    def number(self, name: str, value) -> float:
        """A real, finite number (bools and text are refused: `True` is not a rank, "1e-4" not a learning rate)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.error(f"{name} must be a number, not {value!r}")
        if not isinstance(value, numbers.Integral) and not math.isfinite(value):
            raise self.error(f"{name} must be a finite number, not {value}")
        return value

    def positive(self, name: str, value, allow_zero: bool = False, upper: Optional[float] = None) -> None:
        value = self.number(name, value)
        if value < 0 or (value == 0 and not allow_zero):
            raise self.error(f"{name} must be {'>= 0' if allow_zero else '> 0'}, not {_shown(value)}")
        if upper is not None and value > upper:
            raise self.error(f"{name} {_shown(value)} is above the limit of {upper:g}; is it a typo?")

    def whole(self, config, name: str, allow_zero: bool = False, upper: Optional[int] = MAX_STEPS,
              lower: Optional[int] = None) -> None:
        """Check an int field of `config`: within [lower, upper] when `lower` is given, else > 0 (>= 0) and at
        most `upper`. A float that is a whole number, as JSON may send it, becomes an int."""
        value = getattr(config, name)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
            object.__setattr__(config, name, value)  # frozen dataclasses too
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self.error(f"{name} must be a whole number, not {value!r}")
        if lower is None:
            self.positive(name, value, allow_zero, upper)
        elif not lower <= value <= upper:
            raise self.error(f"{name} must be within [{lower}, {upper}], not {_shown(value)}")

    def seed(self, config, name: str = "seed") -> None:
        self.whole(config, name, lower=-MAX_SEED, upper=MAX_SEED)

    def note(self, name: str, value) -> Optional[str]:
        """Free text as kept: trimmed, None when blank; at most MAX_NOTE_CHARS characters whose only control
        characters are line breaks and tabs."""
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(f"{name} {value!r} is not text")
        text = value.strip()
        if len(text) > MAX_NOTE_CHARS:
            raise self.error(f"{name} is too long ({len(text)} characters; at most {MAX_NOTE_CHARS})")
        odd = next((c for c in text if not c.isprintable() and c not in "\n\t"), None)
        if odd is not None:
            raise self.error(f"{name} has an unprintable character ({odd!r}): write plain text (line breaks and "
                             "tabs are fine)")
        return text or None

    def flags(self, config) -> None:
        """Every `bool` field holds a bool: "no" or 0 from a form or a JSON body must not pass as a choice."""
        for f in fields(config):
            value = getattr(config, f.name)
            if f.type in ("bool", bool) and not isinstance(value, bool):
                raise self.error(f"{f.name} must be true or false, not {value!r}")
