"""The CopyLoRA tab: Train, Merge and Block weights sub-tabs over one `CopyLoraService` (shared with the HTTP API,
so both see the same job queue). The panels build their widgets, wire their events and unpack widget values into
the engine's request objects; the service does the work.

Registered by the entry script: `script_callbacks.on_ui_tabs(CopyLoraTab(service).on_ui_tabs)`.
"""

from __future__ import annotations

import importlib.util

import gradio as gr

from .blocks_panel import BlocksPanel
from .merge_panel import MergePanel
from .run_panel import RunPanel
from .train_panel import TrainForm

TITLE = "CopyLoRA"
TAB_ID = "copylora"  # the WebUI names the tab's element tab_copylora; javascript/copylora.js looks for it


def has_bitsandbytes() -> bool:
    """AdamW 8-bit needs bitsandbytes; the training presets fall back to AdamW without it."""
    return importlib.util.find_spec("bitsandbytes") is not None


class CopyLoraTab:
    def __init__(self, service):
        self.service = service

    def lora_choices(self) -> list[str]:
        return self.service.lora_names()

    def build(self) -> gr.Blocks:
        form = TrainForm(self.service, has_bitsandbytes())
        run = RunPanel(self.service, form)
        merge = MergePanel(self.service, self.lora_choices)
        blocks = BlocksPanel(self.service, self.lora_choices)
        with gr.Blocks(analytics_enabled=False) as interface:
            with gr.Tabs(elem_id="copylora_tabs"):
                with gr.Tab("Train", id="copylora_train", elem_id="copylora_train_tab"):
                    with gr.Row(equal_height=False):
                        form.build()
                        run.build()
                with gr.Tab("Merge", id="copylora_merge", elem_id="copylora_merge_tab"):
                    merge.build()
                with gr.Tab("Block weights", id="copylora_blocks", elem_id="copylora_blocks_tab"):
                    blocks.build()
            form.wire(run.runs)
            lists = merge.lora_dropdowns() + blocks.lora_dropdowns()
            run.wire(lists, self.lora_choices)
            merge.wire(blocks.lora_dropdowns())
            blocks.wire()
        return interface

    def on_ui_tabs(self) -> list[tuple[gr.Blocks, str, str]]:
        return [(self.build(), TITLE, TAB_ID)]
