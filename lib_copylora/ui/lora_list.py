"""The LoRAs the tab's menus offer: the built-in Lora extension's list (what the Lora page shows), as names inside
the Lora folder that merge and inspect requests take. Files outside the Lora folder and non-safetensors files are
left out: the merge reads safetensors from the Lora folder only."""

from __future__ import annotations

from pathlib import Path

from ..webui import compat
from ..service.safe_paths import LORA_SUFFIXES

SUFFIX = LORA_SUFFIXES[0]


def _listed_files(lora_dir: Path) -> list[Path]:
    networks = compat.builtin_lora()
    if networks is None:  # the built-in extension is disabled: look at the folder itself
        return sorted(lora_dir.rglob(f"*{SUFFIX}"))
    return [Path(entry.filename) for entry in networks.available_networks.values()]


def lora_names(lora_dir: Path) -> list[str]:
    """`sub/name` (without .safetensors) for every listed LoRA file in the Lora folder, sorted case-blind."""
    root = Path(lora_dir).resolve()
    names = set()
    for path in _listed_files(root):
        path = path.resolve()
        if path.suffix.lower() == SUFFIX and path.is_relative_to(root):
            names.add(path.relative_to(root).with_suffix("").as_posix())
    return sorted(names, key=str.lower)


def refresh_builtin_list() -> None:
    """Re-read the Lora folder into the built-in list (the extra-networks page and `<lora:...>` use it)."""
    networks = compat.builtin_lora()
    if networks is not None:
        networks.list_available_networks()
