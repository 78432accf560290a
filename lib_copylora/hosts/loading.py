"""Loading a Stable Diffusion model with diffusers, offline: a diffusers folder, or a single-file checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from ..train.errors import TrainingError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
# A key only SDXL checkpoints (compvis layout) have: the second text encoder's first attention.
_SDXL_MARKER = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"


def _dtype_kwargs(dtype: torch.dtype) -> dict:
    """Newer diffusers take `dtype` and warn about `torch_dtype`; older ones know only `torch_dtype`."""
    from diffusers.utils import deprecation_utils

    new_name = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    return {"dtype": dtype} if new_name else {"torch_dtype": dtype}


def _pipeline_class(class_name: str):
    import diffusers

    if "XL" in class_name:
        return diffusers.StableDiffusionXLPipeline
    return diffusers.StableDiffusionPipeline


def _no_safety_checker(class_name: str) -> dict:
    """Training never runs the SD1/SD2 safety checker; not loading it also avoids a download."""
    return {} if "XL" in class_name else {"safety_checker": None, "requires_safety_checker": False}


def _model_index(folder: Path) -> dict:
    index = folder / "model_index.json"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{index} cannot be read as JSON ({type(exc).__name__}); is {folder} a diffusers "
                            "model folder?") from None
    if not isinstance(data, dict):
        raise TrainingError(f"{index} is not a JSON object; is {folder} a diffusers model folder?")
    return data


def _folder_pipeline(folder: Path, dtype: torch.dtype):
    class_name = str(_model_index(folder).get("_class_name", "StableDiffusionPipeline"))
    for weights in sorted(folder.glob("*/*.safetensors")):  # the components' weights, checked before diffusers
        _check_safetensors(weights, f"model file {weights.parent.name}/")
    kwargs = _no_safety_checker(class_name)
    pipeline = _pipeline_class(class_name)
    return pipeline.from_pretrained(str(folder), local_files_only=True, **_dtype_kwargs(dtype), **kwargs)


def _check_safetensors(path: Path, what: str) -> None:
    """Read and check a .safetensors header with our own reader before the Rust library or diffusers touch the
    file: a truncated or lying header becomes one TrainingError instead of a SafetensorError traceback."""
    from ..core.errors import FormatError
    from ..core.safetensors_io import read_safetensors_metadata

    try:
        read_safetensors_metadata(path)
    except FormatError as exc:
        raise TrainingError(f"{what}{exc}") from None


def _single_file_is_sdxl(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    _check_safetensors(path, "model checkpoint ")  # before the Rust reader, for our message
    try:
        with safe_open(str(path), framework="pt") as handle:
            return any(key.endswith(_SDXL_MARKER) for key in handle.keys())
    except Exception as exc:  # SafetensorError lives in a Rust extension and cannot be named here
        raise TrainingError(f"model checkpoint {path.name} is not a readable safetensors file "
                            f"({(str(exc).splitlines() or [type(exc).__name__])[0]})") from None


def _single_file_pipeline(path: Path, dtype: torch.dtype, config_dir: Optional[Path]):
    if config_dir is not None:
        index = config_dir / "model_index.json"
        if not index.is_file():
            raise TrainingError(f"--model-config {config_dir} is not a diffusers folder (no model_index.json)")
        class_name = str(_model_index(config_dir).get("_class_name", ""))
    else:
        class_name = "StableDiffusionXLPipeline" if _single_file_is_sdxl(path) else "StableDiffusionPipeline"
    if path.suffix.lower() == ".safetensors":
        _check_safetensors(path, "model checkpoint ")
    kwargs = {"config": str(config_dir)} if config_dir is not None else {}
    kwargs.update(_no_safety_checker(class_name))
    try:
        pipeline = _pipeline_class(class_name)
        return pipeline.from_single_file(str(path), local_files_only=True, **_dtype_kwargs(dtype), **kwargs)
    except Exception as exc:  # diffusers raises many kinds here; all mean "cannot read it", said once below
        reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        if config_dir is not None:
            raise TrainingError(f"diffusers could not read {path.name} with the configs of {config_dir} "
                                f"({reason}); is it a {class_name.replace('Pipeline', '')} checkpoint?") from exc
        raise TrainingError(
            f"diffusers could not read {path.name} offline ({reason}). A single-file checkpoint needs its "
            "architecture's config files, which are never downloaded here: pass --model-config DIR (a diffusers "
            "folder of the same architecture) or convert the checkpoint to a diffusers folder and pass that "
            "folder as --model") from exc


def load_pipeline(model: Path, dtype: torch.dtype = torch.float32, config_dir: Optional[Path] = None):
    """A diffusers pipeline from a folder with model_index.json or from a single checkpoint file."""
    if model.is_dir():
        if not (model / "model_index.json").is_file():
            raise TrainingError(f"{model} is not a diffusers model folder (no model_index.json)")
        return _folder_pipeline(model, dtype)
    if model.is_file() and model.suffix.lower() in SINGLE_FILE_SUFFIXES:
        return _single_file_pipeline(model, dtype, config_dir)
    if not model.exists():
        raise TrainingError(f"model {model} does not exist")
    raise TrainingError(f"{model} is neither a diffusers folder nor a {'/'.join(SINGLE_FILE_SUFFIXES)} checkpoint")
