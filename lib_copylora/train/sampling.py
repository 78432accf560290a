"""Preview images during training: a small deterministic DDIM sampler (η = 0) over the host's denoiser.

Previews are rendered twice from the same noise, with the network on and off, so what the LoRA changes is
visible side by side; over-fitting shows as the two drifting apart whatever the prompt.
"""

from __future__ import annotations

import torch

from .callbacks import Samples
from .config import Precision, SampleConfig
from .host import Prediction, TrainingHost
from .network import LoraNetwork


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """`steps` timesteps from the noisiest down, evenly spaced over the training schedule."""
    steps = min(steps, num_train_timesteps)
    points = torch.linspace(num_train_timesteps - 1, 0, steps)
    return sorted({int(round(float(p))) for p in points}, reverse=True)


def ddim_step(x: torch.Tensor, model_output: torch.Tensor, abar: float, abar_prev: float,
              prediction: Prediction) -> torch.Tensor:
    """One deterministic DDIM update from ᾱ to ᾱ_prev: estimate x_0 and ε from the output, then re-noise x_0 to
    the previous level with that same ε."""
    a, s = abar ** 0.5, (1.0 - abar) ** 0.5
    if prediction is Prediction.V:
        x0 = a * x - s * model_output
        eps = a * model_output + s * x
    else:
        eps = model_output
        x0 = (x - s * eps) / a
    return abar_prev ** 0.5 * x0 + (1.0 - abar_prev) ** 0.5 * eps


@torch.no_grad()
def ddim_sample(host: TrainingHost, cond, uncond, noise: torch.Tensor, steps: int, guidance_scale: float) -> torch.Tensor:
    schedule = host.noise_schedule()
    abars = schedule.alphas_cumprod.float().cpu()
    timesteps = ddim_timesteps(len(abars), steps)
    x = noise
    for i, t in enumerate(timesteps):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = host.predict_noise(x.to(host.dtype), t_batch, cond).float()
        if guidance_scale != 1.0:
            out_uncond = host.predict_noise(x.to(host.dtype), t_batch, uncond).float()
            out = out_uncond + guidance_scale * (out - out_uncond)
        abar_prev = float(abars[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        x = ddim_step(x, out, float(abars[t]), abar_prev, schedule.prediction)
    return x


def render_previews(host: TrainingHost, network: LoraNetwork, latent_shape: tuple[int, ...], config: SampleConfig,
                    clip_skip: int, precision: Precision) -> Samples:
    """Previews of `config.prompts` with the network at multiplier 1 and 0, from the same seeded noise."""
    prompts = list(config.prompts)
    noise = torch.randn((len(prompts), *latent_shape), generator=torch.Generator().manual_seed(config.seed))
    noise = noise.to(host.device)
    images = []
    saved_multiplier = network.multiplier
    autocast = torch.autocast(host.device.type, dtype=precision.dtype, enabled=precision is not Precision.FP32)
    try:
        for multiplier in (1.0, 0.0):
            network.multiplier = multiplier
            with torch.no_grad(), autocast:
                cond = host.encode_prompts(prompts, clip_skip)
                uncond = host.encode_prompts([""] * len(prompts), clip_skip)
                latents = ddim_sample(host, cond, uncond, noise, config.steps, config.guidance_scale)
            with torch.no_grad():  # the VAE in its own dtype, as the WebUI decodes (an fp16 SDXL VAE overflows)
                decoded = host.decode_latents(latents.to(host.dtype))
            images.append(((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu())
    finally:
        network.multiplier = saved_multiplier
    return Samples(prompts, images[0], images[1])
