"""The Block weights sub-tab: edit, add and delete presets with one slider per block (17/26 for SD1/SD2, 12/20 for
SDXL, named BASE, IN01, ...), saved to the preset file; and inspect a LoRA: which blocks it touches, its kind and
rank (core/describe.py)."""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from ..core.errors import CopyLoraError
from ..service.safe_paths import lora_file_inside
from .block_form import (FORMAT_CHOICES, MAX_SLIDERS, SLIDER_RANGE, inspect_lora, preset_form, preset_lines,
                         slider_layout, slider_values)
from .widgets import FormRow, all_updates, guarded, not_saved, tool_button

SLIDERS_PER_ROW = 5
ERRORS = (CopyLoraError, ValueError)


class BlocksPanel:
    def __init__(self, service, lora_choices: Callable[[], list[str]]):
        self.service = service
        self.lora_choices = lora_choices

    def build(self) -> None:
        presets = self.service.presets()
        with gr.Row():
            with gr.Column(scale=3, elem_id="copylora_presets"):
                self._preset_editor(presets)
            with gr.Column(scale=2, elem_id="copylora_inspect"):
                self._inspector()

    def _preset_editor(self, presets: dict) -> None:
        first = FORMAT_CHOICES[0].label
        with FormRow():
            self.preset = gr.Dropdown(choices=list(presets), value=None, label="Preset",
                                      info="pick one to edit it, or type a new name below",
                                      elem_id="copylora_preset_pick")
            self.name = gr.Textbox(label="Preset name", info="letters, digits, - and _; no spaces",
                                   elem_id="copylora_preset_name")
        self.format = gr.Radio(choices=[c.label for c in FORMAT_CHOICES], value=first, label="Block format",
                               elem_id="copylora_preset_format")
        self.sliders = []
        layout = slider_layout(first)
        for start in range(0, MAX_SLIDERS, SLIDERS_PER_ROW):
            with FormRow():
                for state in layout[start:start + SLIDERS_PER_ROW]:
                    self.sliders.append(gr.Slider(minimum=SLIDER_RANGE[0], maximum=SLIDER_RANGE[1], step=0.05,
                                                  value=1.0, label=state.label, visible=state.visible, min_width=100,
                                                  elem_id=f"copylora_block_{len(self.sliders)}"))
        with FormRow():
            self.save = gr.Button("Save preset", variant="primary", elem_id="copylora_preset_save")
            self.delete = gr.Button("Delete preset", elem_id="copylora_preset_delete")
        self.message = gr.Markdown(elem_id="copylora_preset_message")
        with gr.Accordion("All presets (the preset file on top of the built-in ones)", open=False):
            self.listing = gr.Textbox(value=preset_lines(presets), show_label=False, lines=8, interactive=False,
                                      elem_id="copylora_preset_listing")
        not_saved(self.preset, self.name, self.format, self.listing, *self.sliders)

    def _inspector(self) -> None:
        with FormRow():
            self.lora = gr.Dropdown(choices=self.lora_choices(), value=None, label="LoRA to inspect",
                                    elem_id="copylora_inspect_lora")
            self.refresh = tool_button("copylora_inspect_refresh", "refresh the list of LoRAs")
        self.inspect = gr.Button("Inspect", elem_id="copylora_inspect_run")
        self.description = gr.Textbox(label="What it holds", lines=18, interactive=False,
                                      elem_id="copylora_inspect_text")
        not_saved(self.lora, self.description)

    # ---- wire --------------------------------------------------------------------------------------------------

    def lora_dropdowns(self) -> list[Any]:
        return [self.lora]

    def wire(self) -> None:
        self.format.change(lambda label: [gr.update(label=s.label, visible=s.visible) for s in slider_layout(label)],
                           inputs=[self.format], outputs=self.sliders)
        picked = [self.message, self.name, self.format, *self.sliders]
        self.preset.change(guarded(self._pick, self.message, ERRORS, picked), inputs=[self.preset], outputs=picked)
        changed = [self.message, self.preset, self.listing]
        self.save.click(guarded(self._save, self.message, ERRORS, changed),
                        inputs=[self.name, self.format, *self.sliders], outputs=changed)
        self.delete.click(guarded(self._delete, self.message, ERRORS, changed), inputs=[self.name], outputs=changed)
        self.inspect.click(guarded(self._inspect, self.description, ERRORS, [self.description]), inputs=[self.lora],
                           outputs=[self.description])
        self.refresh.click(lambda: gr.update(choices=self.lora_choices()), outputs=[self.lora])

    def _pick(self, name: str) -> list:
        if not name:
            return [gr.update()] * (3 + MAX_SLIDERS)
        label, values = preset_form(name, self.service.presets())
        return ["", name, label, *values]

    def _presets_changed(self, presets: dict, note: str, selected: Any) -> dict:
        return {self.message: note, self.preset: gr.update(choices=list(presets), value=selected),
                self.listing: preset_lines(presets)}

    def _save(self, name: str, label: str, *values: float) -> dict:
        name = (name or "").strip()
        presets = self.service.save_preset(name, slider_values(label, values))
        return self._presets_changed(presets, f"Saved **{name}** to the preset file.", name)

    def _delete(self, name: str) -> dict:
        name = (name or "").strip()
        presets = self.service.delete_preset(name)
        return self._presets_changed(presets, f"Deleted **{name}** from the preset file.", None)

    def _inspect(self, name: str) -> dict:
        if not name:
            return all_updates([self.description], {self.description: "Pick a LoRA first."})
        path = lora_file_inside(self.service.folders().loras, name, "LoRA", must_exist=True)
        return all_updates([self.description], {self.description: inspect_lora(path)})
