"""Training numerics as free functions over tensors: timesteps, noise, targets, loss weights (docs/architecture.md §8).

`alphas_cumprod` is ᾱ_t of the host's schedule; a noisy latent is x_t = √ᾱ_t · x_0 + √(1−ᾱ_t) · ε.
"""

from __future__ import annotations

from typing import Optional

import torch

from .host import Prediction

Tensor = torch.Tensor


def sample_timesteps(batch: int, num_train_timesteps: int, generator: torch.Generator, device) -> Tensor:
    """Uniform integer timesteps in [0, num_train_timesteps), as kohya and diffusers sample them."""
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=device, dtype=torch.long)


def sample_noise(latents: Tensor, generator: torch.Generator, offset: float = 0.0) -> Tensor:
    """Gaussian noise like `latents`, plus `offset` times one Gaussian constant per sample and channel (noise
    offset: lets the model learn overall brightness, which zero-mean noise hides from it)."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=torch.float32)
    if offset:
        shape = (latents.shape[0], latents.shape[1], *([1] * (latents.dim() - 2)))
        noise = noise + offset * torch.randn(shape, generator=generator, device=latents.device, dtype=torch.float32)
    return noise


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    return values.reshape(values.shape[0], *([1] * (like.dim() - 1)))


def schedule_terms(timesteps: Tensor, alphas_cumprod: Tensor) -> tuple[Tensor, Tensor]:
    """(√ᾱ_t, √(1−ᾱ_t)) per sample, float32."""
    abar = alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
    return abar.sqrt(), (1.0 - abar).sqrt()


def add_noise(latents: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    signal, sigma = schedule_terms(timesteps, alphas_cumprod)
    return _per_sample(signal, latents) * latents + _per_sample(sigma, latents) * noise


def v_target(latents: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """v = √ᾱ_t · ε − √(1−ᾱ_t) · x_0 (Salimans & Ho), the target of v-prediction models (SD2 768)."""
    signal, sigma = schedule_terms(timesteps, alphas_cumprod)
    return _per_sample(signal, latents) * noise - _per_sample(sigma, latents) * latents


def training_target(latents: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor,
                    prediction: Prediction) -> Tensor:
    if prediction is Prediction.V:
        return v_target(latents, noise, timesteps, alphas_cumprod)
    return noise


def snr(timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) per sample."""
    abar = alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
    return abar / (1.0 - abar)


def min_snr_weights(timesteps: Tensor, alphas_cumprod: Tensor, gamma: float, prediction: Prediction) -> Tensor:
    """Min-SNR-γ (Hang et al. 2023): min(SNR, γ) / SNR for ε-prediction; for v-prediction the v loss already
    carries a factor SNR + 1, so the weight is min(SNR, γ) / (SNR + 1)."""
    ratio = snr(timesteps, alphas_cumprod)
    clipped = torch.clamp(ratio, max=gamma)
    if prediction is Prediction.V:
        return clipped / (ratio + 1.0)
    return clipped / ratio


def diffusion_loss(prediction: Tensor, target: Tensor, sample_weights: Optional[Tensor] = None) -> Tensor:
    """Mean squared error per sample (over every non-batch element), times its weight, averaged over the batch.
    Computed in float32 whatever the autocast dtype of `prediction`."""
    error = (prediction.float() - target.float()).pow(2)
    per_sample = error.reshape(error.shape[0], -1).mean(dim=1)
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.to(per_sample)
    return per_sample.mean()
