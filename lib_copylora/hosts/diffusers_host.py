"""`DiffusersHost`: the training host protocol (train/host.py) over diffusers and transformers components.

It serves the CLI, the demo, the bench and the tests. Module names follow kohya (docs/architecture.md §4): SD1/SD2
UNet modules keep their diffusers paths (`lora_unet_down_blocks_0_attentions_0_proj_in`), SDXL UNet modules take the
compvis names kohya's SDXL trainer writes (`lora_unet_input_blocks_4_1_...`), text encoders `lora_te_` / `lora_te1_` /
`lora_te2_` + `text_model_encoder_layers_...`. So a LoRA trained here loads in the WebUI and in kohya's tools.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ..core.family import Family
from ..core.model_hashes import ModelHashes, file_hashes
from ..core.naming import kohya_name, kohya_unet_name
from ..train.errors import TrainingError
from ..train.host import Component, NoiseSchedule, Prediction, TargetModule, transformer_blocks

# kohya's targets: every Linear/Conv2d inside these blocks. The first set is plain LoRA's; the second is added by
# LoCon-style networks (kohya's conv_dim).
UNET_ATTENTION_BLOCKS = ("Transformer2DModel",)
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")


def _clip_core(text_encoder: torch.nn.Module) -> torch.nn.Module:
    """The CLIP transformer itself: transformers 4 wraps it as `.text_model`, 5 does so only with a projection."""
    return getattr(text_encoder, "text_model", text_encoder)


def _is_target(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))


def _modules_in_blocks(root: torch.nn.Module, block_types: tuple[str, ...]) -> Iterator[tuple[str, torch.nn.Module]]:
    """(path, module) of every Linear/Conv2d inside a block whose class is one of `block_types`."""
    for block_path, block in root.named_modules():
        if type(block).__name__ in block_types:
            for inner_path, module in block.named_modules():
                if inner_path and _is_target(module):
                    yield f"{block_path}.{inner_path}", module


def _set_encoder_checkpointing(encoder, enabled: bool) -> None:
    """Non-reentrant checkpointing for a transformers text encoder. transformers also makes the embeddings'
    output require grad (reentrant checkpointing needs it); non-reentrant does not, and with it a frozen encoder
    would drag every backward pass through itself, so that hook is removed again."""
    enable = getattr(encoder, "activation_checkpointing_enable", None) or encoder.gradient_checkpointing_enable
    disable = getattr(encoder, "activation_checkpointing_disable", None) or encoder.gradient_checkpointing_disable
    if enabled:
        enable({"use_reentrant": False})
    else:
        disable()
    if getattr(encoder, "_require_grads_hook", None) is not None:
        encoder.disable_input_require_grads()
    # transformers checkpoints only in training mode; CLIP has no dropout, so this changes nothing else.
    encoder.train(enabled)


def detect_family(unet, text_encoder, has_second_encoder: bool) -> Family:
    """SDXL has two text encoders and the text-time embedding; SD2's OpenCLIP encoder uses plain GELU (SD1's CLIP
    quick GELU) and a 1024-wide context."""
    if has_second_encoder or getattr(unet.config, "addition_embed_type", None) == "text_time":
        return Family.SDXL
    if getattr(text_encoder.config, "hidden_act", "") == "gelu" or unet.config.cross_attention_dim == 1024:
        return Family.SD2
    return Family.SD1


class DiffusersHost:
    """A Stable Diffusion model (SD1, SD2 or SDXL) held as diffusers components, frozen."""

    def __init__(self, unet, vae, text_encoders: list, tokenizers: list, scheduler_config: dict,
                 family: Optional[Family] = None, prediction: Optional[Prediction] = None):
        self.unet, self.vae = unet, vae
        self.text_encoders, self.tokenizers = list(text_encoders), list(tokenizers)
        self.family = family or detect_family(unet, self.text_encoders[0], len(self.text_encoders) > 1)
        if (self.family is Family.SDXL) != (len(self.text_encoders) == 2):
            raise TrainingError(f"a {self.family.label} model needs {2 if self.family is Family.SDXL else 1} "
                                f"text encoder(s), this one has {len(self.text_encoders)}")
        self.prediction = prediction or Prediction(scheduler_config.get("prediction_type", "epsilon"))
        self._scheduler_config = dict(scheduler_config)
        self.device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self._stop = threading.Event()
        self.model_name: Optional[str] = None  # set by load(): the model's file or folder name
        self.model_path: Optional[Path] = None  # set by load(): what it loaded, for the checkpoint's hashes
        for model in self._models().values():
            model.requires_grad_(False)
            model.eval()

    # ---- loading -----------------------------------------------------------------------------------------------

    @classmethod
    def from_pipeline(cls, pipe, family: Optional[Family] = None, prediction: Optional[Prediction] = None):
        encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if getattr(pipe, "text_encoder_2", None) else [])
        tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if getattr(pipe, "tokenizer_2", None) else [])
        return cls(pipe.unet, pipe.vae, encoders, tokenizers, dict(pipe.scheduler.config), family, prediction)

    @classmethod
    def load(cls, model: "str | Path", device: "str | torch.device" = "cpu", dtype: torch.dtype = torch.float32,
             config_dir: "str | Path | None" = None, family: Optional[Family] = None,
             prediction: Optional[Prediction] = None) -> "DiffusersHost":
        """A diffusers folder (with model_index.json) or a single-file .safetensors/.ckpt checkpoint.

        Single files need the architecture's config files; nothing is downloaded, so pass `config_dir` (a diffusers
        folder of the same architecture) unless diffusers finds them in its local cache."""
        from .loading import load_pipeline

        pipe = load_pipeline(Path(model), dtype, None if config_dir is None else Path(config_dir))
        host = cls.from_pipeline(pipe, family, prediction)
        host.model_name, host.model_path = Path(model).name, Path(model)
        host.to(device)
        return host

    def model_hashes(self) -> ModelHashes:
        """A single-file checkpoint's hashes (ss_sd_model_hash, ss_new_sd_model_hash), read from the file; a
        model folder has none."""
        return file_hashes(self.model_path) if self.model_path is not None else ModelHashes()

    def to(self, device: "str | torch.device") -> "DiffusersHost":
        for model in self._models().values():
            model.to(device)
        self.device = torch.device(device)
        return self

    def _models(self) -> dict[str, torch.nn.Module]:
        models = {"unet": self.unet, "vae": self.vae}
        names = ["text_encoder"] if len(self.text_encoders) == 1 else ["text_encoder", "text_encoder_2"]
        models.update(zip(names, self.text_encoders))
        return models

    # ---- the protocol ------------------------------------------------------------------------------------------

    def _text_encoder_prefixes(self) -> list[str]:
        return ["lora_te1", "lora_te2"] if self.family is Family.SDXL else ["lora_te"]

    def target_modules(self, components: set[Component]) -> list[TargetModule]:
        targets: list[TargetModule] = []
        if Component.TEXT_ENCODER in components:
            for prefix, encoder in zip(self._text_encoder_prefixes(), self.text_encoders):
                layers = _clip_core(encoder).encoder.layers
                for path, module in _modules_in_blocks(layers, TEXT_ENCODER_BLOCKS):
                    # Paths are named as transformers 4 and kohya name them, whichever version is installed.
                    name = kohya_name(prefix, f"text_model.encoder.layers.{path}")
                    targets.append(TargetModule(name, module, Component.TEXT_ENCODER))
        if Component.UNET in components:
            for blocks, conv_block in ((UNET_ATTENTION_BLOCKS, False), (UNET_CONV_BLOCKS, True)):
                for path, module in _modules_in_blocks(self.unet, blocks):
                    name = kohya_unet_name(path, self.family, style="diffusers")
                    targets.append(TargetModule(name, module, Component.UNET, conv_block))
        return targets

    def _token_ids(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    def encode_prompts(self, prompts: list[str], clip_skip: int = 1) -> Any:
        """SD1/SD2: the hidden states `clip_skip` layers from the end, through the final layer norm (as kohya and
        the WebUI do). SDXL: both encoders' states one layer deeper (clip_skip 1 = the penultimate layer SDXL was
        trained on, no final norm), concatenated, plus the second encoder's projected pooled output."""
        if clip_skip < 1:
            raise TrainingError(f"clip_skip must be >= 1, not {clip_skip}")
        layers = min(encoder.config.num_hidden_layers for encoder in self.text_encoders)
        if clip_skip + (self.family is Family.SDXL) > layers:  # SDXL already starts one layer from the end
            raise TrainingError(f"clip_skip {clip_skip} is more than this model's text encoder has layers ({layers})")
        if self.family is not Family.SDXL:
            encoder = self.text_encoders[0]
            out = encoder(self._token_ids(self.tokenizers[0], prompts), output_hidden_states=True)
            if clip_skip == 1:
                return out.last_hidden_state
            return _clip_core(encoder).final_layer_norm(out.hidden_states[-clip_skip])
        states = []
        pooled = None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            out = encoder(self._token_ids(tokenizer, prompts), output_hidden_states=True)
            states.append(out.hidden_states[-(clip_skip + 1)])
            pooled = getattr(out, "text_embeds", None)
        return {"hidden": torch.cat(states, dim=-1), "pooled": pooled}

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """The latent distribution's mean, scaled: deterministic, so a cached latent is the latent."""
        vae = self.vae
        posterior = vae.encode(images.to(device=self.device, dtype=vae.dtype)).latent_dist
        latents = posterior.mode()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = latents.to(device=self.device, dtype=vae.dtype) / vae.config.scaling_factor + shift
        return vae.decode(latents).sample.clamp(-1, 1)

    def _time_ids(self, latents: torch.Tensor) -> torch.Tensor:
        """SDXL's size conditioning: original size, crop corner, target size. Our buckets crop centrally from an
        image scaled to cover the bucket, so original = target = the bucket's size and the crop is (0, 0)."""
        height, width = latents.shape[-2] * 8, latents.shape[-1] * 8
        ids = torch.tensor([height, width, 0, 0, height, width], device=latents.device, dtype=latents.dtype)
        return ids.repeat(latents.shape[0], 1)

    def predict_noise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Any) -> torch.Tensor:
        x = noisy_latents.to(self.dtype)
        if self.family is not Family.SDXL:
            return self.unet(x, timesteps, encoder_hidden_states=cond.to(self.dtype)).sample
        added = {"text_embeds": cond["pooled"].to(self.dtype), "time_ids": self._time_ids(x)}
        return self.unet(x, timesteps, encoder_hidden_states=cond["hidden"].to(self.dtype),
                         added_cond_kwargs=added).sample

    def noise_schedule(self) -> NoiseSchedule:
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(self._scheduler_config)
        alphas = scheduler.alphas_cumprod.to(device=self.device, dtype=torch.float32)
        return NoiseSchedule(alphas, self.prediction)

    def base_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for prefix, model in self._models().items():
            for name, tensor in model.state_dict(keep_vars=True).items():
                yield f"{prefix}.{name}", tensor

    def set_gradient_checkpointing(self, enabled: bool) -> bool:
        if enabled:
            self.unet.enable_gradient_checkpointing()
        else:
            self.unet.disable_gradient_checkpointing()
        for encoder in self.text_encoders:
            _set_encoder_checkpointing(encoder, enabled)
        return True

    @contextmanager
    def fast_attention(self) -> Iterator[None]:
        """PyTorch's SDPA (flash / memory-efficient kernels) in every UNet attention while training; the
        processors it had are put back afterwards. transformers' CLIP uses SDPA by default already."""
        from diffusers.models.attention_processor import AttnProcessor2_0

        saved = self.unet.attn_processors
        if all(isinstance(p, AttnProcessor2_0) for p in saved.values()):
            yield
            return
        self.unet.set_attn_processor(AttnProcessor2_0())
        try:
            yield
        finally:
            self.unet.set_attn_processor(saved)

    def compile_units(self) -> list[tuple[str, torch.nn.Module]]:
        """The UNet's transformer blocks (self- and cross-attention, feed-forward, with their LoRA hooks)."""
        return transformer_blocks(self.unet)

    def denoiser(self) -> torch.nn.Module:
        """The module `predict_noise` calls, compiled whole by `SpeedConfig.compile=unet`."""
        return self.unet

    def request_stop(self) -> None:
        """Ask the trainer to stop (and save) at its next step; the CLI calls it from its Ctrl-C handler."""
        self._stop.set()

    def interrupted(self) -> bool:
        return self._stop.is_set()
