"""Training on Forge's model objects, read against lllyasviel/stable-diffusion-webui-forge at commit
dfdcbab685e57677014f05a3309b48cc87383167.

Forge's `shared.sd_model` is no torch module: it is a `ForgeDiffusionEngine` whose `forge_objects` hold one
`ModelPatcher` per part (the UNet's wraps a `KModel` around the UNet, the text encoders sit in a `ModuleDict` under
`clip_l` / `clip_h` / `clip_g`, the VAE is its own). Four things differ from A1111 and decide what happens here:

- LoRAs from prompts are *patches* on clones of those patchers, merged into the weights when a patcher is loaded
  (`LoraLoader.refresh`, which keeps the original weights as backups). Loading the engine's original patchers,
  which carry no patches, therefore puts the checkpoint's own weights back, the way Forge itself does for a prompt
  without LoRAs; the next generation re-merges what its prompt asks for.
- Its memory management moves models between devices; training needs all of a part on its device, so the parts
  are loaded through it, and a part it could only load partly (CPU swap, too little VRAM) is refused.
- It loads checkpoints under `torch.inference_mode()`, so every weight is an inference tensor, which autograd
  refuses to save for backward. For the run each parameter is replaced by an ordinary tensor over the same memory
  (no copy) and the original Parameter objects are put back afterwards: nothing is written either way.
- Its layers are its own classes (`ForgeOperations.Linear` is no nn.Linear; see train/network.py), and its text
  encoders are Hugging Face CLIP models, so q/k/v of OpenCLIP are separate layers and train too.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from ..core.family import Family
from ..core.model_hashes import ModelHashes
from ..train.errors import TrainingError
from ..train.host import Component, NoiseSchedule, Prediction, TargetModule, transformer_blocks
from ..train.network import is_linear_like
from . import compat, patching
from .forge_layers import FLOAT_STORAGE, text_encoders, text_kohya_name, unet_kohya_name
from .model_state import BlockForwards, OffloadingRefused, model_tensors

TEXT_LAYER_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
ATTENTION_BLOCKS = ("SpatialTransformer",)
CONV_BLOCKS = ("ResBlock", "Downsample", "Upsample")
TEXT_ENGINES = ("text_processing_engine", "text_processing_engine_l", "text_processing_engine_g")
OWNER = "Forge training weights"


def unet_dtype(sd_model) -> torch.dtype:
    return sd_model.forge_objects.unet.model.computation_dtype


def loaded_forge_model(lock: Optional[AbstractContextManager] = None):
    """The checkpoint the user selected, loaded. Forge loads it at the first generation after a start or a switch;
    training and the model hash load it the same way (under `lock` when the caller does not hold the queue's)."""
    from modules import sd_models

    data = sd_models.model_data
    if data.sd_model is not None and data.forge_hash == str(data.forge_loading_parameters):
        return data.sd_model
    with lock if lock is not None else nullcontext():
        return sd_models.forge_model_reload()[0]


def selected_forge_model():
    """As `loaded_forge_model` (the caller holds the queue's lock), or None when Forge has no checkpoint to load
    (its models folder is empty), where Forge's own reload would raise a bare ValueError."""
    from modules import sd_models

    if sd_models.model_data.forge_loading_parameters.get("checkpoint_info") is None:
        return None
    return loaded_forge_model()


def refuse_unsupported_forge(sd_model) -> Family:
    family = compat.model_family(sd_model)  # SD3, Flux, ...: UnsupportedModel, one line
    if getattr(sd_model, "is_inpaint", False):
        raise TrainingError("this is an inpainting model; load the ordinary model of its family to train a LoRA")
    storage = sd_model.forge_objects.unet.model.storage_dtype
    if storage not in FLOAT_STORAGE:
        raise TrainingError(f"the model is stored as {storage} (quantised); choose an unquantised diffusion "
                            "dtype in Forge's top bar and reload the model to train")
    return family


def _ordinary_alias(tensor: torch.Tensor) -> torch.Tensor:
    """An ordinary tensor over the same memory as an inference tensor: autograd may save it, nothing is copied."""
    alias = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return alias.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.shape, tensor.stride())


@contextmanager
def ordinary_parameters(modules: list[torch.nn.Module]) -> Iterator[int]:
    """Each inference-tensor parameter swapped for a frozen Parameter over the same memory (through the patch
    registry, so a script unload would undo it too); the original Parameter objects go back afterwards, whatever
    happens. Yields how many were swapped."""
    swapped: list[tuple[dict, str]] = []
    try:
        for root in modules:
            for module in root.modules():
                for name, parameter in list(module._parameters.items()):
                    if parameter is not None and parameter.is_inference():
                        alias = torch.nn.Parameter(_ordinary_alias(parameter), requires_grad=False)
                        patching.set_item(module._parameters, name, alias, OWNER)
                        swapped.append((module._parameters, name))
        yield len(swapped)
    finally:
        for parameters, name in reversed(swapped):
            patching.restore_item(parameters, name)


def _load_original_parts(sd_model) -> None:
    """Load the engine's own patchers (no LoRA patches) through Forge's memory management: the checkpoint's
    weights come back and every part sits whole on its device; a part it could load only partly is refused."""
    from backend import memory_management

    original = sd_model.forge_objects_original
    patchers = [original.unet, original.clip.patcher, original.vae.patcher]
    with torch.inference_mode():  # as in Forge's own generation: moving inference tensors needs it
        memory_management.load_models_gpu(patchers)
    partly = [loaded.model.model.__class__.__name__ for loaded in memory_management.current_loaded_models
              if any(loaded.model is p for p in patchers) and loaded.model_accelerated]
    if partly:
        raise OffloadingRefused(
            f"CopyLoRA cannot train while Forge keeps parts of the model in CPU memory ({', '.join(partly)}: not "
            "enough GPU memory for all of it); free GPU memory (smaller GPU weights setting, other models "
            "unloaded) or train with the command line (python -m lib_copylora train ...) and load the result here")


def _attention(attention: torch.nn.Module, x: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
    """A Forge CrossAttention's computation through its own projections, with torch's attention kernel: Forge's
    kernels (sub-quadratic, split) are written for inference."""
    context = x if context is None else context
    heads, width = attention.heads, attention.dim_head
    q, k, v = (t.reshape(t.shape[0], -1, heads, width).transpose(1, 2)
               for t in (attention.to_q(x), attention.to_k(context), attention.to_v(context)))
    out = F.scaled_dot_product_attention(q, k, v)
    return attention.to_out(out.transpose(1, 2).reshape(x.shape[0], -1, heads * width))


def _transformer_block_forward(block: torch.nn.Module, x: torch.Tensor, context=None, transformer_options=None):
    """Forge's BasicTransformerBlock adds each attention's output into `x` in place, which autograd cannot undo
    for the layer norms that read `x`: the same sums out of place. A training run installs no attention patches,
    so the block's patch hooks have nothing to call."""
    if block.ff_in:
        x = block.ff_in(block.norm_in(x)) + (x if block.is_res else 0)
    x = x + _attention(block.attn1, block.norm1(x), context if block.disable_self_attn else None)
    x = x + _attention(block.attn2, block.norm2(x), context)
    out = block.ff(block.norm3(x))
    return out + x if block.is_res else out


class ForgeBlockForwards(BlockForwards):
    """Forge's UNet blocks during training: ResBlocks run their own `_forward`; transformer blocks run the
    out-of-place version above."""

    def trainable_forward(self, block: torch.nn.Module):
        if type(block).__name__ == "BasicTransformerBlock":
            if block.attn2 is None:
                raise TrainingError("this UNet has a transformer block without cross-attention; CopyLoRA trains "
                                    "SD1, SD2 and SDXL UNets")
            return functools.partial(_transformer_block_forward, block)
        return block._forward


@contextmanager
def prepared_forge_model(sd_model) -> Iterator[BlockForwards]:
    """Refuse what cannot train, load the checkpoint's own weights whole, make its weights usable by autograd and
    its UNet blocks trainable; afterwards everything goes back as it was."""
    refuse_unsupported_forge(sd_model)
    _load_original_parts(sd_model)
    original = sd_model.forge_objects_original
    forwards = ForgeBlockForwards(original.unet.model.diffusion_model)
    # all three parts: the trainer also sets and restores `requires_grad` on every base weight, which Forge's
    # inference tensors refuse outside inference mode
    with ordinary_parameters([original.unet.model, original.clip.cond_stage_model, original.vae.first_stage_model]):
        try:
            forwards.set(checkpointing=False)
            yield forwards
        finally:
            forwards.restore()


def _layer_targets(root: torch.nn.Module, block_types: tuple[str, ...]) -> Iterator[tuple[str, torch.nn.Module]]:
    names = {id(m): n for n, m in root.named_modules()}
    for block in root.modules():
        if type(block).__name__ in block_types:
            for module in block.modules():
                if is_linear_like(module) or isinstance(module, torch.nn.Conv2d):
                    yield names[id(module)], module


class ForgeHost:
    """Forge's loaded SD1/SD2/SDXL model as a training host. Build it inside `prepared_forge_model`."""

    def __init__(self, sd_model, forwards: BlockForwards, interrupted: Callable[[], bool]):
        self.sd_model = sd_model
        self.family = refuse_unsupported_forge(sd_model)
        self.objects = sd_model.forge_objects_original
        self.kmodel = self.objects.unet.model
        self.device = torch.device(self.objects.unet.load_device)
        self.dtype = self.kmodel.computation_dtype
        self.notes: list[str] = []
        self.model_name = compat.checkpoint_file(sd_model)  # ss_sd_model_name
        self._forwards = forwards
        self._interrupted = interrupted

    def model_hashes(self) -> ModelHashes:
        return compat.checkpoint_hashes(self.sd_model)  # ss_sd_model_hash, ss_new_sd_model_hash

    def target_modules(self, components: set[Component]) -> list[TargetModule]:
        targets: list[TargetModule] = []
        if Component.TEXT_ENCODER in components:
            for encoder in text_encoders(self.objects, self.family):
                layers = encoder.transformer.text_model.encoder.layers
                for path, module in layers.named_modules():
                    if is_linear_like(module) and path.rsplit(".", 1)[-1] in TEXT_LAYER_NAMES:
                        name = text_kohya_name(encoder.prefix, f"text_model.encoder.layers.{path}")
                        targets.append(TargetModule(name, module, Component.TEXT_ENCODER))
        if Component.UNET in components:
            unet = self.kmodel.diffusion_model
            for block_types, conv_block in ((ATTENTION_BLOCKS, False), (CONV_BLOCKS, True)):
                for path, module in _layer_targets(unet, block_types):
                    kohya = unet_kohya_name(path, self.family)
                    if kohya is not None:
                        targets.append(TargetModule(kohya, module, Component.UNET, conv_block))
        return targets

    @contextmanager
    def _clip_skip(self, clip_skip: int) -> Iterator[list]:
        engines = [getattr(self.sd_model, n) for n in TEXT_ENGINES if hasattr(self.sd_model, n)]
        before = [engine.clip_skip for engine in engines]
        try:
            for engine in engines:
                engine.clip_skip = clip_skip
            yield engines
        finally:
            for engine, value in zip(engines, before):
                engine.clip_skip = value

    def encode_prompts(self, prompts: list[str], clip_skip: int = 1) -> Any:
        """Forge's own text path (emphasis, long prompts, embeddings), called outside its inference mode."""
        with self._clip_skip(clip_skip):
            if self.family is not Family.SDXL:
                return self.sd_model.text_processing_engine(list(prompts))
            cond_l = self.sd_model.text_processing_engine_l(list(prompts))
            cond_g, pooled = self.sd_model.text_processing_engine_g(list(prompts))
            return {"crossattn": torch.cat([cond_l, cond_g], dim=2), "pooled": pooled}

    def _vae(self) -> torch.nn.Module:
        return self.objects.vae.first_stage_model

    def _for_vae(self, x: torch.Tensor) -> torch.Tensor:
        """`x` on the device and in the dtype Forge holds its VAE in."""
        return x.to(device=self.objects.vae.patcher.load_device, dtype=self.objects.vae.vae_dtype)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """The latent distribution's mean, scaled (Forge's own encode samples from it)."""
        vae = self._vae()
        moments = vae.encoder(self._for_vae(images))
        if vae.quant_conv is not None:
            moments = vae.quant_conv(moments)
        return vae.process_in(moments.chunk(2, dim=1)[0]).to(self.device).float()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's own decode, as `encode_images` encodes: Forge's `decode_first_stage` asks its memory manager
        for room first, which on a small card may unload the UNet being trained (loaded whole when training
        began, as the VAE was)."""
        vae = self._vae()
        with torch.no_grad():
            images = vae.decode(self._for_vae(vae.process_out(latents.float())))
        return images.to(self.device).float().clamp(-1, 1)

    def _sdxl_vector(self, pooled: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Pooled text, then Forge's size embeddings (original, crop, target); buckets crop centrally from an image
        scaled to cover them, so original = target = the bucket's size and the crop is (0, 0)."""
        height, width = latents.shape[-2] * 8, latents.shape[-1] * 8
        sizes = [self.sd_model.embedder(torch.tensor([float(v)])) for v in (height, width, 0, 0, height, width)]
        flat = torch.flatten(torch.cat(sizes)).unsqueeze(0).repeat(pooled.shape[0], 1).to(pooled)
        return torch.cat([pooled, flat], dim=1)

    def predict_noise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Any) -> torch.Tensor:
        """The UNet's own output (eps or v) at integer timesteps; KModel.apply_model would wrap it for k-diffusion
        samplers (sigmas in, denoised out)."""
        x = noisy_latents.to(self.dtype)
        t = timesteps.to(x.device).float()
        if self.family is not Family.SDXL:
            return self.kmodel.diffusion_model(x, t, context=cond.to(self.dtype), transformer_options={})
        return self.kmodel.diffusion_model(x, t, context=cond["crossattn"].to(self.dtype),
                                           y=self._sdxl_vector(cond["pooled"], x).to(self.dtype),
                                           transformer_options={})

    def noise_schedule(self) -> NoiseSchedule:
        """The schedule the model was trained with: Forge keeps it as `alphas_cumprod` (settings such as zero
        terminal SNR change only its sigmas)."""
        predictor = self.kmodel.predictor
        prediction = Prediction.V if predictor.prediction_type == "v_prediction" else Prediction.EPSILON
        return NoiseSchedule(predictor.alphas_cumprod.detach().clone().to(device=self.device, dtype=torch.float32),
                             prediction)

    def base_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from model_tensors(self.sd_model)

    def set_gradient_checkpointing(self, enabled: bool) -> bool:
        self._forwards.set(checkpointing=enabled)
        return bool(self._forwards.blocks)

    def compile_units(self) -> list[tuple[str, torch.nn.Module]]:
        """The UNet's transformer blocks, each compiled with the training forward `BlockForwards` gave it."""
        return transformer_blocks(self.denoiser())

    def denoiser(self) -> torch.nn.Module:
        return self.kmodel.diffusion_model

    def interrupted(self) -> bool:
        return self._interrupted()
