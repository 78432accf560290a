"""The names a merge's options take on every face (CLI flags, the tab's menu, the API's fields), and the one table
from a save precision to its dtype. Light on purpose: the CLI builds its parser from these without importing torch's
math or lycoris-lora (see bench/startup.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SAVE_PRECISIONS = ("fp16", "bf16", "fp32")
SAVE_ALIASES = {"float": "fp32"}  # kohya's name for it (merge_lora.py --save_precision float)
NO_BLOCKS = "-"  # a block spec that means "no block weights for this input"


def save_dtype(name: str) -> "torch.dtype":
    """The one table from a precision name (or kohya's alias) to the dtype the result is written in."""
    import torch

    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    return table[SAVE_ALIASES.get(name, name)]
