"""What the `train` and `demo` commands print: the model, the image sets, progress, previews and the files written."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

from ..core.lorafile import LoraFile
from ..core.naming import Component, component_of
from ..train.callbacks import Callbacks, Samples

Say = Callable[[str], None]


def lora_line(lora: LoraFile) -> str:
    """`copier.safetensors: LoRA, rank 8 (alpha 1.0), 192 modules (192 UNet)` and the like."""
    kinds = sorted({layer.kind.label for layer in lora.layers.values()})
    ranks = Counter(getattr(layer, "rank", None) for layer in lora.layers.values())
    rank_text = "/".join(str(r) for r in sorted(r for r in ranks if r is not None)) or "-"
    alphas = {getattr(layer, "alpha", None) for layer in lora.layers.values()}
    alpha_text = f" (alpha {alphas.pop()})" if len(alphas) == 1 else ""
    te = sum(1 for name in lora.layers if component_of(name) is Component.TEXT_ENCODER)
    unet = len(lora.layers) - te
    parts = [f"{unet} UNet"] + ([f"{te} text encoder"] if te else [])
    name = lora.path.name if lora.path is not None else lora.name
    return (f"{name}: {', '.join(kinds)}, rank {rank_text}{alpha_text}, {len(lora.layers)} modules "
            f"({', '.join(parts)}), {lora.family.label}")


def save_preview(samples: Samples, path: Path) -> Path:
    """The previews as one PNG: with the LoRA on the top row, without it below."""
    import numpy as np
    from PIL import Image

    import torch

    rows = [torch.cat(list(images), dim=-1) for images in (samples.with_lora, samples.without_lora)]
    grid = torch.cat(rows, dim=-2).permute(1, 2, 0).mul(255).round().clamp(0, 255).to(torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(grid.numpy())).save(path)
    return path


class Reporter:
    """Turns the trainer's callbacks into console lines (only on the main process: `say` is silent elsewhere)."""

    def __init__(self, say: Say, config, log_every: int = 0):
        self.say, self.config, self.log_every = say, config, log_every
        self.phase_name, self.phase_total = "", 0

    def model(self, host, parallel) -> None:
        prediction = host.noise_schedule().prediction.value
        self.say(f"model: {host.family.label}, {prediction} prediction, {host.dtype} on {host.device}")
        if parallel.enabled:
            self.say(f"data parallel: {parallel.world_size} processes (this is rank {parallel.rank})")

    def dataset(self, label: str, dataset, world_size: int = 1) -> None:
        summary = dataset.summary()
        self.say(f"{label}: {dataset.config.data_dir.name}")
        for line in summary.describe().splitlines():
            self.say(f"  {line}")
        if world_size > 1:
            self.say(f"  {dataset.batches_per_epoch(world_size)} batches per epoch for each of {world_size} "
                     "processes")

    def _phase(self, name: str, total: int) -> None:
        self.phase_name, self.phase_total = name, total
        self.say(f"phase {name}: {total} steps")

    def _step(self, step: int, loss: float, lr: float) -> None:
        every = self.log_every or max(1, self.phase_total // 20)
        if step % every == 0 or step == self.phase_total or step == 1:
            self.say(f"{self.phase_name} step {step}/{self.phase_total}  loss {loss:.4f}  lr {lr:.2e}")

    def _sample(self, step: int, samples: Samples) -> None:
        output = self.config.output
        path = output.output_dir / "samples" / f"{output.output_name}_{self.phase_name}_{step:06d}.png"
        self.say(f"preview: {save_preview(samples, path)}")

    def callbacks(self) -> Callbacks:
        return Callbacks(on_step=self._step, on_sample=self._sample, on_save=lambda p: self.say(f"wrote {p}"),
                         on_log=self.say, on_phase=self._phase)

    def result(self, result) -> None:
        if result.stopped:
            steps = ", ".join(f"{name} {r.steps}/{r.total_steps}" for name, r in result.phases.items())
            self.say(f"stopped ({steps}); written: {', '.join(p.name for p in result.written) or 'nothing'}")
            self.say("continue with the same command and --resume")
            return
        self.say(f"result: {lora_line(result.lora)}")
        for path in result.written:
            self.say(f"  file: {path}")
