"""Captions as kohya reads them: a text file beside the image, comma-separated tokens that may be shuffled
(the first `keep_tokens` stay put) and dropped with some probability."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

from .data_config import DatasetError

FALLBACK_EXTENSIONS = (".caption", ".txt")


def read_caption(image: Path, extension: str) -> Optional[str]:
    """The caption beside `image` (the configured extension first, then `.caption` and `.txt`), or None when there
    is no caption file. Only the first line counts, as in kohya's reader."""
    for ext in (extension, *FALLBACK_EXTENSIONS):
        path = image.with_suffix(ext)
        if path.is_file():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror or str(exc)
                raise DatasetError(f"caption file {path} cannot be read ({reason}); fix or remove it") from None
            return lines[0].strip() if lines else ""
    return None


def shuffle_tokens(caption: str, keep_tokens: int, rng: random.Random) -> str:
    """Shuffle the comma-separated tokens after the first `keep_tokens` (a trigger word usually leads)."""
    tokens = [t.strip() for t in caption.split(",")]
    head, tail = tokens[:keep_tokens], tokens[keep_tokens:]
    rng.shuffle(tail)
    return ", ".join(t for t in head + tail if t)


def augment_caption(caption: str, rng: random.Random, shuffle: bool, keep_tokens: int, dropout_rate: float) -> str:
    """One training sample's caption. The dropout draw happens even at rate 0, so turning dropout on or off does
    not reshuffle every other sample's augmentations."""
    drop = rng.random() < dropout_rate
    shuffled = shuffle_tokens(caption, keep_tokens, rng) if shuffle and caption else caption
    return "" if drop else shuffled
