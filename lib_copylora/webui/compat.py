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


def is_forge_model(sd_model) -> bool:
    """Forge's loaded model is a `ForgeDiffusionEngine` holding its parts in `forge_objects`, not a torch module."""
    return hasattr(sd_model, "forge_objects")


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


def forge_family(sd_model) -> Optional[Family]:
    """The family of a Forge model, None for the ones block weights do not describe (Flux, SD3, ...): Forge's engine
    says which it is by `is_sd1` / `is_sd2` / `is_sdxl`, all False for the others."""
    for flag, family in (("is_sdxl", Family.SDXL), ("is_sd2", Family.SD2), ("is_sd1", Family.SD1)):
        if getattr(sd_model, flag, False):
            return family
    return None


def lbw_extension_active() -> bool:
    """True when the LoRA Block Weight extension's script is loaded: both of us would scale the same LoRA."""
    from modules import scripts

    return any("lora_block_weight" in (data.path or "").lower() for data in scripts.scripts_data)


def ui_components() -> ModuleType:
    """The WebUI's own gradio building blocks (FormRow, ToolButton, InputAccordion), for the tab's look."""
    from modules import ui_components

    return ui_components
