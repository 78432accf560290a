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


def pydantic_major() -> int:
    """A1111 v1.10.1 runs pydantic 1.x (with fastapi 0.94); Forge and newer hosts run pydantic 2."""
    import pydantic

    return int(str(pydantic.VERSION).split(".")[0])


def strict_model_base():
    """A pydantic BaseModel subclass that refuses unknown fields, for either pydantic major version: a dropped
    field (`max_step` for `max_steps`) would silently run with the default instead."""
    from pydantic import BaseModel

    if pydantic_major() >= 2:
        from pydantic import ConfigDict

        return type("StrictModel", (BaseModel,), {"model_config": ConfigDict(extra="forbid"), "__module__": __name__})
    config = type("Config", (), {"extra": "forbid"})
    return type("StrictModel", (BaseModel,), {"Config": config, "__module__": __name__})


def model_field_names(model_class) -> list[str]:
    fields = model_class.model_fields if pydantic_major() >= 2 else model_class.__fields__
    return list(fields)


EXTRA_FIELD_ERRORS = ("extra_forbidden", "value_error.extra")  # the error type of an unknown field: pydantic 2, 1
