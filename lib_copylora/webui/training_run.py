"""One training run inside the WebUI: the `Runner` the job queue calls.

Like the WebUI's own Train tab it takes the queue lock (so generation and training never run at once), reports
through `shared.state` (the progress bar, the Interrupt button), and trains on `shared.sd_model` in place. The
result goes into the Lora folder, whose list is refreshed so the new file shows up without a restart.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import torch

from ..train.callbacks import Callbacks, Samples
from ..train.config import TrainConfig
from ..train.dataset import ImageDataset
from ..train.host import Component
from ..train.routes import train
from . import compat, settings
from .host import WebUIHost, clip_skip_option
from ..service.jobs import Job, JobState
from .model_state import prepared_model
from ..service.safe_paths import relative_name
from ..service.train_request import Folders, TrainRequest, to_train_config

log = logging.getLogger("copylora")
JOB_NAME = "copylora-train"


def samples_image(samples: Samples):
    """Previews as one PIL image: a row with the LoRA above a row without it, one column per prompt."""
    from PIL import Image

    rows = torch.cat([torch.cat(list(samples.with_lora), dim=2), torch.cat(list(samples.without_lora), dim=2)],
                     dim=1)
    array = (rows.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def with_setting_defaults(request: TrainRequest) -> TrainRequest:
    """Fill what the request leaves open from CopyLoRA's settings (output subfolder, preview interval)."""
    changes = {}
    if not request.subfolder.strip():
        changes["subfolder"] = str(settings.read(settings.OUTPUT_SUBFOLDER) or "")
    if request.sample.get("prompts") and "every_n_steps" not in request.sample:
        changes["sample"] = {**request.sample, "every_n_steps": int(settings.read(settings.SAMPLE_EVERY) or 0)}
    return dataclasses.replace(request, **changes) if changes else request


class WebUIRunner:
    """Prepares requests against the WebUI's folders and runs them on its loaded model."""

    def __init__(self, folders: Callable[[], Folders]):
        self.folders = folders  # read at each call: settings and the Lora folder may change while running

    def prepare(self, request: TrainRequest) -> TrainConfig:
        from modules import shared

        request = with_setting_defaults(request)
        compat.model_family(shared.sd_model)  # an SD3 or Flux checkpoint: refused at submit, in one line
        dtype = next(shared.sd_model.model.diffusion_model.parameters()).dtype
        config = to_train_config(request, self.folders(), dtype)
        if config.output.path().exists() and not config.output.overwrite and not config.output.resume:
            from ..core.errors import OutputExists
            raise OutputExists(f"{config.output.path().name} already exists in the Lora folder; choose another "
                               "name or ask to overwrite")
        return config

    def run(self, job: Job) -> JobState:
        from modules import call_queue, shared

        with call_queue.queue_lock:
            shared.state.begin(job=JOB_NAME)
            try:
                stopped = self._train(job, shared)
            finally:
                shared.state.end()
        self._refresh_lora_list(job)
        return JobState.STOPPED if stopped else JobState.DONE

    def _train(self, job: Job, shared) -> bool:
        config: TrainConfig = job.config
        shared.state.textinfo = f"CopyLoRA: preparing {job.request.name}"
        data_a = ImageDataset(config.dataset_a)
        data_b = ImageDataset(config.dataset_b) if config.dataset_b is not None else None
        with prepared_model(shared.sd_model, shared.cmd_opts, compat.builtin_lora(), shared) as forwards:
            host = WebUIHost(shared.sd_model, shared.device, forwards, lambda: bool(shared.state.interrupted),
                             lambda skip: clip_skip_option(shared.opts, skip))
            if config.network.train_text_encoder:
                host.target_modules({Component.TEXT_ENCODER})  # fills host.notes on what cannot be trained
            for note in host.notes:
                job.log(f"note: {note}")
            result = train(host, config, data_a, data_b, self._callbacks(job, shared), job.control)
        if result.path is not None:
            name = relative_name(self.folders().loras, result.path)
            job.set_result(name, f"<lora:{result.path.stem}:1>")
        return result.stopped

    def _callbacks(self, job: Job, shared) -> Callbacks:
        loras = self.folders().loras
        samples_dir = self.folders().outputs / job.request.name / "samples"
        phase_name = {"value": ""}

        def on_phase(name: str, total: int) -> None:
            phase_name["value"] = name
            job.set_phase(name, total)
            shared.state.job_count, shared.state.job_no = total, 0
            shared.state.textinfo = f"CopyLoRA: training {job.request.name}, phase {name}"

        def on_step(step: int, loss: float, lr: float) -> None:
            job.set_step(step, loss)
            shared.state.job_no = step
            shared.state.textinfo = (f"CopyLoRA: {job.request.name} phase {phase_name['value']} step {step}/"
                                     f"{shared.state.job_count}, loss {loss:.4f}, lr {lr:.2e}")

        def on_sample(step: int, samples: Samples) -> None:
            image = samples_image(samples)
            samples_dir.mkdir(parents=True, exist_ok=True)
            path = samples_dir / f"{phase_name['value']}-step{step:06d}.png"
            image.save(path)
            job.add_sample(str(path))
            shared.state.assign_current_image(image)

        def on_save(path: Path) -> None:
            job.add_written(relative_name(loras, path) if Path(path).resolve().is_relative_to(loras.resolve())
                            else str(path))

        def on_log(text: str) -> None:
            job.log(text)
            log.info("CopyLoRA %s: %s", job.request.name, text)

        return Callbacks(on_step=on_step, on_sample=on_sample, on_save=on_save, on_log=on_log, on_phase=on_phase)

    @staticmethod
    def _refresh_lora_list(job: Job) -> None:
        networks = compat.builtin_lora()
        if networks is None:
            job.log("the built-in Lora extension is not loaded: refresh the Lora list by hand")
            return
        networks.list_available_networks()
