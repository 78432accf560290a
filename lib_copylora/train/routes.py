"""The three training routes (docs/architecture.md §8) and the guarantees they share.

- single: one LoRA on one image set.
- copier: train A; keep A hooked onto the base, frozen (multiplier 1, no gradients, nothing merged into a weight);
  train B on top; the result is B, which applied to the plain base adds only what differs between the sets.
- difference: train A and B on the base; the result is the exact merge B − A (core.merge), optionally re-ranked.

Common random numbers: every LoRA of a route starts from the same initial weights, and every phase draws the same
noise and timesteps in the same order (its own generator seeded with `loop.seed`; datasets order their epochs from
their own seed), as separate kohya runs with one seed do. So the difference route's A and B see identical draws and
B − A keeps what the image sets make differ, not what two unrelated noise sequences do (on identical sets B − A is
exactly zero); the copier's B starts where A started.

Whatever happens (success, an error, a stop), the base ends bit-identical: its weights are never written (LoRA
modules act through forward hooks that are removed in `finally`) and its requires_grad flags are put back.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
import warnings
from contextlib import contextmanager
from pathlib import Path, PureWindowsPath
from typing import Any, Iterator, NamedTuple, Optional

import torch

from ..core.errors import OutputExists
from ..core.formats import write_lora
from ..core.lorafile import LoraFile
from ..core.merge import merge_loras
from .dora import TrainingBase
from ..core.metadata import read_recipe
from ..core.model_hashes import ModelHashes, checked_hashes
from .callbacks import Callbacks, TrainControl
from .checkpoint import save_state, state_path
from .config import Route, TrainConfig
from .dataset import ImageDataset
from .errors import TrainConfigError
from .host import Component, Prediction, TrainingHost
from .loop import BatchSource, PhaseJob, PhaseResult, finished_state, run_phase, steps_per_epoch
from .metadata import RunFacts, dataset_facts, with_training_metadata
from .network import LoraNetwork
from .optim import build_optimizer, optimizer_name
from .speedups import host_speedups


class RouteResult(NamedTuple):
    lora: Optional[LoraFile]  # the result as saved; None when training was stopped before the end
    path: Optional[Path]  # where the result was written
    stopped: bool
    phases: dict[str, PhaseResult]  # "single", or "A" and "B"
    written: list[Path]  # every LoRA file written, parts and intermediate saves included


def train(host: TrainingHost, config: TrainConfig, data_a: BatchSource, data_b: Optional[BatchSource] = None,
          callbacks: Optional[Callbacks] = None, control: Optional[TrainControl] = None) -> RouteResult:
    """Run the route `config.route.route` names."""
    route = config.route.route
    if route is Route.SINGLE:
        return train_single(host, config, data_a, callbacks, control)
    if data_b is None:
        raise TrainConfigError(f"the {route.value} route needs image set B as well as A")
    entry = train_copier if route is Route.COPIER else train_difference
    return entry(host, config, data_a, data_b, callbacks, control)


def train_single(host: TrainingHost, config: TrainConfig, data: BatchSource, callbacks: Optional[Callbacks] = None,
                 control: Optional[TrainControl] = None) -> RouteResult:
    run = _Run(host, config, callbacks, control)
    with run.session(data):
        network = run.network()
        result = run.phase("single", network, data, suffix="")
        if result.stopped:
            return run.stopped({"single": result})
        lora = run.finish(network.export(host.family), {"single": result}, data)
        return run.done(lora, {"single": result})


def train_copier(host: TrainingHost, config: TrainConfig, data_a: BatchSource, data_b: BatchSource,
                 callbacks: Optional[Callbacks] = None, control: Optional[TrainControl] = None) -> RouteResult:
    run = _Run(host, config, callbacks, control)
    with run.session(data_a, data_b):
        network_a = run.network()
        phases = {"A": run.phase("A", network_a, data_a, suffix="_A")}
        if phases["A"].stopped:
            return run.stopped(phases)
        network_a.freeze()
        network_b = run.network()
        with network_a.attached():  # A stays on, frozen, while B learns what B's set has beyond A's
            phases["B"] = run.phase("B", network_b, data_b, suffix="")
        if phases["B"].stopped:
            return run.stopped(phases)
        if config.route.keep_parts:
            run.finish(network_a.export(host.family), {"A": phases["A"]}, data_a, suffix="_A")
        lora = run.finish(network_b.export(host.family), phases, data_b)
        return run.done(lora, phases)


def train_difference(host: TrainingHost, config: TrainConfig, data_a: BatchSource, data_b: BatchSource,
                     callbacks: Optional[Callbacks] = None, control: Optional[TrainControl] = None) -> RouteResult:
    run = _Run(host, config, callbacks, control)
    with run.session(data_a, data_b):
        network_a, network_b = run.network(), run.network()  # the same start: see the module notes
        phases = {"A": run.phase("A", network_a, data_a, suffix="_A")}
        if phases["A"].stopped:
            return run.stopped(phases)
        phases["B"] = run.phase("B", network_b, data_b, suffix="_B")
        if phases["B"].stopped:
            return run.stopped(phases)
        lora_a, lora_b = network_a.export(host.family), network_b.export(host.family)
        if config.route.keep_parts:
            run.finish(lora_a, {"A": phases["A"]}, data_a, suffix="_A")
            run.finish(lora_b, {"B": phases["B"]}, data_b, suffix="_B")
        spec = config.route.difference_spec(config.output.output_name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # DoRA parts change with the weight they modify: the host's own weights are the base
            merged = merge_loras([lora_b, lora_a], spec, TrainingBase(network_a, host.family))
        for warning in caught:
            run.callbacks.log(f"merge: {warning.message}")
        lora = run.finish(merged, phases, data_b, merge=read_recipe(merged.metadata))
        return run.done(lora, phases)


def output_paths(config: TrainConfig) -> list[Path]:
    """The files a run writes under their final names: the result, and its parts when kept."""
    suffixes = [""]
    if config.route.keep_parts:
        suffixes += ["_A"] if config.route.route is Route.COPIER else ["_A", "_B"]
    return [config.output.path(s) for s in suffixes]


def existing_outputs(config: TrainConfig) -> list[Path]:
    """The files a run would write that exist already, unless overwriting was asked for. Adapters check this
    before loading a model; the run checks it again before step 1."""
    if config.output.overwrite:
        return []
    return [path for path in output_paths(config) if path.exists()]


def _one_batch_shape(source: BatchSource) -> bool:
    """True when the source says every batch has one shape (`ImageDataset.one_batch_shape`); toy sources need not."""
    says = getattr(source, "one_batch_shape", None)
    return bool(says()) if callable(says) else False


def _num_train_images(source: BatchSource) -> Optional[int]:
    summary = getattr(source, "summary", None)  # ImageDataset has one; toy sources need not
    return summary().samples_per_epoch if callable(summary) else None


def _image_dataset(source: BatchSource) -> Optional[ImageDataset]:
    """The ImageDataset behind a source: the source itself, or the one a data-parallel ShardedSource
    (hosts/data_parallel.py, which the CLI always uses) shares out as `.dataset`; None for other sources."""
    for candidate in (source, getattr(source, "dataset", None)):
        if isinstance(candidate, ImageDataset):
            return candidate
    return None


def _world_size(source: BatchSource) -> int:
    """Data-parallel processes: a ShardedSource knows them (`.parallel.world_size`); any other source is alone."""
    size = getattr(getattr(source, "parallel", None), "world_size", 1)
    return size if isinstance(size, int) and size > 0 else 1


def _base_model_name(host: Any) -> Optional[str]:
    """The base model's file name for `ss_sd_model_name`, never its path (kohya keeps only the basename). The host
    protocol does not require one: a host that knows its checkpoint may offer `model_name` (a path or a name)."""
    name = getattr(host, "model_name", None)
    if not isinstance(name, str) or not name.strip():
        return None
    return PureWindowsPath(name.strip()).name or None  # a Windows path splits on both / and \


def _base_model_hashes(host: Any) -> ModelHashes:
    """What the host knows of its checkpoint's hashes (optional in the host protocol), each checked for its form."""
    read = getattr(host, "model_hashes", None)
    hashes = read() if callable(read) else None
    if not isinstance(hashes, tuple) or len(hashes) != 2:
        return ModelHashes()
    return checked_hashes(*hashes)


class _Run:
    """What the phases of one route share: host, settings, the files written so far."""

    def __init__(self, host: TrainingHost, config: TrainConfig, callbacks: Optional[Callbacks],
                 control: Optional[TrainControl]):
        self.host, self.config = host, config
        self.callbacks = callbacks or Callbacks()
        self.control = control or TrainControl()
        self.started_at = time.time()
        # kohya's ss_session_id: one random number per run, drawn without touching the seeded generators
        self.session_id = random.SystemRandom().randint(0, 2**32)
        self.written: list[Path] = []
        self._model_hashes: Optional[ModelHashes] = None
        self.jobs: dict[str, PhaseJob] = {}  # each phase begun, by name
        components = {Component.UNET} | ({Component.TEXT_ENCODER} if config.network.train_text_encoder else set())
        self.targets = host.target_modules(components)
        # building a throwaway optimiser names it for `ss_optimizer` and fails early when its package is missing
        probe = torch.nn.Parameter(torch.zeros(1))
        self.optimizer = optimizer_name(build_optimizer([{"params": [probe], "lr": 1.0}], config.optim))

    @contextmanager
    def session(self, *sources: BatchSource) -> Iterator[None]:
        """Base frozen (flags restored afterwards), gradient checkpointing on if asked (off afterwards), the host's
        speed-ups (attention kernel, compiled blocks) in place meanwhile."""
        output = self.config.output
        existing = existing_outputs(self.config)
        if existing:
            raise OutputExists(f"{existing[0]} exists; choose another name or ask to overwrite")
        output.output_dir.mkdir(parents=True, exist_ok=True)
        flags = [(t, t.requires_grad) for _, t in self.host.base_tensors()]
        checkpointing = False
        try:
            for tensor, _ in flags:
                tensor.requires_grad_(False)
            if self.config.loop.gradient_checkpointing:
                checkpointing = self.host.set_gradient_checkpointing(True)
                if not checkpointing:
                    self.callbacks.log("this model cannot use gradient checkpointing; training without it")
            one_shape = all(_one_batch_shape(source) for source in sources)
            with host_speedups(self.host, self.config.speed, self.callbacks.log, one_shape):
                yield
        finally:
            if checkpointing:
                self.host.set_gradient_checkpointing(False)
            for tensor, flag in flags:
                tensor.requires_grad_(flag)

    def network(self) -> LoraNetwork:
        """A fresh network; every one a route builds starts from the same weights (common random numbers)."""
        return LoraNetwork(self.targets, self.config.network, seed=self.config.loop.seed,
                           device=self.host.device)

    def phase(self, name: str, network: LoraNetwork, source: BatchSource, suffix: str) -> PhaseResult:
        dataset = self.config.dataset_b if name == "B" else self.config.dataset_a
        cfg = self.config
        self.cache_latents(name, source)
        # settings as trained: a default spelt out (weight decay None or 0.01 for AdamW) resumes the same run
        optim = dataclasses.replace(cfg.optim, weight_decay=cfg.optim.effective_weight_decay)
        fingerprint = repr((cfg.route.route, name, cfg.network, optim, cfg.loop, cfg.loss, dataset))
        job = PhaseJob(name=name, host=self.host, network=network, source=source, config=cfg,
                       callbacks=self.callbacks, control=self.control,
                       save_lora=lambda net, extra, step: self.save_partial(net, name, source, suffix + extra, step),
                       state_file=state_path(cfg.output, name), fingerprint=fingerprint)
        self.jobs[name] = job
        return run_phase(job)

    def cache_latents(self, name: str, source: BatchSource) -> None:
        """Encode an ImageDataset's images once, before its phase, when its settings ask for it."""
        cache = getattr(source, "cache_latents", None)
        if callable(cache) and getattr(getattr(source, "config", None), "cache_latents", False):
            encoded = cache(self.host)
            if encoded:
                self.callbacks.log(f"{name}: cached the latents of {encoded} image{'' if encoded == 1 else 's'}")

    def facts(self, phases: dict[str, PhaseResult], source: BatchSource) -> RunFacts:
        """The facts of a file trained last by the final phase of `phases` on `source`: a file describes the set of
        its last phase (B for the copier's and the difference's results; train/metadata.py says why)."""
        last = list(phases)[-1]
        steps = phases[last].steps
        batches = source.batches_per_epoch()
        per_epoch = steps_per_epoch(batches, self.config.loop.gradient_accumulation_steps)
        epochs = math.ceil(steps / per_epoch)
        v_prediction = self.host.noise_schedule().prediction is Prediction.V
        dataset = self.config.dataset_b if last == "B" else self.config.dataset_a
        scanned = _image_dataset(source)
        return RunFacts(self.started_at, time.time(), steps, epochs, self.optimizer, _num_train_images(source),
                        v_prediction, session_id=self.session_id, dataset=dataset,
                        data=dataset_facts(scanned) if scanned is not None else None, batches_per_epoch=batches,
                        world_size=_world_size(source), sd_model_name=_base_model_name(self.host),
                        model_hashes=self.model_hashes())

    def model_hashes(self) -> ModelHashes:
        """The base checkpoint's hashes, asked of the host at the run's first save and kept (hashing a whole
        checkpoint file reads gigabytes)."""
        if self._model_hashes is None:
            self._model_hashes = _base_model_hashes(self.host)
        return self._model_hashes

    def save_partial(self, network: LoraNetwork, phase: str, source: BatchSource, suffix: str, step: int) -> Path:
        """An intermediate save (every n steps/epochs, or on stop-and-save) of the network being trained."""
        progress = {phase: PhaseResult(step, step, [], False)}
        lora = with_training_metadata(network.export(self.host.family), self.config, self.facts(progress, source),
                                      {phase: step})
        return self.write(lora, suffix, overwrite=True)

    def finish(self, lora: LoraFile, phases: dict[str, PhaseResult], source: BatchSource, suffix: str = "",
               merge: Optional[dict] = None) -> LoraFile:
        """Save a finished LoRA (the result, or a part) with its training metadata and recipe."""
        with_training_metadata(lora, self.config, self.facts(phases, source),
                               {name: r.steps for name, r in phases.items()}, merge)
        lora.path = self.write(lora, suffix, overwrite=self.config.output.overwrite)
        return lora

    def write(self, lora: LoraFile, suffix: str, overwrite: bool) -> Path:
        path = write_lora(lora, self.config.output.path(suffix), dtype=self.config.output.save_precision.dtype,
                          overwrite=overwrite)
        self.written.append(path)
        self.callbacks.save(path)
        return path

    def stopped(self, phases: dict[str, PhaseResult]) -> RouteResult:
        """A stopped run. With stop-and-save, each phase that ran to its end keeps its finished state (save_state on
        or off), so that resuming trains only what is left: a stop that comes after phase A's last step, during its
        last preview or while B's latents are cached, loses nothing of A."""
        if self.control.save_requested:
            for name, result in phases.items():
                if not result.stopped:
                    save_state(self.jobs[name].state_file, finished_state(self.jobs[name], result))
        return RouteResult(None, None, True, phases, list(self.written))

    def done(self, lora: LoraFile, phases: dict[str, PhaseResult]) -> RouteResult:
        self.callbacks.log(f"saved {lora.path.name}")
        return RouteResult(lora, lora.path, False, phases, list(self.written))
