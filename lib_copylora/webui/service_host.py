"""The WebUI's side of the service (`service.service.ServiceHost`): its queue lock and progress state, the loaded
model, the built-in Lora list, and where its folders and presets are."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..service.train_request import Folders
from . import compat, forge_training
from .folders import webui_folders
from .paths import preset_path
from .training_run import WebUIRunner


class WebUIServiceHost:
    def folders(self) -> Folders:
        return webui_folders()

    def runner(self) -> WebUIRunner:
        return WebUIRunner(self.folders)

    @contextmanager
    def exclusive(self, job: str) -> Iterator[None]:
        from modules import call_queue, shared

        with call_queue.queue_lock:
            shared.state.begin(job=job)
            try:
                yield
            finally:
                shared.state.end()

    def listed_loras(self) -> Optional[list[Path]]:
        networks = compat.builtin_lora()
        if networks is None:
            return None
        return [Path(entry.filename) for entry in networks.available_networks.values()]

    def refresh_loras(self) -> None:
        networks = compat.builtin_lora()
        if networks is not None:
            networks.list_available_networks()

    def model_hash(self) -> dict:
        from modules import call_queue, shared

        from .model_state import model_hash

        with call_queue.queue_lock:
            model = forge_training.loaded_forge_model() if compat.is_forge() else shared.sd_model
            info = getattr(model, "sd_checkpoint_info", None)
            return {"sha256": model_hash(model), "checkpoint": getattr(info, "title", None)}

    def preset_file(self) -> Path:
        return preset_path()

    def base_weights(self):
        """The loaded model as a merge's base, as it was before any LoRA was merged into it (the built-in Lora's
        backups in A1111, the LoRA loader's originals in Forge); the service calls this inside `exclusive`, so the
        model cannot change meanwhile. Forge loads the selected checkpoint first if no generation has yet."""
        from modules import shared

        from .base_weights import ForgeModelBase, LoadedModelBase

        if compat.is_forge():
            return ForgeModelBase(forge_training.selected_forge_model())
        return LoadedModelBase(shared.sd_model)
