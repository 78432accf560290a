"""The Merge panel's values → a `MergeRequest`, exactly once. Pure: no gradio, no WebUI.

The panel has a fixed number of rows (gradio 3 cannot add widgets at run time); a row without a LoRA is unused.
Ratios may have any sign (B − A is `B 1`, `A -1`). Block weights per row are numbers or a preset name; blank means
none. "Exact" keeps every rank (ranks add up); "re-rank" truncates the exact sum by SVD to the ranks given.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple, Optional, Sequence

from ..core.errors import MergeError
from ..service.merge_run import NO_BLOCKS, SAVE_PRECISIONS, MergeRequest

MERGE_ROWS = 6


class MergeMode(enum.Enum):
    EXACT = "exact (ranks add up)"
    RERANK = "re-rank by SVD"


class MergeRow(NamedTuple):
    model: Optional[str]  # a name inside the Lora folder, or None for an unused row
    ratio: Any
    blocks: Optional[str]


def _rank(value: Any, what: str) -> Optional[int]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value)
    if not number.is_integer() or number < 1:
        raise MergeError(f"{what} must be a whole number of 1 or more, not {value}")
    return int(number)


def build_merge_request(rows: Sequence[MergeRow], mode: str, new_rank: Any, new_conv_rank: Any,
                        save_precision: str, output: str, overwrite: bool) -> MergeRequest:
    used = [row for row in rows if row.model]
    if not used:
        raise MergeError("pick at least one LoRA")
    if not (output or "").strip():
        raise MergeError("give the merged LoRA an output name")
    ratios = tuple(float(row.ratio if row.ratio not in (None, "") else 0.0) for row in used)
    blocks = tuple((row.blocks or "").strip() or NO_BLOCKS for row in used)
    rank = conv_rank = None
    if MergeMode(mode) is MergeMode.RERANK:
        rank = _rank(new_rank, "new rank")
        conv_rank = _rank(new_conv_rank, "new conv rank")
        if rank is None:
            raise MergeError("re-ranking needs a new rank")
    if save_precision not in SAVE_PRECISIONS:
        raise MergeError(f"save precision must be one of {', '.join(SAVE_PRECISIONS)}")
    return MergeRequest(models=tuple(row.model for row in used), ratios=ratios, output=output.strip(),
                        blocks=None if all(b == NO_BLOCKS for b in blocks) else blocks, new_rank=rank,
                        new_conv_rank=conv_rank, save_precision=save_precision, overwrite=bool(overwrite))
