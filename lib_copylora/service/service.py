"""`CopyLoraService`: what the tab and the HTTP API call. One instance is made by the entry script and shared by
both, so they see the same job queue and behave the same (one Stop, one merge, one list of LoRAs).

Host-free: everything that touches the WebUI (its queue lock and `shared.state`, the loaded model, the built-in
Lora list, where its folders are) comes through the `ServiceHost` it is given (`webui/service_host.py` in the
WebUI, a fake in the tests). Training and merging run under the host's exclusive section, like the WebUI's own
generation and Train tab; listing, scanning and presets do not touch the model and run without it.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol, Sequence

from ..core.presets import delete_preset, load_presets, save_preset
from ..train.data_config import DatasetConfig
from ..train.dataset import DatasetSummary, scan_dataset
from .jobs import JobQueue, JobState, JobStatus, Runner
from .lora_list import lora_names
from .merge_run import MergeRequest, MergeResult, run_merge
from .safe_paths import resolve_inside
from .train_request import Folders, TrainRequest, build_section

if TYPE_CHECKING:
    from ..core.base_weights import BaseWeights

MERGE_JOB = "copylora-merge"
UNLOAD_SAVE_WAIT_S = 120  # a step to finish, then the LoRA and its resume state written: seconds, rarely more
log = logging.getLogger("copylora")


class ServiceHost(Protocol):
    """The host calls the service needs; the WebUI's implementation is `webui.service_host.WebUIServiceHost`."""

    def folders(self) -> Folders:
        """The datasets, outputs and Lora folders, created when missing (read at each call: flags may change)."""
        ...

    def runner(self) -> Runner:
        """What prepares and runs one training job on the host's model."""
        ...

    def exclusive(self, job: str) -> AbstractContextManager:
        """Hold the model alone for `job` (no generation meanwhile) and show it in the host's progress."""
        ...

    def listed_loras(self) -> Optional[Sequence[Path]]:
        """The host's own list of LoRA files (what its Lora page shows), or None when it keeps none."""
        ...

    def refresh_loras(self) -> None:
        """Re-read the Lora folder into the host's list after a file was written."""
        ...

    def model_hash(self) -> dict:
        """{"sha256": hash of the loaded model's parameters and buffers, "checkpoint": its title}."""
        ...

    def preset_file(self) -> Path:
        """The block-weight preset file users edit."""
        ...

    def base_weights(self) -> "BaseWeights":
        """The loaded model's own, unmodified weights: the base of DoRA/OFT/IA3/GLoRA inputs of a merge. Called
        only inside `exclusive`, and only when an input needs it."""
        ...


class CopyLoraService:
    def __init__(self, host: ServiceHost):
        self.host = host
        self.folders = host.folders
        self.jobs = JobQueue(host.runner())

    def shutdown(self) -> None:
        """on_script_unloaded (the WebUI's Reload UI): a running job stops and saves what it learned with a
        resume state, as Stop and save does, so a reload never loses a run; queued jobs are cancelled. Says so in
        the console, and waits for the save before the WebUI goes on reloading."""
        running = [s for s in self.jobs.list() if s.state is JobState.RUNNING]
        for status in running:
            log.warning("CopyLoRA: the WebUI is reloading its scripts: stopping training run %s and saving what it "
                        "learned and a resume state (Resume in the tab continues it)", status.name)
        stopped = self.jobs.shutdown(save=True, timeout=UNLOAD_SAVE_WAIT_S)
        cancelled = len(stopped) - len(running)
        if cancelled > 0:
            log.warning("CopyLoRA: %d queued training run(s) cancelled by the reload", cancelled)
        if any(s.state is JobState.RUNNING for s in self.jobs.list()):
            log.warning("CopyLoRA: a training run was still saving after %d s; its files may be incomplete",
                        UNLOAD_SAVE_WAIT_S)

    # ---- training ----------------------------------------------------------------------------------------------

    def submit(self, request: TrainRequest) -> list[str]:
        return self.jobs.submit(request)

    def stop(self, job_id: str, save: bool = False) -> JobStatus:
        """Stop a run (with `save`: write what it learned and a resume state first) and cancel the runs still
        queued from its submission (the rest of its sweep), as the WebUI's Interrupt does. Tab and API both.
        Stopping a run that has already finished changes nothing."""
        if self.jobs.status(job_id).state.finished:
            return self.jobs.status(job_id)
        status = self.jobs.stop(job_id, save=save)
        self.jobs.cancel_group(status.group)
        return self.jobs.status(job_id)

    def results(self) -> list[JobStatus]:
        return [s for s in self.jobs.list() if s.state is JobState.DONE and s.result is not None]

    # ---- merges and the Lora folder ----------------------------------------------------------------------------

    def merge(self, request: MergeRequest) -> MergeResult:
        with self.host.exclusive(MERGE_JOB):
            result = run_merge(request, self.folders().loras, self.presets(), base_weights=self.host.base_weights)
        self.host.refresh_loras()
        return result

    def lora_names(self) -> list[str]:
        """The LoRAs merge and inspect requests can name (`sub/name`), as the host lists them."""
        return lora_names(self.folders().loras, self.host.listed_loras())

    def refresh_loras(self) -> list[str]:
        self.host.refresh_loras()
        return self.lora_names()

    def model_hash(self) -> dict:
        """Diagnostic: sha256 of the loaded model's parameters and buffers (waits for a running job to end)."""
        return self.host.model_hash()

    # ---- datasets and presets ----------------------------------------------------------------------------------

    def datasets(self) -> list[str]:
        root = self.folders().datasets
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def scan(self, name: str, settings: dict) -> DatasetSummary:
        data_dir = resolve_inside(self.folders().datasets, name, "dataset", must_exist=True)
        config: DatasetConfig = build_section("dataset", settings, data_dir=data_dir)
        return scan_dataset(config)

    def presets(self) -> dict[str, tuple[float, ...]]:
        return load_presets(self.host.preset_file())

    def save_preset(self, name: str, values: list[float]) -> dict[str, tuple[float, ...]]:
        save_preset(name, values, self.host.preset_file())
        return self.presets()

    def delete_preset(self, name: str) -> dict[str, tuple[float, ...]]:
        delete_preset(name, self.host.preset_file())
        return self.presets()

    def relative_dataset(self, path: Path) -> Optional[str]:
        root = self.folders().datasets.resolve()
        path = Path(path).resolve()
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else None
