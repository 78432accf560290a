"""The metadata a trained LoRA is saved with: kohya's `ss_*` training keys, plus our recipe under `copylora`.

Names and formats follow sd-scripts' train_network.py: every value a string, `None` where a setting is off,
`ss_training_started_at` a unix timestamp, `ss_mixed_precision` "no"/"fp16"/"bf16", `ss_optimizer` the class's
`module.Name`. The network keys (`ss_network_module/_dim/_alpha/_args`) describe the saved layers themselves
(core.metadata), so a difference merge reports its merged ranks.

The image set is described as kohya's trainer describes a run from a folder of `N_name` sub-folders (its
`--train_data_dir` path, the layout our sets have): flat keys (`ss_flip_aug`, `ss_enable_bucket`, ...) and the JSON
values `ss_dataset_dirs`, `ss_reg_dataset_dirs`, `ss_tag_frequency` and `ss_bucket_info`, which the WebUI shows as the
card's dataset size, training tags and resolutions. Folder names only, never a path of the machine.

A file describes the one set it was trained on: set A for a part `_A`; set B for a part `_B` and for the result of
either two-set route. kohya's metadata knows one set per run. The copier's result is B, trained on B's images with A
applied. The difference result B − A adds what B's images have beyond A's, so its tags are B's; A is subtracted, and
its tags shown as the LoRA's would suggest prompting for what it removes. The recipe under `copylora` names both sets.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from ..core.lorafile import LoraFile
from ..core.metadata import standard_metadata, with_recipe
from ..core.model_hashes import ModelHashes
from .config import TrainConfig
from .data_config import DatasetConfig

if TYPE_CHECKING:
    from .dataset import ImageDataset

FolderCounts = dict[str, dict[str, int]]  # {folder name: {...: count}}


class DatasetFacts(NamedTuple):
    """What kohya records of the scanned image set (train_util's dataset attributes), folder names only."""

    num_reg_images: int  # regularisation images × repeats
    dataset_dirs: FolderCounts  # {folder name: {"n_repeats": r, "img_count": n}} of the training folders
    reg_dataset_dirs: FolderCounts  # the same for the regularisation folders
    tag_frequency: FolderCounts  # {folder name: {tag: count}}, regularisation folders included
    bucket_info: Optional[dict]  # {"buckets": {i: {"resolution": [w, h], "count": n}}, "mean_img_ar_error": e}


class RunFacts(NamedTuple):
    """What is known only once training ran."""

    started_at: float
    finished_at: float
    steps: int
    epochs: int
    optimizer: str
    num_train_images: Optional[int]
    v_prediction: bool = False  # the host's denoiser predicts v (SD2-768-v): kohya's ss_v_parameterization
    session_id: Optional[int] = None  # one random number per run, shared by every file it writes
    dataset: Optional[DatasetConfig] = None  # the settings of the set this file was trained on
    data: Optional[DatasetFacts] = None  # that set as scanned (None for sources that are not an ImageDataset)
    batches_per_epoch: Optional[int] = None  # batches each process takes per epoch
    world_size: int = 1  # data-parallel processes
    sd_model_name: Optional[str] = None  # the base model's file name (never its path), when the host says it
    model_hashes: ModelHashes = ModelHashes()  # the base checkpoint's hashes, those the host knows


# Keys kohya's train_network.py writes in every file, for features CopyLoRA does not have: their value when off
# (a flag's False, an unset option's None, a default that only matters when its feature is on).
_KOHYA_OFF = {
    "ss_num_validation_images": "0",
    "ss_network_dropout": "None",
    "ss_full_fp16": "False",
    "ss_max_token_length": "None",  # 75 tokens
    "ss_lowram": "False",
    "ss_multires_noise_iterations": "None",
    "ss_multires_noise_discount": "0.3",
    "ss_adaptive_noise_scale": "None",
    "ss_zero_terminal_snr": "False",
    "ss_caption_dropout_every_n_epochs": "0",
    "ss_caption_tag_dropout_rate": "0.0",
    "ss_face_crop_aug_range": "None",
    "ss_scale_weight_norms": "None",
    "ss_ip_noise_gamma": "None",
    "ss_debiased_estimation": "False",
    "ss_noise_offset_random_strength": "False",
    "ss_ip_noise_gamma_random_strength": "False",
    "ss_loss_type": "l2",  # our loss: the mean squared error
    "ss_huber_schedule": "snr",
    "ss_huber_scale": "1.0",
    "ss_huber_c": "0.1",
    "ss_fp8_base": "False",
    "ss_fp8_base_unet": "False",
    "ss_validation_seed": "None",
    "ss_validation_split": "0.0",
    "ss_max_validation_steps": "None",
    "ss_validate_every_n_epochs": "None",
    "ss_validate_every_n_steps": "None",
    # images are resized with PIL's Lanczos filter, as kohya's scripts resize with "lanczos"
    "ss_resize_interpolation": "lanczos",
}


def _none(value) -> str:
    return "None" if value in (None, 0, 0.0) else str(value)


def jsonable(value: Any) -> Any:
    """Dataclasses, enums, paths and tuples as plain JSON values (for the recipe)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        text = value.name if value.is_absolute() else str(value)  # no machine paths in shared files
        # a name whose bytes are not UTF-8 (Python holds them as lone surrogates) could not be written into the
        # file's UTF-8 header: such characters are spelt out as \udcff
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def training_metadata(lora: LoraFile, config: TrainConfig, facts: RunFacts) -> dict[str, str]:
    optim, loop, dataset = config.optim, config.loop, facts.dataset
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
    metadata.update(_KOHYA_OFF)
    metadata["ss_training_comment"] = str(config.output.training_comment)  # "None" without one, as kohya
    if facts.session_id is not None:
        metadata["ss_session_id"] = str(facts.session_id)
    if facts.batches_per_epoch is not None:
        metadata["ss_num_batches_per_epoch"] = str(facts.batches_per_epoch)
    if dataset is not None:
        metadata.update(_dataset_settings(dataset, loop.gradient_accumulation_steps * facts.world_size))
    if facts.data is not None:
        metadata.update(_dataset_contents(facts.data))
    if facts.sd_model_name:
        metadata["ss_sd_model_name"] = facts.sd_model_name
    metadata.update(facts.model_hashes.metadata())
    return metadata


def _dataset_settings(dataset: DatasetConfig, batches_per_step: int) -> dict[str, str]:
    """The set's settings as kohya's trainer writes them for a folder-of-folders run."""
    bucketed = dataset.enable_bucket
    return {
        "ss_total_batch_size": str(dataset.batch_size * batches_per_step),
        "ss_cache_latents": str(dataset.cache_latents),
        "ss_caption_dropout_rate": str(float(dataset.caption_dropout_rate)),
        "ss_color_aug": "False",
        "ss_flip_aug": str(dataset.flip_aug),
        "ss_random_crop": "False",  # images are cropped centrally
        "ss_shuffle_caption": str(dataset.shuffle_caption),
        "ss_keep_tokens": str(dataset.keep_tokens),
        "ss_enable_bucket": str(bucketed),
        # kohya's dataset leaves these unset without bucketing
        "ss_bucket_no_upscale": str(bucketed and dataset.bucket_no_upscale),
        "ss_min_bucket_reso": str(dataset.min_bucket_reso) if bucketed else "None",
        "ss_max_bucket_reso": str(dataset.max_bucket_reso) if bucketed else "None",
    }


def _dataset_contents(data: DatasetFacts) -> dict[str, str]:
    # json.dumps as kohya calls it: ASCII with escapes, so any folder name or tag stays one valid JSON string
    return {
        "ss_num_reg_images": str(data.num_reg_images),
        "ss_dataset_dirs": json.dumps(data.dataset_dirs),
        "ss_reg_dataset_dirs": json.dumps(data.reg_dataset_dirs),
        "ss_tag_frequency": json.dumps(data.tag_frequency),
        "ss_bucket_info": json.dumps(data.bucket_info),
    }


def count_tags(counts: dict[str, int], caption: str) -> None:
    """Add a caption's tags to `counts` as kohya's set_tag_frequency does: split on commas, stripped, lower-cased,
    empty ones skipped."""
    for tag in caption.split(","):
        tag = tag.strip().lower()
        if tag:
            counts[tag] = counts.get(tag, 0) + 1


def _unique_key(name: str, taken: dict) -> str:
    """kohya's name for a folder name met again: "name (2)", "name (3)", ..."""
    key, i = name, 2
    while key in taken:
        key, i = f"{name} ({i})", i + 1
    return key


def dataset_facts(dataset: "ImageDataset") -> DatasetFacts:
    """kohya's per-set metadata of a scanned set. Tags are counted over the captions training starts from (a caption
    file's first line, else the folder name or the default caption, as configured), once per image: an uncaptioned
    folder has an empty count, as in kohya's files. Regularisation folders count their tags too, as kohya's do."""
    summary = dataset.summary()
    dirs: dict[bool, FolderCounts] = {False: {}, True: {}}
    for folder in summary.folders:
        key = _unique_key(folder.path.name, dirs[folder.is_reg])
        dirs[folder.is_reg][key] = {"n_repeats": folder.repeats, "img_count": folder.images}
    tags: FolderCounts = {}
    for record in dataset.records:
        # folders of one name share a count, as in kohya (its counts are keyed by the folder's name)
        count_tags(tags.setdefault(record.path.parent.name, {}), dataset.base_caption(record))
    reg_samples = sum(r.repeats for r in dataset.records if r.is_reg)
    return DatasetFacts(reg_samples, dirs[False], dirs[True], tags, _bucket_info(dataset, summary.buckets))


def _bucket_info(dataset: "ImageDataset", counts: dict) -> Optional[dict]:
    """kohya's bucket_info: the buckets in sorted order with their samples per epoch (repeats and regularisation
    included), and the mean |bucket aspect − image aspect| over the images an epoch uses; None without bucketing."""
    if not dataset.config.enable_bucket:
        return None
    buckets = {i: {"resolution": list(size), "count": counts[size]} for i, size in enumerate(sorted(counts))}
    errors = [abs(r.bucket[0] / r.bucket[1] - r.size[0] / r.size[1]) for r in dataset.used_records()]
    return {"buckets": buckets, "mean_img_ar_error": math.fsum(errors) / len(errors) if errors else 0}


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
