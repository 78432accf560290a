"""CopyLoRA's section on the WebUI's Settings page. Every option here is read by the code named beside it."""

from __future__ import annotations

from typing import Any, NamedTuple

SECTION = ("copylora", "CopyLoRA")


class Option(NamedTuple):
    key: str
    default: Any
    label: str
    info: str


OUTPUT_SUBFOLDER = Option(
    "copylora_output_subfolder", "",
    "Folder inside the Lora folder that trained LoRAs are saved to (empty: the Lora folder itself)",
    "used when a training request names no subfolder (webui/training_run.py)")
SAMPLE_EVERY = Option(
    "copylora_sample_every_n_steps", 0,
    "Render preview images every N steps when a training request has preview prompts but no interval "
    "(0: only at the end)",
    "previews show the LoRA's effect with and without it, from the same noise (webui/training_run.py)")
OPTIONS = (OUTPUT_SUBFOLDER, SAMPLE_EVERY)


def register_settings() -> None:
    """on_ui_settings: add our options to the Settings page."""
    import gradio as gr
    from modules import shared

    components = {OUTPUT_SUBFOLDER.key: (gr.Textbox, {}), SAMPLE_EVERY.key: (gr.Number, {"precision": 0})}
    for option in OPTIONS:
        component, args = components[option.key]
        info = shared.OptionInfo(option.default, option.label, component, args, section=SECTION).info(option.info)
        shared.opts.add_option(option.key, info)


def read(option: Option) -> Any:
    """The option's current value (its default before the Settings page registered it)."""
    from modules import shared

    return shared.opts.data.get(option.key, option.default)
