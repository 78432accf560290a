"""The metadata a trained LoRA is saved with: kohya's `ss_*` training keys, plus our recipe under `copylora`.

Names and formats follow sd-scripts' train_network.py: every value a string, `None` where a setting is off,
`ss_training_started_at` a unix timestamp, `ss_mixed_precision` "no"/"fp16"/"bf16", `ss_optimizer` the class's
`module.Name`. The network keys (`ss_network_module/_dim/_alpha/_args`) describe the saved layers themselves
(core.metadata), so a difference merge reports its merged ranks.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any, NamedTuple, Optional

from ..core.lorafile import LoraFile
from ..core.metadata import standard_metadata, with_recipe
from .config import TrainConfig


class RunFacts(NamedTuple):
    """What is known only once training ran."""

    started_at: float
    finished_at: float
    steps: int
    epochs: int
    optimizer: str
    num_train_images: Optional[int]
    v_prediction: bool = False  # the host's denoiser predicts v (SD2-768-v): kohya's ss_v_parameterization


def _none(value) -> str:
    return "None" if value in (None, 0, 0.0) else str(value)


def jsonable(value: Any) -> Any:
    """Dataclasses, enums, paths and tuples as plain JSON values (for the recipe)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return value.name if value.is_absolute() else str(value)  # no machine paths in shared files
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def training_metadata(lora: LoraFile, config: TrainConfig, facts: RunFacts) -> dict[str, str]:
    optim, loop, dataset = config.optim, config.loop, config.dataset_a
    metadata = standard_metadata(lora, config.output.output_name)
    metadata.update({
        "ss_training_started_at": str(facts.started_at),
        "ss_training_finished_at": str(facts.finished_at),
        "ss_learning_rate": str(optim.learning_rate),
        "ss_unet_lr": str(optim.learning_rate),
        "ss_text_encoder_lr": str(optim.effective_text_encoder_lr) if config.network.train_text_encoder else "None",
        "ss_max_train_steps": str(loop.max_steps or facts.steps),
        "ss_steps": str(facts.steps),
        "ss_num_epochs": str(loop.epochs if not loop.max_steps else facts.epochs),
        "ss_epoch": str(facts.epochs),
        "ss_batch_size_per_device": str(dataset.batch_size) if dataset is not None else "None",
        "ss_gradient_accumulation_steps": str(loop.gradient_accumulation_steps),
        "ss_gradient_checkpointing": str(loop.gradient_checkpointing),
        "ss_lr_scheduler": optim.scheduler.value,
        "ss_lr_warmup_steps": str(optim.warmup_steps),
        "ss_optimizer": facts.optimizer,
        "ss_max_grad_norm": str(optim.max_grad_norm),
        "ss_mixed_precision": loop.precision.kohya_name,
        "ss_seed": str(loop.seed),
        "ss_clip_skip": str(loop.clip_skip),
        "ss_noise_offset": _none(config.loss.noise_offset),
        "ss_min_snr_gamma": _none(config.loss.min_snr_gamma),
        "ss_resolution": str(dataset.max_size) if dataset is not None else "None",
        "ss_num_train_images": _none(facts.num_train_images),
        "ss_prior_loss_weight": str(dataset.prior_loss_weight) if dataset is not None else "None",
        "ss_v_parameterization": str(facts.v_prediction),
    })
    return metadata


def training_recipe(config: TrainConfig, phases: dict[str, int], merge: Optional[dict] = None) -> dict:
    recipe = {
        "operation": "train",
        "route": config.route.route.value,
        "phases": phases,  # steps trained per phase
        "network": jsonable(config.network),
        "optim": jsonable(config.optim),
        "loop": jsonable(config.loop),
        "loss": jsonable(config.loss),
        "datasets": {name: jsonable(ds) for name, ds in (("A", config.dataset_a), ("B", config.dataset_b))
                     if ds is not None},
    }
    if merge is not None:
        recipe["merge"] = merge
    return recipe


def with_training_metadata(lora: LoraFile, config: TrainConfig, facts: RunFacts, phases: dict[str, int],
                           merge: Optional[dict] = None) -> LoraFile:
    """`lora` with its metadata replaced by the training keys and the recipe."""
    metadata = training_metadata(lora, config, facts)
    lora.metadata = with_recipe(metadata, training_recipe(config, phases, merge))
    return lora
