"""One training run inside the WebUI: the `Runner` the job queue calls.

Like the WebUI's own Train tab it takes the queue lock (so generation and training never run at once), reports
through `shared.state` (the progress bar, the Interrupt button), and trains on `shared.sd_model` in place. The
result goes into the Lora folder, whose list is refreshed so the new file shows up without a restart.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..train.callbacks import Callbacks, Samples
from ..train.config import TrainConfig
from ..train.dataset import ImageDataset
from ..train.host import Component
from ..train.routes import output_paths, train
from . import compat, forge_training, settings
from .host import WebUIHost, clip_skip_note, clip_skip_option, v_prediction_note
from ..service.jobs import Job, JobState
from .model_state import prepared_model
from ..service.safe_paths import relative_name
from ..service.train_request import Folders, TrainRequest, prepare_run, to_train_config

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


def _model_dtype(shared) -> torch.dtype:
    if compat.is_forge():
        from modules import call_queue

        sd_model = forge_training.loaded_forge_model(call_queue.queue_lock)
        compat.model_family(sd_model)
        return forge_training.unet_dtype(sd_model)
    compat.model_family(shared.sd_model)
    return next(shared.sd_model.model.diffusion_model.parameters()).dtype


@contextmanager
def training_host(shared) -> Iterator[Any]:
    """The loaded model as a training host, prepared for the run and put back afterwards (call under the queue
    lock). A1111 and Forge hold their models in different objects; both hosts speak the same protocol."""
    interrupted = lambda: bool(shared.state.interrupted)  # noqa: E731
    if compat.is_forge():
        sd_model = forge_training.loaded_forge_model()
        with forge_training.prepared_forge_model(sd_model) as forwards:
            yield forge_training.ForgeHost(sd_model, forwards, interrupted)
        return
    with prepared_model(shared.sd_model, shared.cmd_opts, compat.builtin_lora(), shared) as forwards:
        yield WebUIHost(shared.sd_model, shared.device, forwards, interrupted,
                        lambda skip: clip_skip_option(shared.opts, skip))


def _a1111_notes(host, clip_skip: int, shared) -> list[str]:
    """Where A1111 conditions or predicts otherwise than the settings or the checkpoint say (Forge follows both):
    clip skip it does not apply (`clip_skip_note`), an SDXL v-prediction checkpoint taken as epsilon."""
    if not isinstance(host, WebUIHost):  # `training_host` gave Forge's
        return []
    info = getattr(shared.sd_model, "sd_checkpoint_info", None)
    notes = [clip_skip_note(host.family, clip_skip, bool(shared.opts.data.get("sdxl_clip_l_skip", False))),
             v_prediction_note(host.family, host.noise_schedule().prediction, getattr(info, "filename", None))]
    return [note for note in notes if note]


class WebUIRunner:
    """Prepares requests against the WebUI's folders and runs them on its loaded model."""

    def __init__(self, folders: Callable[[], Folders]):
        self.folders = folders  # read at each call: settings and the Lora folder may change while running

    def prepare(self, request: TrainRequest) -> TrainConfig:
        from modules import shared

        request = with_setting_defaults(request)
        # every name and value is checked before the model is touched (on Forge, touching it may load it)
        to_train_config(request, self.folders(), torch.float32)
        dtype = _model_dtype(shared)  # an SD3 or Flux checkpoint: refused here, in one line
        return prepare_run(request, self.folders(), dtype)

    @staticmethod
    def claim(config: TrainConfig) -> frozenset[str]:
        return frozenset(str(path) for path in output_paths(config))

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
        with training_host(shared) as host:
            if config.network.train_text_encoder:
                host.target_modules({Component.TEXT_ENCODER})  # fills host.notes on what cannot be trained
            for note in host.notes + _a1111_notes(host, config.loop.clip_skip, shared):
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
