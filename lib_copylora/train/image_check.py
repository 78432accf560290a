"""Whether an image of a training set can be read, and why not: each image is decoded once when its set is scanned,
so a truncated file, a text file named .jpg, an empty file, a link to nowhere or a decompression bomb is reported
before training starts instead of failing at the step that first needs it."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import NamedTuple

from .buckets import Size


class UnreadableImage(NamedTuple):
    path: Path
    reason: str  # one line: "truncated or corrupt (image file is truncated)", "empty file (0 bytes)", ...

    def __str__(self) -> str:
        return f"{self.path.parent.name}/{self.path.name} ({self.reason})"


def open_image(path: Path):
    """`Image.open`, refusing a decompression bomb. PIL raises only above twice its pixel limit and merely warns
    between the two; both are unreadable to us. The check reads the header's size instead of turning the warning
    into an error, since warning filters are process-wide and the WebUI generates in other threads meanwhile."""
    from PIL import Image

    image = Image.open(path)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.size[0] * image.size[1] > limit:
        image.close()
        raise Image.DecompressionBombError(f"Image size ({image.size[0] * image.size[1]} pixels) exceeds the limit "
                                           f"of {limit} pixels")
    return image


def unreadable_errors() -> tuple[type[BaseException], ...]:
    """What PIL raises for a file it cannot decode: OSError (truncated, unidentified, permissions), SyntaxError
    (broken PNG chunks), zlib/struct errors and ValueError from corrupt data, the decompression-bomb checks."""
    from PIL import Image

    return (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError,
            Image.DecompressionBombWarning)


def unreadable_reason(path: Path, exc: BaseException) -> str:
    from PIL import Image, UnidentifiedImageError

    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"too many pixels, a possible decompression bomb ({first_line.split(',')[0]})"
    if isinstance(exc, UnidentifiedImageError):
        return "empty file (0 bytes)" if _size_of(path) == 0 else "not an image, or a format PIL cannot read"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot be read ({exc.strerror})"
    return f"truncated or corrupt ({first_line})"


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def image_size(path: Path) -> Size:
    """The size the loader will see (EXIF rotation applied), after decoding the whole image once (at 1/8 scale for
    JPEG, which still reads all of its data): a file that only has a readable header fails here, not in training."""
    from PIL import Image

    with open_image(path) as image:
        # EXIF rotation swaps the sides of photos from phones; the loader applies it too.
        orientation = image.getexif().get(0x0112, 1)
        width, height = image.size
        image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        image.convert("RGB")
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def unreadable_message(root: Path, unreadable: list[UnreadableImage], shown: int = 3) -> str:
    """One line: the first few unreadable images with their reasons, and how many more."""
    listed = ", ".join(str(image) for image in unreadable[:shown])
    more = f" and {len(unreadable) - shown} more" if len(unreadable) > shown else ""
    return f"{len(unreadable)} of the images under {root} cannot be read: {listed}{more}"
