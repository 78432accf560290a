"""`WebUIHost`: the training host protocol (train/host.py) over the WebUI's loaded model, `shared.sd_model`.

SD1/SD2 are ldm `LatentDiffusion`, SDXL is sgm `DiffusionEngine`, as WebUI v1.10 loads them. The host uses the
model in place (no copy, nothing written to it) and encodes prompts through the WebUI's own text path, so captions
mean what the same words mean in a prompt (emphasis, long prompts, embeddings). Module names come from the names
the built-in Lora gives the model's layers (`network_layer_mapping`), turned into kohya names by core/naming.py,
so the result loads with `<lora:name:1>` and in kohya's tools alike.

Text encoders: SD1 CLIP trains its attention (q, k, v, out) and MLP layers. OpenCLIP (SD2, SDXL's second encoder)
fuses q/k/v into one `MultiheadAttention` that also reads its `out_proj` weight directly, so no forward hook sees
those layers: only the MLP layers (`mlp_fc1`/`mlp_fc2` in kohya's names) are trained there, and `notes` says so.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from ..core.family import Family
from ..core.model_hashes import ModelHashes
from ..core.naming import kohya_name_from_webui_layer
from ..train.host import Component, NoiseSchedule, Prediction, TargetModule, transformer_blocks
from . import compat
from . import patching
from .attention import training_attention
from .model_state import BlockForwards

UNET_ROOT = "diffusion_model"
CLIP_SKIP_OPTION = "CLIP_stop_at_last_layers"
ATTENTION_BLOCKS = ("SpatialTransformer",)  # kohya's plain-LoRA targets live inside these
CONV_BLOCKS = ("ResBlock", "Downsample", "Upsample")  # added by LoCon-style networks
SIZE_KEYS = ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple", "aesthetic_score")
OPENCLIP_NOTE = ("OpenCLIP text encoder: its attention (q, k, v, out) is one fused layer the WebUI runs without "
                 "calling its sub-layers, so only its MLP layers are trained")


def webui_layer_names(sd_model) -> dict[int, str]:
    """id(module) → the built-in Lora's name for it: its own mapping when it made one, else the same rule."""
    mapping = compat.layer_mapping(sd_model)
    if mapping is None:
        mapping = {}
        if compat.model_family(sd_model) is Family.SDXL:
            for i, embedder in enumerate(sd_model.conditioner.embedders):
                if hasattr(embedder, "wrapped"):
                    mapping.update({f"{i}_{n.replace('.', '_')}": m for n, m in embedder.wrapped.named_modules()})
        else:
            cond = getattr(sd_model.cond_stage_model, "wrapped", sd_model.cond_stage_model)
            mapping.update({n.replace(".", "_"): m for n, m in cond.named_modules()})
        mapping.update({n.replace(".", "_"): m for n, m in sd_model.model.named_modules()})
    return {id(module): name for name, module in mapping.items()}


def _inner_targets(root: torch.nn.Module, block_types: tuple[str, ...]) -> Iterator[torch.nn.Module]:
    for block in root.modules():
        if type(block).__name__ in block_types:
            for module in block.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                    yield module


class WebUIHost:
    """The loaded WebUI model as a training host. Build it inside `model_state.prepared_model`."""

    def __init__(self, sd_model, device: torch.device, forwards: BlockForwards, interrupted: Callable[[], bool],
                 clip_skip_setting: Callable[[int], Any]):
        self.sd_model = sd_model
        self.family = compat.model_family(sd_model)
        self.device = torch.device(device)
        self.dtype = next(sd_model.model.diffusion_model.parameters()).dtype
        self.notes: list[str] = []
        self.model_name = compat.checkpoint_file(sd_model)  # ss_sd_model_name
        self._forwards = forwards
        self._interrupted = interrupted
        self._clip_skip_setting = clip_skip_setting  # a context manager factory: the WebUI reads its option

    def model_hashes(self) -> ModelHashes:
        return compat.checkpoint_hashes(self.sd_model)  # ss_sd_model_hash, ss_new_sd_model_hash

    # ---- modules -----------------------------------------------------------------------------------------------

    def _text_encoders(self) -> list[torch.nn.Module]:
        if self.family is Family.SDXL:
            return [e.wrapped for e in self.sd_model.conditioner.embedders if hasattr(e, "wrapped")]
        cond = self.sd_model.cond_stage_model
        return [getattr(cond, "wrapped", cond)]

    def target_modules(self, components: set[Component]) -> list[TargetModule]:
        names = webui_layer_names(self.sd_model)
        targets: list[TargetModule] = []
        if Component.TEXT_ENCODER in components:
            targets += self._text_encoder_targets(names)
        if Component.UNET in components:
            unet = self.sd_model.model.diffusion_model
            for block_types, conv_block in ((ATTENTION_BLOCKS, False), (CONV_BLOCKS, True)):
                for module in _inner_targets(unet, block_types):
                    kohya = kohya_name_from_webui_layer(names[id(module)], self.family)
                    if kohya is not None:
                        targets.append(TargetModule(kohya, module, Component.UNET, conv_block))
        return targets

    def _text_encoder_targets(self, names: dict[int, str]) -> list[TargetModule]:
        targets, skipped = [], 0
        for encoder in self._text_encoders():
            for module in encoder.modules():
                if not isinstance(module, torch.nn.Linear) or id(module) not in names:
                    continue
                layer = names[id(module)]
                kohya = kohya_name_from_webui_layer(layer, self.family)
                if kohya is None or "_encoder_layers_" not in kohya:
                    continue
                if "resblocks" in layer and layer.endswith("_attn_out_proj"):
                    skipped += 1
                    continue
                targets.append(TargetModule(kohya, module, Component.TEXT_ENCODER))
        if skipped and OPENCLIP_NOTE not in self.notes:
            self.notes.append(OPENCLIP_NOTE)
        return targets

    # ---- encoding ----------------------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str], clip_skip: int = 1) -> Any:
        """SD1/SD2: the WebUI's conditioning tensor. SDXL: both encoders' states and the pooled output; the size
        part of SDXL's vector depends on the latents, so `predict_noise` adds it."""
        with self._clip_skip_setting(clip_skip):
            if self.family is not Family.SDXL:
                return self.sd_model.cond_stage_model(list(prompts))
            states, pooled = [], None
            for embedder in self.sd_model.conditioner.embedders:
                if getattr(embedder, "input_key", None) != "txt":
                    continue
                out = embedder(list(prompts))
                for tensor in out if isinstance(out, (tuple, list)) else (out,):
                    if tensor.dim() == 3:
                        states.append(tensor)
                    else:
                        pooled = tensor
            return {"crossattn": torch.cat(states, dim=2), "pooled": pooled}

    def _vae_dtype(self) -> torch.dtype:
        return next(self.sd_model.first_stage_model.parameters()).dtype

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """The latent distribution's mean, scaled (deterministic, so a cached latent is the latent)."""
        vae = self.sd_model.first_stage_model
        x = images.to(device=self.device, dtype=self._vae_dtype())
        mean = vae.quant_conv(vae.encoder(x)).chunk(2, dim=1)[0]
        return (mean * float(self.sd_model.scale_factor)).float()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            images = self.sd_model.decode_first_stage(latents.to(device=self.device, dtype=self._vae_dtype()))
        return images.float().clamp(-1, 1)

    def _sdxl_vector(self, pooled: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """SDXL's vector: pooled text, then each size embedder in the conditioner's order. Buckets crop centrally
        from an image scaled to cover them, so original = target = the bucket's size and the crop is (0, 0)."""
        height, width = latents.shape[-2] * 8, latents.shape[-1] * 8
        values = {"original_size_as_tuple": (height, width), "crop_coords_top_left": (0, 0),
                  "target_size_as_tuple": (height, width), "aesthetic_score": (6.0,)}
        parts = [pooled]
        for embedder in self.sd_model.conditioner.embedders:
            key = getattr(embedder, "input_key", None)
            if key in SIZE_KEYS:
                size = torch.tensor(values[key], device=latents.device, dtype=torch.float32)
                parts.append(embedder(size.repeat(latents.shape[0], 1)).to(pooled.dtype))
        return torch.cat(parts, dim=1)

    def predict_noise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Any) -> torch.Tensor:
        x = noisy_latents.to(self.dtype)
        if self.family is not Family.SDXL:
            return self.sd_model.apply_model(x, timesteps, cond)
        batch = {"crossattn": cond["crossattn"], "vector": self._sdxl_vector(cond["pooled"], x)}
        return self.sd_model.apply_model(x, timesteps, batch)

    # ---- the rest of the protocol ------------------------------------------------------------------------------

    def noise_schedule(self) -> NoiseSchedule:
        """The schedule the model was trained with (not a setting's override such as zero terminal SNR)."""
        model = self.sd_model
        abar = compat.training_alphas_cumprod(model)
        prediction = Prediction.V if getattr(model, "parameterization", "eps") == "v" else Prediction.EPSILON
        return NoiseSchedule(abar.detach().to(device=self.device, dtype=torch.float32), prediction)

    def base_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.sd_model.state_dict(keep_vars=True).items()

    def set_gradient_checkpointing(self, enabled: bool) -> bool:
        self._forwards.set(checkpointing=enabled)
        return bool(self._forwards.blocks)

    def compile_units(self) -> list[tuple[str, torch.nn.Module]]:
        """The UNet's transformer blocks, each compiled with the training forward `BlockForwards` gave it."""
        return transformer_blocks(self.denoiser())

    def denoiser(self) -> torch.nn.Module:
        return self.sd_model.model.diffusion_model

    def fast_attention(self):
        """PyTorch SDPA while training where the WebUI's kernel in effect is a sliced one (attention.py)."""
        return training_attention()

    def interrupted(self) -> bool:
        return self._interrupted()


def clip_skip_note(family: Family, clip_skip: int, sdxl_clip_l_skip: bool) -> "str | None":
    """A1111 reads its clip skip setting for SD1's CLIP, and for SDXL's CLIP-L only with its *Clip skip SDXL*
    setting on; SD2's OpenCLIP and SDXL's OpenCLIP-G always use their usual layer. Training encodes through the same
    path, so it conditions as A1111 generates; this says so where a clip skip above 1 is not applied."""
    if clip_skip <= 1 or family is Family.SD1:
        return None
    if family is Family.SD2:
        return (f"clip skip {clip_skip}: A1111 applies clip skip to SD1 models only, so this SD2 model's text "
                "encoder gives its usual output, in training as in generation")
    if sdxl_clip_l_skip:
        return (f"clip skip {clip_skip}: applied to SDXL's CLIP-L only (Settings: Clip skip SDXL); its OpenCLIP-G "
                "gives its usual output, in training as in generation")
    return (f"clip skip {clip_skip}: A1111 applies clip skip to SDXL only with Settings: Clip skip SDXL (and then to "
            "its CLIP-L alone), so both text encoders give their usual output, in training as in generation")


def v_prediction_note(family: Family, prediction: Prediction, checkpoint: "str | None") -> "str | None":
    """A1111 v1.10 takes SDXL's prediction type from a config beside the checkpoint only; a checkpoint that marks
    itself v-prediction (a `v_pred` key, as NoobAI's do) without one is loaded, generated with and so trained
    as epsilon. Forge reads the key."""
    if family is not Family.SDXL or prediction is not Prediction.EPSILON or not checkpoint:
        return None
    if not str(checkpoint).endswith(".safetensors") or not _has_key(checkpoint, "v_pred"):
        return None
    return ("this SDXL checkpoint marks itself v-prediction (v_pred), but A1111 loaded it as epsilon, so it is "
            "trained (and generates) as epsilon: put a v-prediction .yaml config of the same name beside it")


def _has_key(path: str, key: str) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as handle:
            return key in handle.keys()
    except Exception:  # an unreadable file says nothing: the note is advice, never a reason to stop
        return False


@contextmanager
def clip_skip_option(opts, clip_skip: int) -> Iterator[None]:
    """The WebUI's text path reads clip skip from its settings: set it for one encode, then put it back."""
    if opts.data.get(CLIP_SKIP_OPTION, 1) == clip_skip:
        yield
        return
    patching.set_item(opts.data, CLIP_SKIP_OPTION, clip_skip, "clip skip for a training encode")
    try:
        yield
    finally:
        patching.restore_item(opts.data, CLIP_SKIP_OPTION)
