"""The Train sub-tab's run column: Start / Resume / Stop / Stop and save, the runs a sweep makes, the status, the
live loss plot, preview images, the queue, and the result with its tag and a button that sends it to txt2img.

The page polls: javascript/copylora.js clicks the hidden poll button every two seconds while this tab is shown
(the WebUI's own progress bar polls the same way). A poll that finds nothing changed redraws nothing.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import gradio as gr

from ..core.errors import CopyLoraError
from .job_view import (QUEUE_HEADERS, current_job, finished_results, log_text, poll_signature, queue_rows,
                       result_tag, running_job, sample_items, status_text)
from .loss_plot import COLUMNS, loss_rows, merge_losses
from .train_form import describe_runs
from .widgets import FormRow, all_updates, guarded, hover, js, not_saved

ERRORS = (CopyLoraError, ValueError)


def loss_frame(rows: list[dict]):
    """The plot's value: a DataFrame (what gr.LinePlot takes), or None for an empty plot."""
    import pandas as pd

    return pd.DataFrame(rows, columns=list(COLUMNS)) if rows else None


class RunPanel:
    def __init__(self, service, form):
        self.service = service
        self.form = form

    def build(self) -> None:
        with gr.Column(scale=2, elem_id="copylora_run"):
            with gr.Row():
                self.start = gr.Button("Start", variant="primary", elem_id="copylora_start")
                self.resume = hover(gr.Button("Resume", elem_id="copylora_resume"),
                                    "continue the run of this name from its resume state (saved by Stop and save)")
                self.stop = hover(gr.Button("Stop", elem_id="copylora_stop"),
                                  "stop the running run without saving; its submission's queued runs are cancelled")
                self.stop_save = hover(gr.Button("Stop and save", elem_id="copylora_stop_save"),
                                       "save the LoRA trained so far and a resume state, then stop")
            self.runs = gr.Markdown(elem_id="copylora_runs")
            self.message = gr.Markdown(elem_id="copylora_message")
            self.status = gr.Textbox(label="Status", value="No runs yet.", interactive=False,
                                     elem_id="copylora_status")
            # no width: gradio 4 (Forge) has no such argument and warns at every start; the plot fills the column
            self.plot = gr.LinePlot(x="step", y="loss", color="run", title="Training loss", x_title="step",
                                    y_title="loss", tooltip=["run", "step", "loss"], height=220,
                                    show_label=False, elem_id="copylora_loss_plot")
            self.samples = gr.Gallery(label="Previews (top: with the LoRA, bottom: without; same seed)", columns=2,
                                      height=300, elem_id="copylora_samples")
            self.queue = gr.Dataframe(headers=QUEUE_HEADERS, value=[["" for _ in QUEUE_HEADERS]],
                                      interactive=False, wrap=True, label="Queue", elem_id="copylora_queue")
            with FormRow():
                self.tag = gr.Textbox(label="Result", interactive=False, elem_id="copylora_result_tag")
                self.send = hover(gr.Button("Send to txt2img", elem_id="copylora_send_txt2img"),
                                  "add the result's tag to the txt2img prompt and switch to txt2img")
            with gr.Accordion("Log of the run", open=False):
                self.log = gr.Textbox(show_label=False, lines=6, interactive=False, elem_id="copylora_log")
            self.poll = gr.Button("poll", visible=False, elem_id="copylora_poll")
            self.history = gr.State({})
            self.seen = gr.State((None, 0))  # (poll signature, finished results) last drawn
        not_saved(self.status, self.tag, self.log)

    # ---- wire --------------------------------------------------------------------------------------------------

    def wire(self, lora_dropdowns: Sequence[Any], lora_choices: Callable[[], list[str]]) -> None:
        answers = [self.message, self.runs]
        for button, resume in ((self.start, False), (self.resume, True)):
            button.click(guarded(self._submitter(resume), self.message, ERRORS, answers), inputs=self.form.inputs(),
                         outputs=answers)
        self.stop.click(lambda: self._stop(save=False), outputs=[self.message])
        self.stop_save.click(lambda: self._stop(save=True), outputs=[self.message])
        self.send.click(None, inputs=[self.tag], outputs=[], **js("copylora_send_to_txt2img"))
        shown = [self.status, self.plot, self.samples, self.queue, self.tag, self.log, self.history, self.seen]
        outputs = shown + list(lora_dropdowns)
        self.poll.click(self._poller(outputs, lora_dropdowns, lora_choices), inputs=[self.history, self.seen],
                        outputs=outputs, show_progress="hidden")

    def _submitter(self, resume: bool) -> Callable:
        def submit(data: dict) -> dict:
            request = self.form.request(data, resume=resume)
            ids = self.service.submit(request)
            verb = "Resuming" if resume else "Queued"
            return {self.message: f"{verb} {len(ids)} run(s).", self.runs: describe_runs(request)}
        return submit

    def _stop(self, save: bool) -> str:
        running = running_job(self.service.jobs.list())
        if running is None:
            return "Nothing is running."
        self.service.stop(running.id, save=save)
        what = "saving what it learned and a resume state, then stopping" if save else "stopping without saving"
        return f"{running.name}: {what}; the runs queued with it are cancelled."

    def _poller(self, outputs: list, lora_dropdowns: Sequence[Any], lora_choices: Callable) -> Callable:
        def poll(history: dict, seen: tuple) -> dict:
            statuses = self.service.jobs.list()
            signature, results = poll_signature(statuses), finished_results(statuses)
            if (signature, results) == tuple(seen):
                return all_updates(outputs, {})
            current = current_job(statuses)
            group = [s for s in statuses if current is not None and s.group == current.group]
            history = {job: phases for job, phases in history.items() if job in {s.id for s in group}}
            for status in group:
                history = merge_losses(history, status)
            changes = {
                self.status: status_text(current), self.plot: loss_frame(loss_rows(history, group)),
                self.samples: sample_items(current), self.queue: queue_rows(statuses) or [["" for _ in QUEUE_HEADERS]],
                self.tag: result_tag(current), self.log: log_text(current), self.history: history,
                self.seen: (signature, results),
            }
            if results != seen[1]:  # a new LoRA in the Lora folder: the tab's own lists show it too
                changes.update({dropdown: gr.update(choices=lora_choices()) for dropdown in lora_dropdowns})
            return all_updates(outputs, changes)
        return poll
