"""`DatasetConfig`: one image set as kohya's trainers read it (folders `N_name`, captions beside images, buckets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import TrainingError


class DatasetError(TrainingError):
    """A dataset folder or its settings cannot be used (missing folder, no images, bad resolution)."""


def parse_resolution(value: "str | int | tuple[int, int]") -> tuple[int, int]:
    """`"512"` → (512, 512); `"600,900"` → (600, 900) as (width, height), kohya's `--resolution`."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, tuple):
        return int(value[0]), int(value[1])
    parts = [p.strip() for p in str(value).replace("x", ",").split(",") if p.strip()]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise DatasetError(f"resolution {value!r} is not 'N' or 'W,H'") from None
    if len(numbers) == 1:
        return numbers[0], numbers[0]
    if len(numbers) == 2:
        return numbers[0], numbers[1]
    raise DatasetError(f"resolution {value!r} is not 'N' or 'W,H'")


@dataclass
class DatasetConfig:
    data_dir: Path = field(metadata={"help": "training images: sub-folders 'N_name' repeat their images N times; "
                                             "images directly in the folder count once"})
    reg_dir: Optional[Path] = field(default=None, metadata={
        "help": "regularisation images (same layout), cycled to match the training count, weighted by "
                "prior_loss_weight"})
    resolution: str = field(default="512", metadata={
        "help": "maximum training size 'N' or 'W,H'; buckets keep their area within W*H"})
    enable_bucket: bool = field(default=True, metadata={
        "help": "group images into aspect-ratio buckets (off: every image is resized and centre-cropped to W,H)"})
    min_bucket_reso: int = field(default=256, metadata={"help": "smallest bucket side in pixels"})
    max_bucket_reso: int = field(default=1536, metadata={"help": "largest bucket side in pixels"})
    bucket_reso_steps: int = field(default=64, metadata={"help": "bucket sides are multiples of this (>= 8)"})
    bucket_no_upscale: bool = field(default=False, metadata={
        "help": "size each image's bucket from the image itself so small images are never enlarged"})
    flip_aug: bool = field(default=False, metadata={"help": "randomly mirror images left-right"})
    caption_extension: str = field(default=".txt", metadata={
        "help": "caption file extension beside each image ('.caption' is read too when this one is missing)"})
    default_caption: str = field(default="", metadata={
        "help": "caption for images without a caption file (empty: train without captions, the copier way)"})
    folder_name_as_caption: bool = field(default=False, metadata={
        "help": "use the folder's name after 'N_' as the caption of uncaptioned images (kohya's class tokens)"})
    shuffle_caption: bool = field(default=False, metadata={"help": "shuffle comma-separated caption tokens"})
    keep_tokens: int = field(default=0, metadata={"help": "leading caption tokens that shuffling never moves"})
    caption_dropout_rate: float = field(default=0.0, metadata={"help": "chance a sample trains with an empty caption"})
    prior_loss_weight: float = field(default=1.0, metadata={"help": "loss weight of regularisation images"})
    batch_size: int = field(default=1, metadata={"help": "images per step (kohya's train_batch_size)"})
    cache_latents: bool = field(default=True, metadata={
        "help": "encode each image once with the VAE before training (and its mirror image with flip_aug)"})
    seed: int = field(default=0, metadata={"help": "seed for the order, flips, caption shuffles and dropouts"})

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.reg_dir = Path(self.reg_dir) if self.reg_dir not in (None, "") else None
        self.resolution = str(self.resolution)
        width, height = self.max_size
        if min(width, height) < 8:
            raise DatasetError(f"resolution {self.resolution!r} is too small (at least 8 pixels a side)")
        if self.bucket_reso_steps < 8 or self.bucket_reso_steps % 8:
            raise DatasetError(f"bucket_reso_steps must be a positive multiple of 8, not {self.bucket_reso_steps}")
        if not 0 < self.min_bucket_reso <= self.max_bucket_reso:
            raise DatasetError(f"need 0 < min_bucket_reso ({self.min_bucket_reso}) <= max_bucket_reso "
                               f"({self.max_bucket_reso})")
        if self.enable_bucket and not self.bucket_no_upscale and \
                not self.min_bucket_reso <= min(width, height) <= max(width, height) <= self.max_bucket_reso:
            raise DatasetError(f"resolution {width}x{height} must lie within min_bucket_reso "
                               f"{self.min_bucket_reso} and max_bucket_reso {self.max_bucket_reso}")
        if not self.caption_extension.startswith("."):
            self.caption_extension = "." + self.caption_extension
        if self.keep_tokens < 0:
            raise DatasetError(f"keep_tokens must be >= 0, not {self.keep_tokens}")
        if not 0.0 <= self.caption_dropout_rate <= 1.0:
            raise DatasetError(f"caption_dropout_rate must be within [0, 1], not {self.caption_dropout_rate}")
        if self.prior_loss_weight < 0:
            raise DatasetError(f"prior_loss_weight must be >= 0, not {self.prior_loss_weight}")
        if self.batch_size < 1:
            raise DatasetError(f"batch_size must be >= 1, not {self.batch_size}")

    @property
    def max_size(self) -> tuple[int, int]:
        """(width, height) from `resolution`."""
        return parse_resolution(self.resolution)
