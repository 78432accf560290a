"""Comparisons the demo reports: how far apart two LoRAs are, as ΔW and as what they change in the denoiser's
prediction, and the pictures of what they do to a fixed-seed sample."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import torch

from ..core.lorafile import LoraFile
from ..train.host import Component
from ..train.numerics import add_noise
from ..train.sampling import ddim_sample

Applied = Sequence[tuple[LoraFile, float]]


class Comparison(NamedTuple):
    relative: float  # ‖x − y‖ / ‖y‖
    cosine: float  # cosine similarity of x and y, flattened
    norm_x: float
    norm_y: float


def _compare(pairs: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> Comparison:
    diff = dot = xx = yy = 0.0
    for x, y in pairs:
        x, y = x.double(), y.double()
        diff += float((x - y).square().sum())
        dot += float((x * y).sum())
        xx += float(x.square().sum())
        yy += float(y.square().sum())
    relative = (diff ** 0.5) / (yy ** 0.5) if yy else float("inf")
    cosine = dot / ((xx * yy) ** 0.5) if xx and yy else 0.0
    return Comparison(relative, cosine, xx ** 0.5, yy ** 0.5)


def compare_deltas(x: LoraFile, y: LoraFile) -> Comparison:
    """ΔW of `x` against ΔW of `y` (the reference), over the modules both have."""
    names = sorted(set(x.layers) & set(y.layers))
    return _compare((x.layers[n].delta(), y.layers[n].delta()) for n in names)


class Probe(NamedTuple):
    """Noisy latents of some images at timesteps spread over the whole schedule, with fixed noise."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    cond: torch.Tensor


def make_probe(host, latents: torch.Tensor, timesteps: int = 10, draws: int = 2, seed: int = 1234) -> Probe:
    """Every image at `timesteps` evenly spaced timesteps (midpoints of equal slices of the schedule), `draws`
    noises each: the denoiser is compared where it is trained, over all noise levels alike."""
    abar = host.noise_schedule().alphas_cumprod.cpu()
    total = len(abar)
    steps = torch.tensor([int((i + 0.5) * total / timesteps) for i in range(timesteps)])
    t = steps.repeat_interleave(draws).repeat(latents.shape[0])
    x0 = latents.float().cpu().repeat_interleave(timesteps * draws, dim=0)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        cond = host.encode_prompts([""])
    return Probe(add_noise(x0, noise, t, abar), t, cond)


def predict(host, probe: Probe, loras: Applied = ()) -> torch.Tensor:
    """The denoiser's predictions on the probe with `loras` merged in for the while."""
    device = host.device
    with applied(host, loras), torch.no_grad():
        cond = probe.cond.expand(probe.noisy.shape[0], *probe.cond.shape[1:]).to(device)
        out = host.predict_noise(probe.noisy.to(device, host.dtype), probe.timesteps.to(device), cond)
    return out.float().cpu()


def effect(host, probe: Probe, lora: LoraFile, under: Applied = ()) -> torch.Tensor:
    """What `lora` changes in the prediction of the model that already has `under` applied."""
    return predict(host, probe, [*under, (lora, 1.0)]) - predict(host, probe, under)


def compare_effects(x: torch.Tensor, y: torch.Tensor) -> Comparison:
    return _compare(iter([(x, y)]))


@contextmanager
def applied(host, loras: Applied) -> Iterator[None]:
    """The LoRAs merged into the host's weights (ΔW × multiplier) for a while; the exact original tensors are put
    back afterwards, whatever happens."""
    modules = {t.kohya_name: t.module for t in host.target_modules({Component.UNET, Component.TEXT_ENCODER})}
    saved = {}
    try:
        with torch.no_grad():
            for lora, multiplier in loras:
                for name, layer in lora.layers.items():
                    weight = modules[name].weight
                    saved.setdefault(name, weight.detach().clone())
                    delta = layer.delta().reshape(weight.shape).to(weight.device, weight.dtype)
                    weight.add_(delta * multiplier)
        yield
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                modules[name].weight.copy_(original)


def sample(host, seed: int, size: tuple[int, int], loras: Applied = (), steps: int = 20, guidance: float = 5.0):
    """One DDIM sample with the empty prompt, (3, H, W) in [0, 1], from noise drawn with `seed`."""
    shape = (1, 4, size[1] // 8, size[0] // 8)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(host.device)
    with applied(host, loras), torch.no_grad():
        cond = host.encode_prompts([""])
        latents = ddim_sample(host, cond, cond, noise, steps, guidance)
        image = host.decode_latents(latents.to(host.dtype))
    return ((image[0].float() + 1) / 2).clamp(0, 1).cpu()


def effect_map(with_lora: torch.Tensor, without: torch.Tensor, gain: float = 4.0) -> torch.Tensor:
    """|with − without| per pixel (mean over colours), amplified, as a grey image: where a LoRA acts."""
    change = (with_lora - without).abs().mean(dim=0, keepdim=True).mul(gain).clamp(0, 1)
    return change.expand(3, -1, -1)


def save_grid(rows: Sequence[Sequence[torch.Tensor]], path: Path, scale: int = 4) -> Path:
    """Rows of (3, H, W) images in [0, 1], enlarged `scale` times with a 1-pixel white gap (before scaling)."""
    import numpy as np
    from PIL import Image

    height, width = rows[0][0].shape[-2:]
    columns = max(len(row) for row in rows)
    grid = torch.ones(3, len(rows) * (height + 1) - 1, columns * (width + 1) - 1)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid[:, r * (height + 1):r * (height + 1) + height, c * (width + 1):c * (width + 1) + width] = image
    pixels = grid.permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())
