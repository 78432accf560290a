"""The LoRAs the tab's menus offer: the host's list (what the WebUI's Lora page shows), as names inside the Lora
folder that merge and inspect requests take. Files outside the Lora folder and non-safetensors files are left
out: the merge reads safetensors from the Lora folder only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from .safe_paths import LORA_SUFFIXES

SUFFIX = LORA_SUFFIXES[0]


def lora_names(lora_dir: Path, listed: Optional[Sequence[Path]]) -> list[str]:
    """`sub/name` (without .safetensors) for every listed LoRA file in the Lora folder, sorted case-blind.
    `listed` None (the host keeps no list, e.g. the built-in Lora extension is disabled): the folder itself."""
    root = Path(lora_dir).resolve()
    files = sorted(root.rglob(f"*{SUFFIX}")) if listed is None else listed
    names = set()
    for path in files:
        path = Path(path).resolve()
        if path.suffix.lower() == SUFFIX and path.is_relative_to(root):
            names.add(path.relative_to(root).with_suffix("").as_posix())
    return sorted(names, key=str.lower)
