"""The Merge sub-tab: LoRAs from the WebUI's Lora list, each with a ratio of any sign and optional block weights;
exact or re-ranked; save precision and output name. Runs the engine's merge through the service (under the
WebUI's queue lock) and shows the result with its tag."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import gradio as gr

from ..core.errors import CopyLoraError
from ..service.merge_run import SAVE_PRECISIONS, MergeRequest
from .merge_form import MERGE_ROWS, MergeMode, MergeRow, build_merge_request
from .widgets import FormRow, all_updates, guarded, hover, js, not_saved, tool_button

VISIBLE_ROWS = 3  # the rest sit in a closed accordion
DEFAULT_RATIOS = (1.0, -1.0)  # B − A, the copier difference


def _help(name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(MergeRequest) if f.name == name)


class MergePanel:
    def __init__(self, service, lora_choices: Callable[[], list[str]]):
        self.service = service
        self.lora_choices = lora_choices
        self.rows: list[tuple[Any, Any, Any]] = []

    def build(self) -> None:
        choices = self.lora_choices()
        with gr.Row():
            with gr.Column(scale=3, elem_id="copylora_merge_inputs"):
                for i in range(VISIBLE_ROWS):
                    self._row(i, choices)
                with gr.Accordion("More LoRAs", open=False):
                    for i in range(VISIBLE_ROWS, MERGE_ROWS):
                        self._row(i, choices)
                self.refresh = tool_button("copylora_merge_refresh", "refresh the list of LoRAs")
            with gr.Column(scale=2, elem_id="copylora_merge_options"):
                self._options()

    def _row(self, index: int, choices: list[str]) -> None:
        ratio = DEFAULT_RATIOS[index] if index < len(DEFAULT_RATIOS) else 1.0
        with FormRow():
            first = index == 0  # the help shows once, above the first row
            model = gr.Dropdown(choices=choices, value=None, label=f"LoRA {index + 1}",
                                elem_id=f"copylora_merge_model_{index}", info=_help("models") if first else None)
            weight = gr.Number(value=ratio, label=f"Ratio {index + 1}", info=_help("ratios") if first else None,
                               elem_id=f"copylora_merge_ratio_{index}")
            blocks = gr.Textbox(label=f"Block weights {index + 1}", placeholder="blank = all blocks at 1",
                                info="numbers (17/26 for SD1/SD2, 12/20 for SDXL) or a preset name" if first else None,
                                elem_id=f"copylora_merge_blocks_{index}")
        not_saved(model, weight, blocks)
        self.rows.append((model, weight, blocks))

    def _options(self) -> None:
        self.mode = gr.Radio(choices=[m.value for m in MergeMode], value=MergeMode.EXACT.value, label="Merge method",
                             info="exact keeps every rank (the sum of the inputs' ranks); re-rank truncates the "
                                  "exact result by SVD", elem_id="copylora_merge_mode")
        with FormRow():
            self.new_rank = gr.Number(value=16, precision=0, label="New rank", info=_help("new_rank"),
                                      elem_id="copylora_merge_new_rank")
            self.new_conv_rank = gr.Textbox(value="", label="New conv rank",  # text: a number box cannot be blank
                                            info=_help("new_conv_rank") + "; blank = new rank",
                                            elem_id="copylora_merge_new_conv_rank")
        self.precision = gr.Radio(choices=list(SAVE_PRECISIONS), value="fp16", label="Save the merge as",
                                  info=_help("save_precision"), elem_id="copylora_merge_precision")
        with FormRow():
            self.output = gr.Textbox(label="Output name", info=_help("output"), elem_id="copylora_merge_output")
            self.overwrite = gr.Checkbox(value=False, label="Overwrite", info=_help("overwrite"),
                                         elem_id="copylora_merge_overwrite")
        self.merge = gr.Button("Merge", variant="primary", elem_id="copylora_merge_run")
        self.message = gr.Markdown(elem_id="copylora_merge_message")
        with FormRow():
            self.tag = gr.Textbox(label="Result", interactive=False, elem_id="copylora_merge_tag")
            self.send = hover(gr.Button("Send to txt2img", elem_id="copylora_merge_send"),
                              "add the result's tag to the txt2img prompt and switch to txt2img")
        not_saved(self.output, self.tag)

    # ---- wire --------------------------------------------------------------------------------------------------

    def lora_dropdowns(self) -> list[Any]:
        return [model for model, _, _ in self.rows]

    def wire(self, other_lora_dropdowns: list[Any]) -> None:
        dropdowns = self.lora_dropdowns() + list(other_lora_dropdowns)
        outputs = [self.message, self.tag, *dropdowns]
        inputs = [self.mode, self.new_rank, self.new_conv_rank, self.precision, self.output, self.overwrite,
                  *(c for row in self.rows for c in row)]
        self.merge.click(guarded(self._merger(outputs, dropdowns), self.message, (CopyLoraError, ValueError),
                                 outputs), inputs=inputs, outputs=outputs)
        self.refresh.click(self._refresher(dropdowns), outputs=dropdowns)
        self.send.click(None, inputs=[self.tag], outputs=[], **js("copylora_send_to_txt2img"))

    def _merger(self, outputs: list, dropdowns: list) -> Callable:
        def merge(mode, new_rank, new_conv_rank, precision, output, overwrite, *row_values) -> dict:
            rows = [MergeRow(*row_values[i:i + 3]) for i in range(0, len(row_values), 3)]
            request = build_merge_request(rows, mode, new_rank, new_conv_rank, precision, output, overwrite)
            result = self.service.merge(request)
            notes = "".join(f"\n- {w}" for w in result.warnings)
            choices = self.lora_choices()
            return all_updates(outputs, {self.message: f"Wrote **{result.name}** ({result.modules} modules).{notes}",
                                         self.tag: result.tag,
                                         **{d: gr.update(choices=choices) for d in dropdowns}})
        return merge

    def _refresher(self, dropdowns: list) -> Callable:
        def refresh() -> list:
            self.service.refresh_loras()
            choices = self.lora_choices()
            return [gr.update(choices=choices) for _ in dropdowns]
        return refresh
