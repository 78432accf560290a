"""The Train sub-tab's form: image sets A and B with a scan of what they hold, an upload that makes a new set, the
route, the menu of training settings, the main settings, previews, and the rest under "Advanced" accordions.

Widgets are made from `fields.train_fields()`; `request(values)` turns their values into a `TrainRequest` once.
"""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from ..core.errors import CopyLoraError
from ..train.config import Route
from ..webui import compat
from .fields import PROMPTS, REQUEST, SECTION_TITLES, Key, train_fields
from .train_form import build_train_request, preview_runs
from .train_presets import DEFAULT_PRESET, PRESET_KEYS, TRAINING_PRESETS, form_defaults, optimizer_note, \
    preset_values
from .uploads import save_uploaded_dataset
from .widgets import FormRow, InputAccordion, field_component, guarded, not_saved, on_commit, tool_button

SETS: tuple[Key, Key] = ((REQUEST, "dataset_a"), (REQUEST, "dataset_b"))
MAIN_ROWS: tuple[tuple[Key, ...], ...] = (
    (("network", "kind"), ("network", "rank"), ("network", "alpha")),
    (("optim", "optimizer"), ("optim", "learning_rate"), ("optim", "scheduler")),
    (("loop", "max_steps"), ("loop", "epochs"), ("dataset", "resolution")),
)
PREVIEW_KEYS: tuple[Key, ...] = (PROMPTS, ("sample", "every_n_steps"), ("sample", "steps"),
                                 ("sample", "guidance_scale"), ("sample", "seed"))
ADVANCED_PER_ROW = 3
ADVANCED_ORDER = (REQUEST, "network", "optim", "loop", "loss", "output", "dataset", "speed")


class TrainForm:
    def __init__(self, service, has_bitsandbytes: bool):
        self.service = service
        self.has_bitsandbytes = has_bitsandbytes
        self.specs = train_fields()
        self.defaults = form_defaults(self.specs, has_bitsandbytes)
        self.fields: dict[Key, Any] = {}

    # ---- build -------------------------------------------------------------------------------------------------

    def build(self) -> None:
        with gr.Column(scale=3, elem_id="copylora_train_form"):
            with FormRow():
                self._field((REQUEST, "name"))
                self._field((REQUEST, "route"))
            self._build_sets()
            self._build_upload()
            with FormRow():
                self.preset = gr.Dropdown(label="Training settings", choices=list(TRAINING_PRESETS),
                                          value=DEFAULT_PRESET, elem_id="copylora_training_preset",
                                          info="fills the main settings; the copier articles' settings first")
                self.preset_note = gr.Markdown(optimizer_note(self.has_bitsandbytes))
            for row in MAIN_ROWS:
                with FormRow():
                    for key in row:
                        self._field(key)
            with InputAccordion(False, label="Preview images during training",
                                elem_id="copylora_previews") as self.previews:
                self._field(PREVIEW_KEYS[0])
                with FormRow():
                    for key in PREVIEW_KEYS[1:]:
                        self._field(key)
            self._build_advanced()
        not_saved(self.fields[(REQUEST, "name")], *(self.fields[k] for k in SETS))

    def _field(self, key: Key) -> Any:
        component = field_component(self.specs[key], self.defaults[key])
        self.fields[key] = component
        return component

    def _build_sets(self) -> None:
        self.scans, self.set_columns, self.set_refreshers = [], [], []
        choices = self.service.datasets()
        with gr.Row():
            for key in SETS:
                with gr.Column(visible=key == SETS[0] or self.defaults[(REQUEST, "route")] != Route.SINGLE.value) \
                        as column:
                    spec = self.specs[key]
                    with FormRow():
                        self.fields[key] = gr.Dropdown(choices=choices, value=None, allow_custom_value=True,
                                                       label=spec.label, info=spec.help, elem_id=spec.elem_id)
                        refresh = tool_button(f"{spec.elem_id}_refresh", "refresh the list of image sets")
                    scan = gr.Textbox(label=f"What {spec.label.lower()} holds", lines=4, interactive=False,
                                      elem_id=f"{spec.elem_id}_scan")
                    not_saved(scan)
                self.scans.append(scan)
                self.set_columns.append(column)
                self.set_refreshers.append(refresh)

    def _build_upload(self) -> None:
        with gr.Accordion("Make an image set from uploaded images", open=False, elem_id="copylora_upload"):
            self.upload_files = gr.File(label="Images (and .txt captions with the same names)",
                                        file_count="multiple", elem_id="copylora_upload_files")
            with FormRow():
                self.upload_name = gr.Textbox(label="New image set name", elem_id="copylora_upload_name")
                self.upload_repeats = gr.Number(label="Repeats", value=5, precision=0,
                                                info="each image counts this many times per epoch (kohya's N_name)",
                                                elem_id="copylora_upload_repeats")
                self.upload_target = gr.Radio(label="Use as", choices=["A", "B"], value="A",
                                              elem_id="copylora_upload_target")
            self.upload_button = gr.Button("Save as image set", elem_id="copylora_upload_save")
            self.upload_message = gr.Markdown()
            not_saved(self.upload_name, self.upload_target)

    def _build_advanced(self) -> None:
        built = set(self.fields) | set(SETS)
        for section in ADVANCED_ORDER:
            keys = [k for k in self.specs if k[0] == section and k not in built]
            if not keys:
                continue
            with gr.Accordion(f"Advanced: {SECTION_TITLES[section]}", open=False,
                              elem_id=f"copylora_advanced_{section or 'request'}"):
                for start in range(0, len(keys), ADVANCED_PER_ROW):
                    with FormRow():
                        for key in keys[start:start + ADVANCED_PER_ROW]:
                            self._field(key)

    # ---- unpack ------------------------------------------------------------------------------------------------

    def inputs(self) -> set:
        return {*self.fields.values(), self.previews}

    def values(self, data: dict) -> dict[Key, Any]:
        values = {key: data[component] for key, component in self.fields.items()}
        if not data[self.previews]:
            values[PROMPTS] = ""
        return values

    def request(self, data: dict, resume: bool = False):
        return build_train_request(self.values(data), self.specs, resume=resume)

    # ---- wire --------------------------------------------------------------------------------------------------

    def wire(self, runs: Any) -> None:
        route = self.fields[(REQUEST, "route")]
        route.change(lambda r: gr.update(visible=r != Route.SINGLE.value), inputs=[route],
                     outputs=[self.set_columns[1]])
        preset_outputs = [self.fields[k] for k in PRESET_KEYS]
        self.preset.change(lambda label: [preset_values(label, self.has_bitsandbytes)[k] for k in PRESET_KEYS],
                           inputs=[self.preset], outputs=preset_outputs)
        self._wire_sets()
        self._wire_upload()
        self._wire_run_preview(runs)

    def _wire_sets(self) -> None:
        settings = {k[1]: c for k, c in self.fields.items() if k[0] == "dataset"}
        for key, scan in zip(SETS, self.scans):
            box = self.fields[key]
            scanner = self._scanner(box, settings, scan)
            for event in [box.select, box.blur] + [on_commit(c) for c in settings.values()]:
                event(scanner, inputs={box, *settings.values()}, outputs=[scan])
        for refresh in self.set_refreshers:
            refresh.click(lambda: [gr.update(choices=self.service.datasets())] * len(SETS),
                          outputs=[self.fields[k] for k in SETS])

    def _scanner(self, box: Any, settings: dict, scan: Any) -> Callable:
        def scan_set(data: dict) -> str:
            name = (data[box] or "").strip()
            if not name:
                return ""
            values = {field: data[c] for field, c in settings.items() if data[c] not in (None, "")}
            try:
                return self.service.scan(name, values).describe().replace(
                    str(self.service.folders().datasets.resolve()), "")
            except CopyLoraError as exc:
                return f"⚠️ {exc}"
        return scan_set

    def _wire_upload(self) -> None:
        outputs = [self.upload_message, *(self.fields[k] for k in SETS)]

        def save(files, name, repeats, target):
            paths = [compat.uploaded_path(f) for f in (files or [])]
            saved = save_uploaded_dataset(self.service.folders().datasets, name or "", repeats or 0, paths)
            note = f"Saved {saved.images} images and {saved.captions} captions as **{saved.name}**." + (
                f" Skipped: {', '.join(saved.skipped)}" if saved.skipped else "")
            choices = self.service.datasets()
            chosen = SETS[0] if target == "A" else SETS[1]
            return [note, *(gr.update(choices=choices, value=saved.name) if k == chosen else gr.update(choices=choices)
                            for k in SETS)]

        self.upload_button.click(guarded(save, self.upload_message, (CopyLoraError,), outputs),
                                 inputs=[self.upload_files, self.upload_name, self.upload_repeats, self.upload_target],
                                 outputs=outputs)

    def _wire_run_preview(self, runs: Any) -> None:
        def preview(data: dict) -> str:
            return preview_runs(self.values(data), self.specs)

        watched = [self.fields[k] for k in self.specs if self.specs[k].sweepable or k == (REQUEST, "name")]
        for component in watched + [self.fields[k] for k in SETS]:
            on_commit(component)(preview, inputs=self.inputs(), outputs=[runs])
