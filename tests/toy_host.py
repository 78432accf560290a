"""Toy training hosts: a few Linear/Conv2d layers on 4-channel latents, named as SD1 modules are named.

`ToyHost` is a small denoiser (a ResNet-style 3×3 conv, a token Linear, a cross-attention-style Linear fed by the
prompt embedding, a 1×1 projection) with a toy text encoder (hashed word embeddings through one Linear).
`LinearToyHost` is one 1×1 conv, ε̂ = W·x_t per pixel, whose least-squares optimum is known in closed form
(`optimal_weight`), for the known-answer test of the copier and difference routes.
"""

from __future__ import annotations

import zlib
from typing import Iterator, NamedTuple

import torch

from lib_copylora.core.family import Family
from lib_copylora.train.host import Component, NoiseSchedule, Prediction, TargetModule

CHANNELS = 4
EMBED = 6
T = 100


class ToyBatch(NamedTuple):
    latents: torch.Tensor
    captions: list[str]
    loss_weights: torch.Tensor


def toy_schedule(steps: int = T) -> torch.Tensor:
    betas = torch.linspace(1e-3, 0.2, steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, 0).float()


class _HostBase:
    family = Family.SD1
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, prediction: Prediction = Prediction.EPSILON):
        self.prediction = prediction
        self.stop_requested = False
        self.checkpointing = False

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule(toy_schedule(), self.prediction)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        # "VAE": average-pool by 2 and keep the first CHANNELS channels (images carry CHANNELS channels here)
        return torch.nn.functional.avg_pool2d(images[:, :CHANNELS], 2)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(latents[:, :3], scale_factor=2.0).clamp(-1, 1)

    def base_tensors(self):
        yield from self.model.named_parameters()
        yield from self.model.named_buffers()

    def set_gradient_checkpointing(self, enabled: bool) -> bool:
        self.checkpointing = enabled
        return True

    def interrupted(self) -> bool:
        return self.stop_requested


class ToyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(CHANNELS, 8, 3, padding=1)
        self.to_out = torch.nn.Linear(8, 8)
        self.to_k = torch.nn.Linear(EMBED, 8, bias=False)
        self.proj_out = torch.nn.Conv2d(8, CHANNELS, 1)
        self.embedding = torch.nn.Embedding(16, EMBED)
        self.fc1 = torch.nn.Linear(EMBED, EMBED)
        self.register_buffer("time_scale", torch.linspace(0.5, 1.5, T))


class ToyHost(_HostBase):
    def __init__(self, seed: int = 0, prediction: Prediction = Prediction.EPSILON):
        super().__init__(prediction)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = ToyModel()

    def target_modules(self, components: set[Component]) -> list[TargetModule]:
        m, unet, te = self.model, "lora_unet_down_blocks_0_", "lora_te_text_model_encoder_layers_0_"
        all_targets = [
            TargetModule(unet + "resnets_0_conv1", m.conv1, Component.UNET, True),
            TargetModule(unet + "attentions_0_transformer_blocks_0_attn1_to_out_0", m.to_out, Component.UNET),
            TargetModule(unet + "attentions_0_transformer_blocks_0_attn2_to_k", m.to_k, Component.UNET),
            TargetModule(unet + "attentions_0_proj_out", m.proj_out, Component.UNET),
            TargetModule(te + "mlp_fc1", m.fc1, Component.TEXT_ENCODER),
        ]
        return [t for t in all_targets if t.component in components]

    def encode_prompts(self, prompts: list[str], clip_skip: int = 1) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            ids = [zlib.crc32(w.encode()) % 16 for w in prompt.split()]
            words = self.model.embedding(torch.tensor(ids, dtype=torch.long)) if ids else torch.zeros(1, EMBED)
            rows.append(words.mean(0))
        hidden = torch.stack(rows)
        return hidden if clip_skip > 1 else self.model.fc1(hidden)

    def predict_noise(self, noisy_latents, timesteps, cond) -> torch.Tensor:
        m = self.model
        h = torch.nn.functional.silu(m.conv1(noisy_latents)) * m.time_scale[timesteps].view(-1, 1, 1, 1)
        b, c, hh, ww = h.shape
        tokens = h.flatten(2).transpose(1, 2)
        tokens = tokens + m.to_out(tokens) + m.to_k(cond)[:, None, :]
        return m.proj_out(tokens.transpose(1, 2).reshape(b, c, hh, ww))


class LinearModel(torch.nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.proj_in = torch.nn.Conv2d(CHANNELS, CHANNELS, 1, bias=False)
        with torch.no_grad():
            self.proj_in.weight.copy_(weight.reshape(CHANNELS, CHANNELS, 1, 1))


class LinearToyHost(_HostBase):
    """ε̂ = W·x_t per latent pixel; prompts are ignored."""

    def __init__(self, weight: torch.Tensor):
        super().__init__(Prediction.EPSILON)
        self.model = LinearModel(weight)

    def target_modules(self, components: set[Component]) -> list[TargetModule]:
        return [TargetModule("lora_unet_down_blocks_0_attentions_0_proj_in", self.model.proj_in, Component.UNET)]

    def encode_prompts(self, prompts: list[str], clip_skip: int = 1) -> torch.Tensor:
        return torch.zeros(len(prompts), 1)

    def predict_noise(self, noisy_latents, timesteps, cond) -> torch.Tensor:
        return self.model.proj_in(noisy_latents)


def optimal_weight(latents: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """argmin_W E‖W·x_t − ε‖² over uniform t, ε ~ N(0, I) and the pixels x_0 of `latents`:
    W* = E[σ_t] · (E[s_t²]·M + E[σ_t²]·I)⁻¹ with s_t = √ᾱ_t, σ_t = √(1−ᾱ_t), M = E[x_0 x_0ᵀ]
    (the cross terms vanish because ε is independent of x_0 and has zero mean)."""
    pixels = latents.double().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    second_moment = pixels.T @ pixels / pixels.shape[0]
    abar = alphas_cumprod.double()
    sigma = (1 - abar).sqrt()
    gram = abar.mean() * second_moment + (1 - abar).mean() * torch.eye(latents.shape[1], dtype=torch.float64)
    return (sigma.mean() * torch.linalg.inv(gram)).float()


class ToySource:
    """Batches of fixed latents, reshuffled each epoch from (seed, epoch) alone, as the trainer's data contract
    asks: the same epoch always yields the same batches."""

    def __init__(self, latents: torch.Tensor, batch_size: int, captions: list[str] | None = None, seed: int = 0):
        self.latents, self.batch_size, self.seed = latents, batch_size, seed
        self.captions = captions or [""] * latents.shape[0]

    def batches_per_epoch(self) -> int:
        return -(-self.latents.shape[0] // self.batch_size)

    def batches(self, host, epoch: int, start: int = 0) -> Iterator[ToyBatch]:
        order = torch.randperm(self.latents.shape[0], generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        for first in range(start * self.batch_size, len(order), self.batch_size):
            index = order[first:first + self.batch_size]
            yield ToyBatch(self.latents[index], [self.captions[i] for i in index],
                           torch.ones(len(index)))


def base_fingerprint(host) -> dict[str, bytes]:
    """Every base parameter and buffer as raw bytes, plus its requires_grad flag, for bit-exact comparisons."""
    return {name: (t.detach().cpu().contiguous().numpy().tobytes(), t.requires_grad, t.dtype)
            for name, t in host.base_tensors()}


def module_state(host) -> dict[str, tuple]:
    """What a hook-based attachment could leave behind on the host's modules: instance attributes and hooks."""
    state = {}
    for name, module in host.model.named_modules():
        state[name] = (sorted(k for k in vars(module) if not k.startswith("_") or k.startswith("_lycoris")),
                       len(module._forward_hooks), len(module._forward_pre_hooks), len(module._backward_hooks),
                       "forward" in vars(module), module.training)
    return state
