"""Values typed into the X/Y/Z plot for our axes: `VALUE` or `LORA_NAME:VALUE`, comma-separated.

Strength values accept the plot's own range forms, `0-1 (+0.25)` and `0-1 [5]`, so that a strength axis reads
like the WebUI's numeric axes although its values may name a LoRA.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Optional

from .lora_tags import split_axis_value

_NUM = r"([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)"
STEP_RANGE = re.compile(rf"\s*{_NUM}\s*-\s*{_NUM}\s*\(\s*\+?\s*{_NUM}\s*\)\s*")
COUNT_RANGE = re.compile(rf"\s*{_NUM}\s*-\s*{_NUM}\s*\[\s*(\d+)\s*\]\s*")


def split_csv(text: str) -> list[str]:
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    return [item.strip() for row in rows for item in row if item.strip()]


def _expand_number(text: str) -> list[float]:
    step = STEP_RANGE.fullmatch(text)
    if step:
        start, end, inc = (float(g) for g in step.groups())
        if inc == 0:
            raise ValueError(f"'{text}': the step must not be 0")
        count = int(round((end - start) / inc)) + 1
        return [round(start + i * inc, 10) for i in range(max(count, 0))]
    counted = COUNT_RANGE.fullmatch(text)
    if counted:
        start, end, n = float(counted.group(1)), float(counted.group(2)), int(counted.group(3))
        if n < 1:
            raise ValueError(f"'{text}': the count must be at least 1")
        return [start] if n == 1 else [round(start + (end - start) * i / (n - 1), 10) for i in range(n)]
    try:
        return [float(text)]
    except ValueError:
        raise ValueError(f"'{text}' is not a strength: use a number, a range like 0-1 (+0.25) or 0-1 [5]") from None


def join_axis_value(lora_name: Optional[str], value: str) -> str:
    return f"{lora_name}:{value}" if lora_name else value


def expand_strengths(text: str) -> list[str]:
    """`0.5, b:0-1 [3]` → ['0.5', 'b:0', 'b:0.5', 'b:1']"""
    out = []
    for item in split_csv(text):
        name, value = split_axis_value(item)
        out.extend(join_axis_value(name, f"{v:g}") for v in _expand_number(value))
    return out
