"""Where CopyLoRA's training files live in the WebUI: `--copylora-dir` (default `<data dir>/copylora`) holds the
image sets (`datasets/`) and each run's previews (`outputs/`); results go into the WebUI's Lora folder."""

from __future__ import annotations

from pathlib import Path

from ..service.train_request import Folders

DATASETS = "datasets"
OUTPUTS = "outputs"


def copylora_dir() -> Path:
    from modules import paths_internal, shared

    flag = getattr(shared.cmd_opts, "copylora_dir", None)
    return Path(flag) if flag else Path(paths_internal.data_path) / "copylora"


def webui_folders() -> Folders:
    """The folders, created when missing (an empty datasets folder is where users put their image sets)."""
    from modules import shared

    root = copylora_dir()
    folders = Folders(datasets=root / DATASETS, outputs=root / OUTPUTS, loras=Path(shared.cmd_opts.lora_dir))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders
