"""`DatasetConfig`: one image set as kohya's trainers read it (folders `N_name`, captions beside images, buckets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import TrainingError
from .field_checks import FieldChecks

# Training sizes the code can take: the VAE needs sides of at least 8 pixels and the smallest bucket step is 8;
# above 4096 a side is a typo (60000 asks for gigabytes per image before the first step).
MIN_SIDE, MAX_SIDE = 64, 4096
MAX_BUCKET_SIDE = 8192


class DatasetError(TrainingError):
    """A dataset folder or its settings cannot be used (missing folder, no images, bad resolution)."""


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def parse_resolution(value: "str | int | tuple[int, int]") -> tuple[int, int]:
    """`"512"` → (512, 512); `"600,900"` → (600, 900) as (width, height), kohya's `--resolution`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value[0], value[1]
    if not isinstance(value, str):
        raise DatasetError(f"resolution {_shown(value)} is not 'N' or 'W,H'")
    parts = [p.strip() for p in value.replace("x", ",").split(",") if p.strip()]
    try:
        numbers = [int(p) for p in parts if len(p) <= 12]
    except ValueError:
        raise DatasetError(f"resolution {_shown(value)} is not 'N' or 'W,H'") from None
    if len(numbers) == 1:
        return numbers[0], numbers[0]
    if len(numbers) == 2:
        return numbers[0], numbers[1]
    raise DatasetError(f"resolution {_shown(value)} is not 'N' or 'W,H'")


_checks = FieldChecks(DatasetError)


def _folder(name: str, value) -> Path:
    if not isinstance(value, (str, Path)) or "\0" in str(value) or not str(value).strip():
        raise DatasetError(f"{name} {value!r} is not a folder path")
    return Path(value)


def _caption_extension(value) -> str:
    """`.txt` (a missing dot is added); anything that is not one plain extension is refused."""
    text = value if isinstance(value, str) else ""
    text = text if text.startswith(".") else "." + text
    if len(text) < 2 or len(text) > 16 or not text[1:].replace("_", "").replace("-", "").isalnum():
        raise DatasetError(f"caption_extension {value!r} is not a file extension such as .txt")
    return text


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
    skip_unreadable_images: bool = field(default=False, metadata={
        "help": "train without the images that cannot be read (truncated, not an image, too many pixels) instead "
                "of refusing the set; they are listed either way"})

    def __post_init__(self) -> None:
        self.data_dir = _folder("data_dir", self.data_dir)
        self.reg_dir = _folder("reg_dir", self.reg_dir) if self.reg_dir not in (None, "") else None
        _checks.flags(self)
        width, height = self.max_size
        self.resolution = str(self.resolution) if isinstance(self.resolution, str) else f"{width},{height}"
        if not MIN_SIDE <= min(width, height) <= max(width, height) <= MAX_SIDE:
            raise DatasetError(f"resolution {width}x{height} is out of range: each side must be within "
                               f"{MIN_SIDE} and {MAX_SIDE} pixels")
        _checks.whole(self, "bucket_reso_steps", upper=1024)
        if self.bucket_reso_steps < 8 or self.bucket_reso_steps % 8:
            raise DatasetError(f"bucket_reso_steps must be a positive multiple of 8, not {self.bucket_reso_steps}")
        _checks.whole(self, "min_bucket_reso", upper=MAX_BUCKET_SIDE)
        _checks.whole(self, "max_bucket_reso", upper=MAX_BUCKET_SIDE)
        if not 0 < self.min_bucket_reso <= self.max_bucket_reso:
            raise DatasetError(f"need 0 < min_bucket_reso ({self.min_bucket_reso}) <= max_bucket_reso "
                               f"({self.max_bucket_reso})")
        if self.enable_bucket and not self.bucket_no_upscale and \
                not self.min_bucket_reso <= min(width, height) <= max(width, height) <= self.max_bucket_reso:
            raise DatasetError(f"resolution {width}x{height} must lie within min_bucket_reso "
                               f"{self.min_bucket_reso} and max_bucket_reso {self.max_bucket_reso}")
        self.caption_extension = _caption_extension(self.caption_extension)
        if not isinstance(self.default_caption, str):
            raise DatasetError(f"default_caption must be text, not {self.default_caption!r}")
        _checks.whole(self, "keep_tokens", allow_zero=True, upper=1000)
        _checks.number("caption_dropout_rate", self.caption_dropout_rate)
        if not 0.0 <= self.caption_dropout_rate <= 1.0:
            raise DatasetError(f"caption_dropout_rate must be within [0, 1], not {self.caption_dropout_rate}")
        _checks.positive("prior_loss_weight", self.prior_loss_weight, allow_zero=True, upper=1000.0)
        _checks.whole(self, "batch_size", upper=1024)
        _checks.seed(self)

    @property
    def max_size(self) -> tuple[int, int]:
        """(width, height) from `resolution`."""
        return parse_resolution(self.resolution)
