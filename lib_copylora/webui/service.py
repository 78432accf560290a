"""`CopyLoraService`: what the tab and the HTTP API call. One instance is made by the entry script and shared by
both, so they see the same job queue.

Training and merging run under the WebUI's queue lock, like its own generation and Train tab; listing, scanning
and presets do not touch the model and run without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from ..core.presets import delete_preset, load_presets, save_preset
from ..train.data_config import DatasetConfig
from ..train.dataset import DatasetSummary, scan_dataset
from .folders import webui_folders
from .jobs import JobQueue, JobState, JobStatus
from .merge_run import MergeRequest, MergeResult, run_merge
from .safe_paths import resolve_inside
from .train_request import Folders, build_section
from .training_run import WebUIRunner


class CopyLoraService:
    def __init__(self, folders: Callable[[], Folders] = webui_folders):
        self.folders = folders
        self.jobs = JobQueue(WebUIRunner(folders))

    # ---- WebUI callbacks ---------------------------------------------------------------------------------------

    def on_app_started(self, _demo, app) -> None:
        from .api import register_routes

        register_routes(app, self)

    def shutdown(self) -> None:
        """on_script_unloaded: stop the running job and cancel queued ones; the worker thread ends."""
        self.jobs.shutdown()

    # ---- results and merges ------------------------------------------------------------------------------------

    def results(self) -> list[JobStatus]:
        return [s for s in self.jobs.list() if s.state is JobState.DONE and s.result is not None]

    def merge(self, request: MergeRequest) -> MergeResult:
        from modules import call_queue, shared

        from . import compat
        from .base_weights import LoadedModelBase
        from .paths import webui_presets

        with call_queue.queue_lock:
            shared.state.begin(job="copylora-merge")
            try:
                result = run_merge(request, self.folders().loras, webui_presets(),
                                   base_weights=lambda: LoadedModelBase(shared.sd_model))
            finally:
                shared.state.end()
        networks = compat.builtin_lora()
        if networks is not None:
            networks.list_available_networks()
        return result

    def model_hash(self) -> dict:
        """Diagnostic: sha256 of the loaded model's parameters and buffers (waits for a running job to end)."""
        from modules import call_queue, shared

        from .model_state import model_hash

        with call_queue.queue_lock:
            model = shared.sd_model
            info = getattr(model, "sd_checkpoint_info", None)
            return {"sha256": model_hash(model), "checkpoint": getattr(info, "title", None)}

    # ---- datasets and presets ----------------------------------------------------------------------------------

    def datasets(self) -> list[str]:
        root = self.folders().datasets
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def scan(self, name: str, settings: dict) -> DatasetSummary:
        data_dir = resolve_inside(self.folders().datasets, name, "dataset", must_exist=True)
        config: DatasetConfig = build_section("dataset", settings, data_dir=data_dir)
        return scan_dataset(config)

    @staticmethod
    def _preset_file() -> Path:
        from .paths import preset_path

        return preset_path()

    def presets(self) -> dict[str, tuple[float, ...]]:
        return load_presets(self._preset_file())

    def save_preset(self, name: str, values: list[float]) -> dict[str, tuple[float, ...]]:
        save_preset(name, values, self._preset_file())
        return self.presets()

    def delete_preset(self, name: str) -> dict[str, tuple[float, ...]]:
        delete_preset(name, self._preset_file())
        return self.presets()

    def relative_dataset(self, path: Path) -> Optional[str]:
        root = self.folders().datasets.resolve()
        path = Path(path).resolve()
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else None
