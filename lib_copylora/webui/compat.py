"""Feature detection of the host: which WebUI this is, which model family is loaded, who else is installed."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Optional

from ..core.family import Family


def is_forge() -> bool:
    """Forge ships its own `modules_forge` package next to `modules`."""
    return importlib.util.find_spec("modules_forge") is not None


def builtin_lora() -> Optional[ModuleType]:
    """The built-in Lora extension's `networks` module, once its script has imported it (A1111 layout)."""
    module = sys.modules.get("networks")
    return module if module is not None and hasattr(module, "loaded_networks") else None


def model_family(sd_model) -> Family:
    if getattr(sd_model, "is_sdxl", False):
        return Family.SDXL
    if getattr(sd_model, "is_sd2", False):
        return Family.SD2
    return Family.SD1


def lbw_extension_active() -> bool:
    """True when the LoRA Block Weight extension's script is loaded: both of us would scale the same LoRA."""
    from modules import scripts

    return any("lora_block_weight" in (data.path or "").lower() for data in scripts.scripts_data)
