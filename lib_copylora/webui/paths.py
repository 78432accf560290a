"""Where CopyLoRA's files live inside the WebUI: flags first, then the extension folder."""

from __future__ import annotations

from pathlib import Path

from ..core.presets import load_presets, user_preset_path


def preset_path() -> Path:
    """`--copylora-presets` when given, else the extension folder's file (or COPYLORA_PRESETS)."""
    from modules import shared

    flag = getattr(shared.cmd_opts, "copylora_presets", None)
    return Path(flag) if flag else user_preset_path()


def webui_presets() -> dict:
    return load_presets(preset_path())
