"""Feature detection of the host, in one place: which WebUI this is (A1111 or Forge) and which gradio and pydantic
it runs, which model is loaded and what kind it is, where the WebUI keeps things we read (the built-in Lora, the
layer-name mapping, the training noise schedule, the X/Y/Z plot script), and who else is installed.

Nothing else in CopyLoRA asks the host what it is; every module that needs an answer asks here. A model this file
does not know is an `UnsupportedModel` error with one line to show, never silently treated as another family.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any, Optional

from ..core.errors import CopyLoraError
from ..core.family import Family
from ..core.model_hashes import ModelHashes, checked_hashes

SUPPORTED = "SD1, SD2 or SDXL"
# The WebUI (v1.8+) and Forge both say which family a loaded model is by these flags; the first one set wins.
FAMILY_FLAGS = (("is_sdxl", Family.SDXL), ("is_sd2", Family.SD2), ("is_sd1", Family.SD1))
OTHER_KINDS = (("is_sd3", "SD3"), ("is_flux", "Flux"), ("is_chroma", "Chroma"))


class UnsupportedModel(CopyLoraError):
    """The loaded model is none of the families CopyLoRA knows (SD3, Flux, ...)."""


# ---- the WebUI itself -----------------------------------------------------------------------------------------------

def is_forge() -> bool:
    """Forge ships its own `modules_forge` package next to `modules`."""
    return importlib.util.find_spec("modules_forge") is not None


def is_forge_model(sd_model) -> bool:
    """Forge's loaded model is a `ForgeDiffusionEngine` holding its parts in `forge_objects`, not a torch module."""
    return hasattr(sd_model, "forge_objects")


def gradio_major() -> int:
    import gradio

    return int(gradio.__version__.split(".")[0])


def js_event_argument() -> str:
    """The keyword of an event's JavaScript hook: `_js=` in gradio 3 (WebUI v1.10), `js=` in gradio 4 (Forge)."""
    return "js" if gradio_major() >= 4 else "_js"


def commit_event(component: Any, typed: bool) -> Any:
    """The event that fires once a value is entered: `blur` for typed values (`change` fires on every key), except
    where the component has none (gradio 4 gives numbers and radios no `blur`); `change` for choices."""
    return component.blur if typed and hasattr(component, "blur") else component.change


def uploaded_path(file: Any) -> str:
    """An uploaded file's path: gradio 3 hands temp-file objects, gradio 4 plain paths."""
    return getattr(file, "name", file)


def request_values(body: Any) -> dict:
    """A pydantic request body as a dict, in pydantic 1 (WebUI v1.10) or 2 (Forge)."""
    return body.model_dump() if hasattr(body, "model_dump") else body.dict()


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


def builtin_lora() -> Optional[ModuleType]:
    """The built-in Lora extension's `networks` module, once its script has imported it (A1111 layout)."""
    module = sys.modules.get("networks")
    return module if module is not None and hasattr(module, "loaded_networks") else None


def xyz_module() -> Optional[ModuleType]:
    """The X/Y/Z plot script's module (its `AxisOption` and `axis_options`), None when it is not loaded."""
    from modules import scripts

    for data in scripts.scripts_data:
        if data.script_class.__module__ == "xyz_grid.py":
            return data.module
    return None


def lbw_extension_active() -> bool:
    """True when the LoRA Block Weight extension's script is loaded: both of us would scale the same LoRA."""
    from modules import scripts

    return any("lora_block_weight" in (data.path or "").lower() for data in scripts.scripts_data)


def ui_components() -> ModuleType:
    """The WebUI's own gradio building blocks (FormRow, ToolButton, InputAccordion), for the tab's look."""
    from modules import ui_components

    return ui_components


# ---- the loaded model -----------------------------------------------------------------------------------------------

def model_family(sd_model) -> Family:
    """SD1, SD2 or SDXL (SSD-1B and other distilled SDXL count as SDXL); anything else raises UnsupportedModel.

    WebUIs before v1.8 set only `is_sd2` / `is_sdxl`: there, an ldm `LatentDiffusion` without either is SD1."""
    for flag, family in FAMILY_FLAGS:
        if getattr(sd_model, flag, False):
            return family
    if not hasattr(sd_model, "is_sd1") and type(sd_model).__name__ == "LatentDiffusion":
        return Family.SD1
    kind = next((name for flag, name in OTHER_KINDS if getattr(sd_model, flag, False)), None)
    shown = kind or type(sd_model).__name__
    raise UnsupportedModel(f"unsupported model: the loaded checkpoint is {shown}; CopyLoRA knows {SUPPORTED} models")


def checkpoint_file(sd_model) -> Optional[str]:
    """The loaded checkpoint's file path (A1111's and Forge's `sd_checkpoint_info.filename`), for ss_sd_model_name."""
    return getattr(getattr(sd_model, "sd_checkpoint_info", None), "filename", None)


def checkpoint_hashes(sd_model) -> ModelHashes:
    """The loaded checkpoint's hashes as the WebUI already computed them: the old 8-digit model hash and the whole
    file's sha256 (None when the WebUI runs with --no-hashing or has not hashed it yet; then we do not either)."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return checked_hashes(getattr(info, "hash", None), getattr(info, "sha256", None))


def is_distilled_sdxl(sd_model) -> bool:
    """SSD-1B and kin: an SDXL with blocks taken out."""
    return bool(getattr(sd_model, "is_ssd", False))


def is_inpainting(sd_model) -> bool:
    key = getattr(getattr(sd_model, "model", None), "conditioning_key", "crossattn")
    return key in ("hybrid", "concat") or bool(getattr(sd_model, "is_sdxl_inpaint", False))


def offloads(sd_model) -> bool:
    """Parts of the model live on the CPU between calls (the WebUI's low-VRAM mode)."""
    return bool(getattr(sd_model, "lowvram", False))


def layer_mapping(sd_model) -> Optional[dict]:
    """The built-in Lora's names for the model's layers (`network_layer_mapping`), None before it made them."""
    return getattr(sd_model, "network_layer_mapping", None)


def training_alphas_cumprod(sd_model):
    """The noise schedule the model was trained with: the WebUI keeps it aside as `alphas_cumprod_original` when a
    setting (zero terminal SNR, ...) changes the one it samples with."""
    original = getattr(sd_model, "alphas_cumprod_original", None)
    return sd_model.alphas_cumprod if original is None else original
