"""Images uploaded in the tab become a new image set in the datasets folder, laid out as kohya reads it:
`<datasets>/<name>/<repeats>_<name>/` with each caption `.txt` beside its image. Pure: no gradio, no WebUI."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple, Sequence

from ..core.errors import CopyLoraError
from ..train.dataset import IMAGE_EXTENSIONS
from ..service.safe_paths import resolve_inside

CAPTION_EXTENSIONS = (".txt", ".caption")


class SavedDataset(NamedTuple):
    name: str  # the image set's name inside the datasets folder (what the dataset box takes)
    images: int
    captions: int
    skipped: list[str]  # uploaded files that are neither images nor captions


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_EXTENSIONS else "caption" if suffix in CAPTION_EXTENSIONS else "other"


def save_uploaded_dataset(datasets: Path, name: str, repeats: int, files: Sequence[Path]) -> SavedDataset:
    """Copy the uploads into a new image set `name` (refused if it exists, so nothing is overwritten)."""
    if int(repeats) < 1:
        raise CopyLoraError(f"repeats must be 1 or more, not {repeats}")
    target = resolve_inside(datasets, name, "new image set")
    if target.exists():
        raise CopyLoraError(f"an image set named {name!r} exists already; choose another name")
    paths = [Path(f) for f in files]
    images = [p for p in paths if _kind(p) == "image"]
    if not images:
        raise CopyLoraError("no images among the uploaded files (png, jpg, jpeg, webp, bmp)")
    folder = target / f"{int(repeats)}_{target.name}"
    folder.mkdir(parents=True)
    captions = [p for p in paths if _kind(p) == "caption"]
    for source in images + captions:
        shutil.copyfile(source, folder / source.name)
    skipped = [p.name for p in paths if _kind(p) == "other"]
    return SavedDataset(target.relative_to(Path(datasets).resolve()).as_posix(), len(images), len(captions),
                        skipped)
