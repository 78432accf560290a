"""How a running training talks to its caller: named callbacks out, a stop request in.

Every callback is optional. They run on the training thread between optimizer steps; an exception raised by one
ends the training like any other error (the base model is restored all the same).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch


class Samples(NamedTuple):
    """Preview images of the same prompts and noise, with and without the LoRA being trained: (N, 3, H, W)
    float32 in [0, 1] on the CPU. In the copier's phase B, "without" still has A applied."""

    prompts: list[str]
    with_lora: torch.Tensor
    without_lora: torch.Tensor


@dataclass
class Callbacks:
    on_step: Optional[Callable[[int, float, float], None]] = None  # (step, loss, learning rate) after each step
    on_sample: Optional[Callable[[int, Samples], None]] = None  # (step, previews)
    on_save: Optional[Callable[[Path], None]] = None  # every LoRA file written
    on_log: Optional[Callable[[str], None]] = None  # one line of news for a console or a status box
    on_phase: Optional[Callable[[str, int], None]] = None  # (phase "A", "B" or "single", its total steps)

    def step(self, step: int, loss: float, lr: float) -> None:
        if self.on_step is not None:
            self.on_step(step, loss, lr)

    def sample(self, step: int, samples: Samples) -> None:
        if self.on_sample is not None:
            self.on_sample(step, samples)

    def save(self, path: Path) -> None:
        if self.on_save is not None:
            self.on_save(path)

    def log(self, text: str) -> None:
        if self.on_log is not None:
            self.on_log(text)

    def phase(self, name: str, total_steps: int) -> None:
        if self.on_phase is not None:
            self.on_phase(name, total_steps)


class TrainControl:
    """A stop request another thread (a UI button) may set; the loop looks at it after every optimizer step.

    `stop()` ends training and writes nothing more; `stop(save=True)` first saves the LoRA being trained and a
    resume state beside the output. `reduce_gradients`, given by an adapter that runs several data-parallel
    processes, averages each optimizer step's gradients over them in place; the loop calls it once the step's
    last backward is done, before fp16 loss-scale unscaling and clipping, so every process decides alike."""

    def __init__(self, reduce_gradients: Optional[Callable[[list[torch.Tensor]], None]] = None) -> None:
        self._stop = threading.Event()
        self._save = threading.Event()
        self.reduce_gradients = reduce_gradients

    def stop(self, save: bool = False) -> None:
        if save:
            self._save.set()
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def save_requested(self) -> bool:
        return self._save.is_set()
