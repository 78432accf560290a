"""The small protocol the trainer speaks to a model host (docs/architecture.md §8).

Nothing in `train/` knows the WebUI or diffusers: a host hands over the modules LoRA may attach to (with their
kohya names, so that what is trained loads everywhere), turns prompts and images into what the denoiser takes,
runs the denoiser, and says which noise schedule it was trained with. Two hosts implement it: diffusers models
(`lib_copylora/hosts`, for the CLI, the demo and the tests) and the WebUI's loaded checkpoint (`lib_copylora/webui`).
"""

from __future__ import annotations

import enum
from typing import Any, Iterator, NamedTuple, Protocol, runtime_checkable

import torch

from ..core.family import Family
from ..core.naming import Component  # noqa: F401  (part of the protocol's vocabulary)


class Prediction(enum.Enum):
    EPSILON = "epsilon"
    V = "v_prediction"


class TargetModule(NamedTuple):
    """A Linear or Conv2d of the host that a LoRA module may wrap, named as kohya names it in files.

    `conv_block` marks modules inside ResNet blocks and down/up-samplers (their convolutions, `conv_shortcut`,
    `time_emb_proj`): kohya's plain LoRA leaves them alone and LoCon-style networks train them. The trainer cannot
    tell a ResNet's 1×1 `conv_shortcut` from an attention block's 1×1 `proj_in` by type, so the host says."""

    kohya_name: str
    module: torch.nn.Module
    component: Component
    conv_block: bool = False


# The transformer blocks (self- and cross-attention, feed-forward) of every UNet our hosts hold: diffusers', ldm's,
# sgm's and Forge's classes all carry this name.
TRANSFORMER_BLOCK = "BasicTransformerBlock"


def transformer_blocks(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(path, module) of every transformer block inside `unet`, in module order: a host's `compile_units()`."""
    return [(path, module) for path, module in unet.named_modules() if type(module).__name__ == TRANSFORMER_BLOCK]


class NoiseSchedule(NamedTuple):
    alphas_cumprod: torch.Tensor  # (num_train_timesteps,), float32, on the host's device
    prediction: Prediction


@runtime_checkable
class TrainingHost(Protocol):
    """What the trainer needs from a model. Hosts never wrap their methods in `torch.no_grad()`: the trainer
    decides where gradients flow (the text encoder gets them only when its LoRA is trained)."""

    family: Family
    device: torch.device
    dtype: torch.dtype  # the dtype the base weights are held in
    # optional: `model_name`, the base checkpoint's file name or path, for ss_sd_model_name (only its name is kept);
    # `model_hashes()`, a core.model_hashes.ModelHashes of that checkpoint, for ss_sd_model_hash and
    # ss_new_sd_model_hash (asked once per run, at its first save)

    def target_modules(self, components: set[Component]) -> list[TargetModule]:
        """Every Linear/Conv2d LoRA may attach to in those components (kohya's default targets:
        attention, feed-forward and projections; resnet and sampler convs are included too and the trainer
        keeps them only for LoCon-style networks)."""
        ...

    def encode_prompts(self, prompts: list[str], clip_skip: int = 1) -> Any:
        """Conditioning for the denoiser (opaque to the trainer; a tensor or a dict for SDXL)."""
        ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] to scaled latents (B, C, H/8, W/8)."""
        ...

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents to images (B, 3, H, W) in [-1, 1], for sample previews."""
        ...

    def predict_noise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Any) -> torch.Tensor:
        """The denoiser's output (eps or v, as `noise_schedule().prediction` says)."""
        ...

    def noise_schedule(self) -> NoiseSchedule:
        ...

    def base_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every parameter and buffer of the base model, for freezing and for proving it comes back bit-exact."""
        ...

    def set_gradient_checkpointing(self, enabled: bool) -> bool:
        """Turn gradient checkpointing on or off; returns False when the host cannot."""
        ...

    def interrupted(self) -> bool:
        """True when the host's user asked to stop (the WebUI's Interrupt button); the trainer also has its own
        stop flag."""
        ...
