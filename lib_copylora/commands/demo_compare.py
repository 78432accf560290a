"""Comparisons the demo reports: how far apart two LoRAs' ΔW are, and what they do to a fixed-seed sample."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import torch

from ..core.lorafile import LoraFile
from ..train.host import Component
from ..train.sampling import ddim_sample


class DeltaComparison(NamedTuple):
    relative: float  # ‖ΔW_x − ΔW_y‖ / ‖ΔW_y‖ over all shared modules
    cosine: float  # cosine similarity of the two ΔW, flattened over all modules
    norm_x: float
    norm_y: float


def compare_deltas(x: LoraFile, y: LoraFile) -> DeltaComparison:
    """ΔW of `x` against ΔW of `y` (the reference), module by module, summed over the modules both have."""
    diff = dot = xx = yy = 0.0
    for name in sorted(set(x.layers) & set(y.layers)):
        dx, dy = x.layers[name].delta().double(), y.layers[name].delta().double()
        diff += float((dx - dy).square().sum())
        dot += float((dx * dy).sum())
        xx += float(dx.square().sum())
        yy += float(dy.square().sum())
    relative = (diff ** 0.5) / (yy ** 0.5) if yy else float("inf")
    cosine = dot / ((xx * yy) ** 0.5) if xx and yy else 0.0
    return DeltaComparison(relative, cosine, xx ** 0.5, yy ** 0.5)


@contextmanager
def applied(host, loras: Sequence[tuple[LoraFile, float]]) -> Iterator[None]:
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


def sample(host, prompt: str, seed: int, size: tuple[int, int], steps: int = 20, guidance: float = 5.0):
    """One DDIM sample, (3, H, W) in [0, 1], from noise drawn with `seed`."""
    shape = (1, 4, size[1] // 8, size[0] // 8)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(host.device)
    with torch.no_grad():
        cond = host.encode_prompts([prompt])
        uncond = host.encode_prompts([""])
        latents = ddim_sample(host, cond, uncond, noise, steps, guidance)
        image = host.decode_latents(latents.to(host.dtype))
    return ((image[0].float() + 1) / 2).clamp(0, 1).cpu()


def save_strip(images: Sequence[torch.Tensor], path: Path, scale: int = 4) -> Path:
    """Images side by side, enlarged `scale` times (the demo's are 64 pixels wide)."""
    import numpy as np
    from PIL import Image

    strip = torch.cat(list(images), dim=-1).permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
    picture = Image.fromarray(np.ascontiguousarray(strip))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())
