"""Aspect-ratio buckets as kohya's trainers make them: every bucket's area fits within the training resolution,
its sides are multiples of the step and lie within [min, max]; an image goes to the bucket whose aspect ratio is
closest to its own (kohya's comparison), is scaled to cover it (sides rounded half up, as kohya's) and
centre-cropped."""

from __future__ import annotations

import math

Size = tuple[int, int]  # (width, height)


def _floor_to(value: float, step: int) -> int:
    return int(value // step) * step


def make_buckets(max_size: Size, min_reso: int, max_reso: int, step: int) -> list[Size]:
    """The bucket family for a training size: the square of the same area, and for every width a multiple of
    `step` in [min_reso, max_reso] the tallest height that keeps the area within max_size's (both orientations)."""
    max_area = max_size[0] * max_size[1]
    side = _floor_to(math.sqrt(max_area), step)
    buckets = {(side, side)}
    width = math.ceil(min_reso / step) * step
    while width <= max_reso:
        height = min(_floor_to(max_reso, step), _floor_to(max_area / width, step))
        if height >= min_reso:
            buckets.update({(width, height), (height, width)})
        width += step
    return sorted(buckets)


def closest_bucket(size: Size, buckets: list[Size]) -> Size:
    """The image's own size when it is a bucket; else the bucket whose aspect ratio (width / height) differs
    least from the image's, the first of `buckets` on a tie: kohya's rule, so that the same images land in the
    same buckets, and are cropped alike, as in kohya's trainers."""
    if tuple(size) in buckets:
        return tuple(size)
    ratio = size[0] / size[1]
    return min(buckets, key=lambda b: abs(b[0] / b[1] - ratio))


def no_upscale_bucket(size: Size, max_size: Size, step: int) -> Size:
    """A bucket sized from the image itself: shrunk (aspect kept) to fit the area when it is larger, never
    enlarged, sides rounded down to the step (at least one step)."""
    width, height = size
    max_area = max_size[0] * max_size[1]
    if width * height > max_area:
        shrink = math.sqrt(max_area / (width * height))
        width, height = width * shrink, height * shrink
    return max(step, _floor_to(width, step)), max(step, _floor_to(height, step))


def fixed_bucket(max_size: Size) -> Size:
    """Without bucketing every image is cropped to the training size (sides rounded down to 8, the VAE's factor)."""
    return max(8, _floor_to(max_size[0], 8)), max(8, _floor_to(max_size[1], 8))


def cover_and_crop(size: Size, bucket: Size) -> tuple[Size, tuple[int, int, int, int]]:
    """How to fit an image into its bucket: the resized size that covers the bucket (aspect kept) and the centred
    crop box (left, top, right, bottom) in that resized image."""
    scale = max(bucket[0] / size[0], bucket[1] / size[1])
    resized = (max(bucket[0], math.floor(size[0] * scale + 0.5)), max(bucket[1], math.floor(size[1] * scale + 0.5)))
    left, top = (resized[0] - bucket[0]) // 2, (resized[1] - bucket[1]) // 2
    return resized, (left, top, left + bucket[0], top + bucket[1])
