"""Image sets the kohya way: folders `N_name` repeat their images N times, captions beside the images (or none),
aspect-ratio buckets, a regularisation set weighted by the prior loss, latents cached once per image.

The order of an epoch is a pure function of (seed, epoch), so a resumed run sees the very batches it would have
seen, and every data-parallel process agrees on the plan before taking its share of it.

Every image is decoded once when the set is scanned, so a truncated file, a text file named .jpg, an empty file or
a decompression bomb is found before training starts: the set is refused with the list of them, or, with
`skip_unreadable_images`, trained without them (listed all the same). Never a traceback at step 300.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

import torch

from .buckets import Size, closest_bucket, cover_and_crop, fixed_bucket, make_buckets, no_upscale_bucket
from .captions import augment_caption, read_caption
from .data_config import DatasetConfig, DatasetError
from .image_check import UnreadableImage, image_size, open_image, unreadable_errors, unreadable_message, \
    unreadable_reason

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_REPEAT_FOLDER = re.compile(r"^(\d+)_(.*)$")


class Batch(NamedTuple):
    latents: torch.Tensor  # (B, C, h, w) float32 on the CPU; the loop moves them to its device and dtype
    captions: list[str]
    loss_weights: torch.Tensor  # (B,) float32: 1 for training images, prior_loss_weight for regularisation ones


class ImageRecord(NamedTuple):
    path: Path
    folder: str  # the folder's name after `N_` (kohya's class tokens)
    repeats: int
    caption: Optional[str]  # the caption file's text, None when there is no caption file
    size: Size
    bucket: Size
    is_reg: bool


class Sample(NamedTuple):
    record: int  # index into ImageDataset.records
    flip: bool
    caption: str


class FolderSummary(NamedTuple):
    path: Path
    repeats: int
    images: int
    captioned: int
    is_reg: bool


class DatasetSummary(NamedTuple):
    folders: list[FolderSummary]
    images: int
    samples_per_epoch: int  # training images × repeats
    reg_images: int
    reg_samples: int  # regularisation samples per epoch, cycled to match the training samples
    captioned: int
    buckets: dict[Size, int]  # samples per epoch in each (width, height) bucket
    batches_per_epoch: int
    notes: list[str]
    unreadable: tuple[UnreadableImage, ...] = ()  # skipped images, with why (training refuses them unless asked)

    @property
    def caption_coverage(self) -> float:
        total = self.images + self.reg_images
        return self.captioned / total if total else 0.0

    def describe(self) -> str:
        lines = [f"{f.path.name}: {f.images} images × {f.repeats} repeats, {f.captioned} captioned"
                 + (" (regularisation)" if f.is_reg else "") for f in self.folders]
        lines.append(f"{self.images} training images, {self.samples_per_epoch} samples per epoch"
                     + (f", {self.reg_images} regularisation images as {self.reg_samples} samples"
                        if self.reg_images else ""))
        lines.append(f"captions: {self.captioned} of {self.images + self.reg_images} images "
                     f"({100 * self.caption_coverage:.0f}%)")
        lines.append("buckets: " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in sorted(self.buckets.items())))
        lines.append(f"{self.batches_per_epoch} batches per epoch")
        if self.unreadable:
            lines.append(f"unreadable: {len(self.unreadable)} images, left out of the counts above")
            lines += [f"  {image}" for image in self.unreadable]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _images_in(folder: Path) -> list[Path]:
    # a link to nowhere is listed too, so that it is reported as unreadable instead of silently missing
    return sorted(p for p in folder.iterdir()
                  if (p.is_file() or p.is_symlink()) and p.suffix.lower() in IMAGE_EXTENSIONS)


def find_image_folders(root: Path) -> tuple[list[tuple[Path, int, str]], list[str]]:
    """(folder, repeats, class name) for each folder holding images, and notes on what was skipped.

    Sub-folders `N_name` repeat their images N times. Images directly in `root` count once, unless `root` is
    itself named `N_name` (the user pointed at the image folder), then N times. Other sub-folders are skipped,
    as kohya does, with a note."""
    try:
        if not root.is_dir():
            raise DatasetError(f"image folder {root} does not exist")
        return _image_folders(root)
    except OSError as exc:  # a name too long, a folder we may not list
        raise DatasetError(f"image folder {root} cannot be read ({exc.strerror or exc})") from None


def _image_folders(root: Path) -> tuple[list[tuple[Path, int, str]], list[str]]:
    folders, notes = [], []
    own = _REPEAT_FOLDER.match(root.name)
    if _images_in(root):
        folders.append((root, int(own.group(1)) if own else 1, own.group(2) if own else root.name))
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        match = _REPEAT_FOLDER.match(sub.name)
        if match is None:
            notes.append(f"skipped {sub.name}: sub-folders are named 'N_name' (N = repeats)")
        elif int(match.group(1)) == 0:
            notes.append(f"skipped {sub.name}: 0 repeats")
        elif _images_in(sub):
            folders.append((sub, int(match.group(1)), match.group(2)))
        else:
            notes.append(f"skipped {sub.name}: no images")
    return folders, notes


def _bucket_for(size: Size, config: DatasetConfig, buckets: list[Size]) -> Size:
    if not config.enable_bucket:
        return fixed_bucket(config.max_size)
    if config.bucket_no_upscale:
        return no_upscale_bucket(size, config.max_size, config.bucket_reso_steps)
    return closest_bucket(size, buckets)


class ScannedSet(NamedTuple):
    records: list[ImageRecord]
    notes: list[str]
    unreadable: list[UnreadableImage]


def scan_images(root: Path, config: DatasetConfig, is_reg: bool) -> ScannedSet:
    """Every image under `root`, decoded once: the readable ones as records, the others with the reason."""
    folders, notes = find_image_folders(root)
    buckets = make_buckets(config.max_size, config.min_bucket_reso, config.max_bucket_reso,
                           config.bucket_reso_steps)
    records, unreadable = [], []
    errors = unreadable_errors()
    for folder, repeats, name in folders:
        for path in _images_in(folder):
            try:
                size = image_size(path)
            except errors as exc:
                unreadable.append(UnreadableImage(path, unreadable_reason(path, exc)))
                continue
            records.append(ImageRecord(path, name, repeats, read_caption(path, config.caption_extension), size,
                                       _bucket_for(size, config, buckets), is_reg))
    return ScannedSet(records, notes, unreadable)


def cycle_regularisation(reg: list[ImageRecord], train_samples: int) -> list[int]:
    """Which regularisation records fill an epoch: each with its repeats on the first pass, then one more of each
    in turn until they number the training samples (kohya's rule; a large set is cut short)."""
    chosen: list[int] = []
    first_pass = True
    while reg and len(chosen) < train_samples:
        for i, record in enumerate(reg):
            chosen.extend([i] * (record.repeats if first_pass else 1))
            if len(chosen) >= train_samples:
                break
        first_pass = False
    return chosen


def load_image(record: ImageRecord, flip: bool) -> torch.Tensor:
    """The image fitted to its bucket, (3, h, w) float32 in [-1, 1]."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with open_image(record.path) as raw:
            image = ImageOps.exif_transpose(raw).convert("RGB")
    except unreadable_errors() as exc:  # it was readable when the set was scanned: changed since?
        raise DatasetError(f"{record.path} can no longer be read ({unreadable_reason(record.path, exc)}); it was "
                           "readable when the set was scanned, so it changed while training") from None
    resized, box = cover_and_crop(image.size, record.bucket)
    if resized != image.size:
        image = image.resize(resized, Image.Resampling.LANCZOS)
    image = image.crop(box)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    return (array / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class ImageDataset:
    """The training set (plus regularisation set) of one LoRA, ready to hand out batches of latents."""

    def __init__(self, config: DatasetConfig, refuse_unreadable: bool = True):
        """Scan the set. An unreadable image refuses it (DatasetError listing them) unless the config skips them
        or `refuse_unreadable` is False (a preview, which lists them in its summary instead)."""
        self.config = config
        train, self.notes, self.unreadable = scan_images(config.data_dir, config, is_reg=False)
        if not train:
            raise DatasetError(_no_images(config.data_dir, "", self.unreadable))
        refuse = refuse_unreadable and not config.skip_unreadable_images
        if refuse and self.unreadable:
            raise DatasetError(_refusal(config.data_dir, self.unreadable))
        reg: list[ImageRecord] = []
        if config.reg_dir is not None:
            reg, reg_notes, reg_unreadable = scan_images(config.reg_dir, config, is_reg=True)
            self.notes += [f"regularisation: {n}" for n in reg_notes]
            if not reg:
                raise DatasetError(_no_images(config.reg_dir, "regularisation ", reg_unreadable))
            if refuse and reg_unreadable:
                raise DatasetError(_refusal(config.reg_dir, reg_unreadable))
            self.unreadable += reg_unreadable
        self.records: list[ImageRecord] = train + reg
        self._samples = [i for i, r in enumerate(train) for _ in range(r.repeats)]
        self._samples += [len(train) + i for i in cycle_regularisation(reg, len(self._samples))]
        self._latents: dict[tuple[int, bool], torch.Tensor] = {}

    # ---- the plan of an epoch ----------------------------------------------------------------------------------

    def base_caption(self, record: ImageRecord) -> str:
        if record.caption is not None:
            return record.caption
        return record.folder if self.config.folder_name_as_caption else self.config.default_caption

    def epoch_plan(self, epoch: int) -> list[list[Sample]]:
        """Every batch of the epoch, in order: samples of one bucket per batch, buckets shuffled within and the
        batches shuffled across, flips and caption augmentations drawn, all from (seed, epoch)."""
        cfg = self.config
        rng = random.Random(f"copylora-data:{cfg.seed}:{epoch}")
        by_bucket: dict[Size, list[Sample]] = {}
        for index in self._samples:
            record = self.records[index]
            flip = rng.random() < 0.5 and cfg.flip_aug
            caption = augment_caption(self.base_caption(record), rng, cfg.shuffle_caption, cfg.keep_tokens,
                                      cfg.caption_dropout_rate)
            by_bucket.setdefault(record.bucket, []).append(Sample(index, flip, caption))
        batches: list[list[Sample]] = []
        for bucket in sorted(by_bucket):
            samples = by_bucket[bucket]
            rng.shuffle(samples)
            batches += _chunks(samples, cfg.batch_size)
        rng.shuffle(batches)
        return batches

    def batches_per_epoch(self, world_size: int = 1) -> int:
        """Batches each of `world_size` data-parallel processes takes per epoch (all take the same number)."""
        counts = self._bucket_counts()
        total = sum(-(-n // self.config.batch_size) for n in counts.values())
        return max(1, total // world_size)

    def _bucket_counts(self) -> Counter:
        """Samples of an epoch (regularisation included) in each bucket."""
        return Counter(self.records[i].bucket for i in self._samples)

    def used_records(self) -> list[ImageRecord]:
        """The records an epoch draws from, each once: every training image and the regularisation images the
        cycling reaches (the rest of a large regularisation set is never used)."""
        return [self.records[i] for i in sorted(set(self._samples))]

    def one_batch_shape(self) -> bool:
        """Whether every batch of every epoch has one shape: one bucket, and no smaller last batch beside full ones
        (what CUDA graphs and skipping dynamo's guards need)."""
        counts = self._bucket_counts()
        if len(counts) != 1:
            return False
        count = next(iter(counts.values()))
        return count <= self.config.batch_size or count % self.config.batch_size == 0

    # ---- latents -----------------------------------------------------------------------------------------------

    def _encode(self, host, keys: list[tuple[int, bool]]) -> torch.Tensor:
        images = torch.stack([load_image(self.records[i], flip) for i, flip in keys])
        with torch.no_grad():
            latents = host.encode_images(images.to(device=host.device, dtype=host.dtype))
        return latents.detach().to(device="cpu", dtype=torch.float32)

    def cache_latents(self, host, progress: Optional[Callable[[int, int], None]] = None) -> int:
        """Encode every image once (and its mirror image when flip_aug is on) with the host's VAE; returns how
        many were encoded now. Images already cached are skipped, so calling it again costs nothing."""
        flips = (False, True) if self.config.flip_aug else (False,)
        wanted = [(i, f) for i in range(len(self.records)) for f in flips if (i, f) not in self._latents]
        by_bucket: dict[Size, list[tuple[int, bool]]] = {}
        for key in wanted:
            by_bucket.setdefault(self.records[key[0]].bucket, []).append(key)
        done = 0
        for bucket in sorted(by_bucket):
            for keys in _chunks(by_bucket[bucket], max(1, self.config.batch_size)):
                for key, latent in zip(keys, self._encode(host, keys)):
                    self._latents[key] = latent
                done += len(keys)
                if progress is not None:
                    progress(done, len(wanted))
        return len(wanted)

    def _materialise(self, host, samples: list[Sample]) -> Batch:
        keys = [(s.record, s.flip) for s in samples]
        if all(k in self._latents for k in keys):
            latents = torch.stack([self._latents[k] for k in keys])
        else:
            latents = self._encode(host, keys)
        weights = torch.tensor([self.config.prior_loss_weight if self.records[s.record].is_reg else 1.0
                                for s in samples], dtype=torch.float32)
        return Batch(latents, [s.caption for s in samples], weights)

    def batches(self, host, epoch: int, start: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """The batches of `epoch` for process `rank` of `world_size`, from its `start`-th on (to resume).

        Process r takes batches r, r + W, r + 2W, ... of the shared plan, wrapping round so every process takes
        `batches_per_epoch(world_size)` of them. With cache_latents, every image is encoded on the first call
        (call `cache_latents` earlier to report its progress); without, each batch is encoded as it comes."""
        if self.config.cache_latents:
            self.cache_latents(host)
        plan = self.epoch_plan(epoch)
        count = self.batches_per_epoch(world_size)
        for step in range(start, count):
            yield self._materialise(host, plan[(rank + world_size * step) % len(plan)])

    def summary(self) -> DatasetSummary:
        train = [r for r in self.records if not r.is_reg]
        reg = [r for r in self.records if r.is_reg]
        folders: dict[Path, FolderSummary] = {}
        for r in self.records:
            old = folders.get(r.path.parent, FolderSummary(r.path.parent, r.repeats, 0, 0, r.is_reg))
            folders[r.path.parent] = old._replace(images=old.images + 1,
                                                  captioned=old.captioned + (r.caption is not None))
        buckets = self._bucket_counts()
        train_samples = sum(r.repeats for r in train)
        return DatasetSummary(
            folders=list(folders.values()), images=len(train), samples_per_epoch=train_samples,
            reg_images=len(reg), reg_samples=len(self._samples) - train_samples,
            captioned=sum(r.caption is not None for r in self.records), buckets=dict(buckets),
            batches_per_epoch=self.batches_per_epoch(), notes=list(self.notes), unreadable=tuple(self.unreadable))


def _refusal(root: Path, unreadable: list[UnreadableImage]) -> str:
    return (f"{unreadable_message(root, unreadable)}; fix or remove them, or set skip_unreadable_images to train "
            "without them")


def _no_images(root: Path, kind: str, unreadable: list[UnreadableImage]) -> str:
    if unreadable:
        return f"no readable images in the {kind}folder {root}: {unreadable_message(root, unreadable)}"
    return f"no images ({', '.join(IMAGE_EXTENSIONS)}) under the {kind}folder {root}"


def scan_dataset(config: DatasetConfig) -> DatasetSummary:
    """What a dataset folder holds, for the WebUI tab's preview and the CLI's opening lines. Every image is decoded
    once; the unreadable ones are listed in the summary rather than refused, so the preview can show them."""
    return ImageDataset(config, refuse_unreadable=False).summary()
