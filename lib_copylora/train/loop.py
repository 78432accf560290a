"""The training loop of one LoRA ("phase"), host-agnostic: the whole loop is `_Phase.run`.

Data comes from a `BatchSource` whose epoch `e` is the same sequence of batches every time it is asked for (the
dataset draws its order from (seed, e)), so a resumed run asks for epoch `e` from batch `position` on and sees
exactly what an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional, Protocol

import torch

from . import speedups
from .callbacks import Callbacks, TrainControl
from .checkpoint import load_state, save_state
from .config import SETTLE_STEPS, Precision, TrainConfig
from .errors import TrainingDiverged, TrainingError
from .host import TrainingHost
from .network import LoraNetwork
from .numerics import add_noise, diffusion_loss, min_snr_weights, sample_noise, sample_timesteps, training_target
from .optim import build_optimizer, lr_factor, set_learning_rates
from .sampling import render_previews


class BatchSource(Protocol):
    """What `train/dataset.py`'s `ImageDataset` offers: batches with `latents` (B, C, h, w), `captions` and
    `loss_weights` (B,)."""

    def batches_per_epoch(self) -> int: ...

    def batches(self, host: Any, epoch: int, start: int = 0) -> Iterator[Any]: ...


class PhaseJob(NamedTuple):
    name: str  # "single", "A" or "B": names the resume state and the phase in messages
    host: TrainingHost
    network: LoraNetwork
    source: BatchSource
    config: TrainConfig
    callbacks: Callbacks
    control: TrainControl
    save_lora: Callable[[LoraNetwork, str, int], Path]  # (network, file-name suffix, step): writes an interim LoRA
    state_file: Path
    fingerprint: str  # the settings a resume state must have been saved with


class PhaseResult(NamedTuple):
    steps: int
    total_steps: int
    losses: list[float]  # mean loss of each optimizer step
    stopped: bool


def steps_per_epoch(batches_per_epoch: int, accumulation: int) -> int:
    """Optimizer steps an epoch makes: as in kohya's scripts, an epoch's last step takes the batches left over when
    they are fewer than `accumulation` (no step sums batches of two epochs)."""
    return max(1, math.ceil(batches_per_epoch / accumulation))


def total_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    loop = config.loop
    if loop.max_steps:
        return loop.max_steps
    return loop.epochs * steps_per_epoch(batches_per_epoch, loop.gradient_accumulation_steps)


def run_phase(job: PhaseJob) -> PhaseResult:
    """Train `job.network` (its modules hooked onto the host only meanwhile); resumes from a state when asked."""
    state = load_state(job.state_file, job.fingerprint) if job.config.output.resume else None
    if state is not None and state["finished"]:
        job.network.load_weights(state["network"])
        job.callbacks.log(f"{job.name}: already trained ({state['step']} steps), taken from {job.state_file.name}")
        return PhaseResult(state["step"], state["step"], list(state["losses"]), False)
    phase = _Phase(job)
    if state is not None:
        phase.restore(state)
        job.callbacks.log(f"{job.name}: resuming at step {state['step']} from {job.state_file.name}")
    with job.network.attached():
        return phase.run()


def finished_state(job: PhaseJob, result: PhaseResult) -> dict:
    """The resume state of a phase that ran to its end: all `run_phase` takes from a finished state."""
    return {"phase": job.name, "fingerprint": job.fingerprint, "finished": True, "step": result.steps,
            "losses": list(result.losses), "network": job.network.weights()}


@dataclass
class _Progress:
    step: int = 0
    epoch: int = 0
    position: int = 0  # batches of `epoch` already used
    losses: list[float] = field(default_factory=list)


class _Phase:
    def __init__(self, job: PhaseJob):
        self.job, self.cfg, self.host = job, job.config, job.host
        self.schedule = job.host.noise_schedule()
        self.per_epoch = job.source.batches_per_epoch()
        if self.per_epoch < 1:
            raise TrainingError(f"{job.name}: the image set gives no batches to train on")
        self.total = total_steps(job.config, self.per_epoch)
        network, optim = job.network, job.config.optim
        network.train()
        self.optimizer = build_optimizer(
            network.parameter_groups(optim.learning_rate, optim.effective_text_encoder_lr), optim,
            multi_tensor=job.config.speed.fused_optimizer)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        precision = job.config.loop.precision
        # fp16 gradients underflow without loss scaling; torch's scaler is reliable on CUDA only
        use_scaler = precision is Precision.FP16 and job.host.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.autocast = lambda: torch.autocast(job.host.device.type, dtype=precision.dtype,
                                               enabled=precision is not Precision.FP32)
        self.generator = torch.Generator(device=job.host.device).manual_seed(job.config.loop.seed)
        self.progress = _Progress()
        self.losses = _LossReader(job.name, self.progress, job.callbacks, job.config.speed.read_loss_every)
        self.cond_cache: dict[tuple[str, ...], Any] = {}
        # CUDA graphs replay into the same memory: each batch starts a new generation of the compiled units' graphs
        self.graph_batches = job.config.speed.compile.cuda_graphs and job.host.device.type == "cuda"
        self.latent_shape: Optional[tuple[int, ...]] = None
        self.settled = 0  # optimizer steps in a row since the phase began or since its last preview or save

    def run(self) -> PhaseResult:
        job, cfg, p = self.job, self.cfg, self.progress
        accum = cfg.loop.gradient_accumulation_steps
        job.callbacks.phase(job.name, self.total)
        if self.stop_requested():  # asked while an earlier phase was finishing
            return PhaseResult(p.step, self.total, p.losses, True)
        while p.step < self.total:
            ended = False
            for batch in job.source.batches(self.host, p.epoch, p.position):
                p.position += 1
                self.backward(batch, accum)
                if self.losses.batches_pending() >= accum and self.step():
                    ended = True
                    break
            if not ended and self.losses.batches_pending():  # the epoch ran out within an accumulation
                ended = self.step()
            if ended:
                if p.step < self.total:  # a stop was asked for
                    return PhaseResult(p.step, self.total, p.losses, True)
                break
            p.epoch, p.position = p.epoch + 1, 0
            self.after_epoch()
        self.losses.flush()
        if cfg.sample.prompts and not self.previewed_at_step(p.step):  # else after_step just rendered them
            self.preview()
        if cfg.output.save_state:
            save_state(job.state_file, self.state(finished=True))
        return PhaseResult(p.step, self.total, p.losses, False)

    def backward(self, batch, accum: int) -> None:
        """Add one batch's gradients (its loss divided by `accum`, also in an epoch's shorter last step, as
        kohya's scripts under accelerate do)."""
        loss = self.batch_loss(batch)
        self.losses.add(loss, self.progress.step + 1)
        scaled = loss / accum
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()

    def step(self) -> bool:
        """One optimizer step over the batches summed so far; True when the phase ends here (done or stopped)."""
        p = self.progress
        lr = self.optimizer_step()
        p.step += 1
        self.settled += 1
        self.losses.end_step(p.step, lr)
        return self.after_step() or p.step >= self.total

    def after_epoch(self) -> None:
        """Saves and previews every n epochs (none once the last step is done: the phase's end does both)."""
        cfg, p = self.cfg, self.progress
        if p.step >= self.total:
            return
        every = cfg.output.save_every_n_epochs
        if every and p.epoch % every == 0:
            self.save(f"-{p.epoch:06d}", with_state=True)
        every = cfg.sample.every_n_epochs
        if cfg.sample.prompts and every and p.epoch % every == 0 and not self.previewed_at_step(p.step):
            self.preview()

    def previewed_at_step(self, step: int) -> bool:
        every = self.cfg.sample.every_n_steps
        return bool(self.cfg.sample.prompts and every and step % every == 0)

    def after_step(self) -> bool:
        """Periodic saves and previews; True when training must stop now."""
        job, cfg, step = self.job, self.cfg, self.progress.step
        if self.stop_requested():
            self.losses.flush()
            if job.control.save_requested:
                self.save(f"-step{step:08d}", with_state=True)
            job.callbacks.log(f"{job.name}: stopped at step {step}")
            return True
        if step < self.total and cfg.output.save_every_n_steps and step % cfg.output.save_every_n_steps == 0:
            self.save(f"-step{step:08d}", with_state=cfg.output.save_state)
        if self.previewed_at_step(step):
            self.preview()
        return False

    def stop_requested(self) -> bool:
        return self.job.control.stop_requested or self.host.interrupted()

    def batch_loss(self, batch) -> torch.Tensor:
        host, cfg = self.host, self.cfg
        if self.graph_batches:
            torch.compiler.cudagraph_mark_step_begin()
        # non_blocking: without it every host-to-GPU copy waits for the GPU to finish all queued work
        latents = batch.latents.to(device=host.device, dtype=torch.float32, non_blocking=True)
        self.latent_shape = tuple(latents.shape[1:])
        abar = self.schedule.alphas_cumprod
        noise = sample_noise(latents, self.generator, cfg.loss.noise_offset)
        timesteps = sample_timesteps(latents.shape[0], len(abar), self.generator, host.device)
        noisy = add_noise(latents, noise, timesteps, abar)
        with self.autocast():
            cond = self.encode(list(batch.captions))
            with speedups.settled_step(self.settled >= SETTLE_STEPS):
                prediction = host.predict_noise(noisy.to(host.dtype), timesteps, cond)
        target = training_target(latents, noise, timesteps, abar, self.schedule.prediction)
        weights = batch.loss_weights.to(device=host.device, dtype=torch.float32, non_blocking=True)
        if cfg.loss.min_snr_gamma is not None:
            weights = weights * min_snr_weights(timesteps, abar, cfg.loss.min_snr_gamma, self.schedule.prediction)
        return diffusion_loss(prediction, target, weights)

    def encode(self, captions: list[str]):
        clip_skip = self.cfg.loop.clip_skip
        if self.cfg.network.train_text_encoder:
            return self.host.encode_prompts(captions, clip_skip)
        if not self.cfg.speed.cache_text_encoder:
            with torch.no_grad():
                return self.host.encode_prompts(captions, clip_skip)
        key = tuple(captions)
        if key not in self.cond_cache:
            if len(self.cond_cache) >= 256:  # captions rarely repeat as whole batches beyond a small set
                self.cond_cache.clear()
            with torch.no_grad():
                self.cond_cache[key] = self.host.encode_prompts(captions, clip_skip)
        return self.cond_cache[key]

    def optimizer_step(self) -> float:
        optim = self.cfg.optim
        lr = set_learning_rates(self.optimizer, lr_factor(optim.scheduler, self.progress.step, self.total,
                                                          optim.warmup_steps, optim.num_cycles))
        reduce = self.job.control.reduce_gradients
        if reduce is not None:  # data-parallel processes: the same averaged, still scaled gradients on each
            reduce([p.grad for p in self.params if p.grad is not None])
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if optim.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, optim.max_grad_norm,
                                           foreach=True if self.cfg.speed.fused_optimizer else None)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr

    def preview(self) -> None:
        if self.latent_shape is None:
            return
        self.settled = 0  # previews and saves run code between steps besides the optimizer: full guards again
        self.job.network.eval()
        try:
            samples = render_previews(self.host, self.job.network, self.latent_shape, self.cfg.sample,
                                      self.cfg.loop.clip_skip, self.cfg.loop.precision)
        finally:
            self.job.network.train()
        self.job.callbacks.sample(self.progress.step, samples)

    def save(self, suffix: str, with_state: bool) -> None:
        self.settled = 0
        self.losses.flush()
        self.job.save_lora(self.job.network, suffix, self.progress.step)
        if with_state:
            save_state(self.job.state_file, self.state(finished=False))

    def state(self, finished: bool) -> dict:
        p = self.progress
        return {"phase": self.job.name, "fingerprint": self.job.fingerprint, "finished": finished,
                "step": p.step, "epoch": p.epoch, "position": p.position, "losses": list(p.losses),
                "network": self.job.network.weights(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "generator": self.generator.get_state()}

    def restore(self, state: dict) -> None:
        self.job.network.load_weights(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.progress = _Progress(state["step"], state["epoch"], state["position"], list(state["losses"]))
        self.losses.progress = self.progress


class _LossReader:
    """The losses of the steps, read back from the device every `every` steps in one transfer (each read waits
    for the device to finish); step callbacks and the divergence check run as they are read. With `every` 1 each
    batch's loss is read and checked before its backward pass, as a plain loop does."""

    def __init__(self, phase: str, progress: _Progress, callbacks: Callbacks, every: int):
        self.phase, self.progress, self.callbacks, self.every = phase, progress, callbacks, every
        self.pending: list = []  # this step's batch losses so far: floats, or device tensors when every > 1
        self.unread: list[tuple[int, float, list]] = []  # (step, learning rate, batch losses) not reported yet

    def add(self, loss: torch.Tensor, step: int) -> None:
        if self.every == 1:
            value = loss.item()
            self._check(value, step)
            self.pending.append(value)
        else:
            self.pending.append(loss.detach())

    def batches_pending(self) -> int:
        return len(self.pending)

    def end_step(self, step: int, lr: float) -> None:
        self.unread.append((step, lr, self.pending))
        self.pending = []
        if len(self.unread) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.unread:
            return
        tensors = [v for _, _, losses in self.unread for v in losses if isinstance(v, torch.Tensor)]
        values = iter(torch.stack(tensors).tolist()) if tensors else iter(())
        unread, self.unread = self.unread, []
        for step, lr, losses in unread:
            floats = [next(values) if isinstance(v, torch.Tensor) else v for v in losses]
            for value in floats:
                self._check(value, step)
            self.progress.losses.append(sum(floats) / len(floats))
            self.callbacks.step(step, self.progress.losses[-1], lr)

    def _check(self, value: float, step: int) -> None:
        if not math.isfinite(value):
            raise TrainingDiverged(f"{self.phase}: the loss became {value} at step {step}; lower the learning "
                                   "rate, or train in bf16 or fp32")
