"""A tiny Stable-Diffusion-shaped model and synthetic A/B image sets, for the demo, the tests and the bench.

The model keeps the real block layout (SD1: CrossAttnDownBlock2D ×3 + DownBlock2D, the matching up blocks, a
cross-attention mid block; SDXL: Down + CrossAttnDown ×2, two text encoders and the text-time embedding), so every
kohya module name and every block a LoRA touches is the one a real checkpoint has; only the widths are small.
Weights come from a seed and the tokenizer's vocabulary is generated here, so nothing is ever downloaded. As SD's
0.18215 does for SD's VAE, the tiny VAE's scaling factor makes its latents unit-variance (measured on synthetic
shirts): with the diffusers default the random VAE's latents have a std of about 0.05, so every noisy latent is
nearly pure noise and no image can be learned. `pretrain_unet` turns the random UNet into a base that already
denoises plain shirts, as a real base model already knows its subjects.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from ..core.family import Family

# Words the tokenizer merges into single tokens, so that the demo's prompts are a few tokens, not bytes.
_WORDS = ("shirt", "red", "blue", "text", "photo", "mark", "stripe", "a", "of", "the")
MAX_TOKENS = 77
LATENT_CHANNELS = 4


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE tokenizers (GPT-2, CLIP) use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            shifted[byte] = byte
        else:
            shifted[byte] = 256 + extra
            extra += 1
    return [chr(shifted[b]) for b in range(256)]


def _word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that turn `word` into one end-of-word token (`shirt</w>`)."""
    pieces = [*word[:-1], word[-1] + "</w>"]
    merges = []
    while len(pieces) > 1:
        merges.append((pieces[0], pieces[1]))
        pieces = [pieces[0] + pieces[1], *pieces[2:]]
    return merges


def tokenizer_files() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small CLIP-style vocabulary (every byte, every byte ending a word, a few whole words) and its merges."""
    alphabet = _byte_alphabet()
    tokens = [*alphabet, *(c + "</w>" for c in alphabet)]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        for pair in _word_merges(word):
            if pair not in merges:
                merges.append(pair)
    for left, right in merges:
        if left + right not in tokens:
            tokens.append(left + right)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt (what every CLIPTokenizer version reads) plus the fast tokenizer's own files."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tokenizer_files()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                              model_max_length=MAX_TOKENS)
    tokenizer.save_pretrained(str(folder))


def _text_config(vocab_size: int, hidden: int, projection: int, act: str):
    from transformers import CLIPTextConfig

    vocab, _ = tokenizer_files()
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, hidden_act=act, projection_dim=projection,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


def sd1_unet_config(width: int = 32, cross_attention_dim: int = 32) -> dict:
    """SD1's UNet layout (diffusers' config of runwayml/stable-diffusion-v1-5) at a small width."""
    return dict(
        sample_size=8, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=2,
        block_out_channels=(width, width, 2 * width, 2 * width),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=8,
    )


def sdxl_unet_config(width: int = 32, cross_attention_dim: int = 64, pooled_dim: int = 32) -> dict:
    """SDXL's UNet layout (three levels, text-time embedding) at a small width and depth."""
    time_dim = 8
    return dict(
        sample_size=8, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=2,
        block_out_channels=(width, 2 * width, 2 * width),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2), cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4, 4), norm_num_groups=8, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + pooled_dim,
    )


def vae_config() -> dict:
    """Four levels, so latents are H/8 × W/8 as in every SD VAE."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, layers_per_block=1,
        block_out_channels=(8, 16, 32, 32), norm_num_groups=8, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


def scheduler_config(prediction: str = "epsilon") -> dict:
    """SD's training schedule: scaled-linear betas 0.00085 → 0.012 over 1000 steps."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type=prediction, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def unit_latent_scale(vae, size: tuple[int, int] = (64, 64), count: int = 16) -> float:
    """1 / std of the VAE's latents (posterior means) of `count` synthetic shirts: SD's rule for scaling_factor."""
    rng = random.Random(7)
    images = torch.stack([image_to_tensor(draw_shirt(_random_scene(rng), size, i % 2 == 1)) for i in range(count)])
    with torch.no_grad():
        latents = vae.encode(images.to(vae.dtype)).latent_dist.mode()
    return float(1.0 / latents.float().std())


def image_to_tensor(image) -> torch.Tensor:
    """A PIL RGB image as (3, H, W) in [-1, 1]."""
    import numpy as np

    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1.0


def build_tiny_pipeline(family: Family = Family.SD1, seed: int = 0, prediction: str = "epsilon"):
    """A diffusers pipeline object with seeded weights (StableDiffusionPipeline or StableDiffusionXLPipeline)."""
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    vocab_size = len(tokenizer)
    scheduler = DDIMScheduler(**scheduler_config(prediction))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**vae_config())
        vae.register_to_config(scaling_factor=unit_latent_scale(vae))
        if family is not Family.SDXL:
            act = "quick_gelu" if family is Family.SD1 else "gelu"
            text_encoder = CLIPTextModel(_text_config(vocab_size, 32, 32, act))
            unet = UNet2DConditionModel(**sd1_unet_config(), use_linear_projection=family is Family.SD2)
            from diffusers import StableDiffusionPipeline

            return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                           scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
        text_encoder = CLIPTextModel(_text_config(vocab_size, 32, 32, "quick_gelu"))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(vocab_size, 32, 32, "gelu"))
        unet = UNet2DConditionModel(**sdxl_unet_config())
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)


def save_tiny_model(folder: Path, family: Family = Family.SD1, seed: int = 0, prediction: str = "epsilon",
                    pretrain_steps: int = 0) -> Path:
    """Write the tiny model as a diffusers folder (`--model` can point at it); returns the folder. With
    `pretrain_steps`, its UNet is first trained that many steps on plain shirts (`pretrain_unet`)."""
    folder = Path(folder)
    pipe = build_tiny_pipeline(family, seed, prediction)
    if pretrain_steps:
        pretrain_unet(pipe, pretrain_steps, seed=seed)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    # Our own vocab.json/merges.txt beside the fast tokenizer's files, for transformers versions that want them.
    for sub in ("tokenizer", "tokenizer_2") if family is Family.SDXL else ("tokenizer",):
        write_tokenizer(folder / sub)
    return folder


def pretrain_unet(pipe, steps: int, seed: int = 0, learning_rate: float = 2e-3, batch: int = 8,
                  scenes: int = 64, size: tuple[int, int] = (64, 64)) -> list[float]:
    """Train the whole UNet of a tiny SD1/SD2 pipeline on `scenes` random plain shirts (never the demo's own, never
    a mark), empty prompt, ε or v loss as its scheduler predicts. Returns the loss of each step.

    A random UNet cannot denoise, and a LoRA on its attention layers learns denoising only slowly and noisily;
    the copier method assumes a base that already draws the subject and LoRAs that move it a little."""
    from ..train.numerics import add_noise, training_target

    from .diffusers_host import DiffusersHost

    host = DiffusersHost.from_pipeline(pipe)
    schedule = host.noise_schedule()
    rng = random.Random(f"copylora-pretrain:{seed}")
    images = torch.stack([image_to_tensor(draw_shirt(_random_scene(rng), size, False)) for _ in range(scenes)])
    generator = torch.Generator().manual_seed(seed)
    unet = host.unet
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate)
    losses = []
    with torch.no_grad():
        latents = host.encode_images(images)
        cond = host.encode_prompts([""] * batch)
    unet.requires_grad_(True)
    try:
        for _ in range(steps):
            x0 = latents[torch.randint(0, scenes, (batch,), generator=generator)]
            noise = torch.randn(x0.shape, generator=generator)
            t = torch.randint(0, len(schedule.alphas_cumprod), (batch,), generator=generator)
            noisy = add_noise(x0, noise, t, schedule.alphas_cumprod)
            target = training_target(x0, noise, t, schedule.alphas_cumprod, schedule.prediction)
            loss = (host.predict_noise(noisy, t, cond) - target).pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        unet.requires_grad_(False)
    return losses


# ---- synthetic A/B image sets ------------------------------------------------------------------------------------

class ShirtScene(NamedTuple):
    background: tuple[int, int, int]
    shirt: tuple[int, int, int]
    center: tuple[float, float]  # fractions of the image size
    scale: float


def _random_scene(rng: random.Random) -> ShirtScene:
    background = tuple(rng.randint(170, 240) for _ in range(3))
    shirt = tuple(rng.randint(20, 140) for _ in range(3))
    return ShirtScene(background, shirt, (rng.uniform(0.45, 0.55), rng.uniform(0.5, 0.6)), rng.uniform(0.8, 1.0))


def _shirt_polygon(scene: ShirtScene, w: int, h: int) -> list[tuple[float, float]]:
    """A T-shirt outline: body plus two sleeves, in a unit box around the centre."""
    unit = [(-0.18, -0.30), (-0.42, -0.12), (-0.32, 0.02), (-0.22, -0.06), (-0.22, 0.35), (0.22, 0.35),
            (0.22, -0.06), (0.32, 0.02), (0.42, -0.12), (0.18, -0.30), (0.07, -0.24), (-0.07, -0.24)]
    cx, cy = scene.center
    return [((cx + x * scene.scale) * w, (cy + y * scene.scale) * h) for x, y in unit]


def draw_shirt(scene: ShirtScene, size: tuple[int, int], with_mark: bool):
    """Set A's picture, or (with_mark) set B's: the same picture with a row of dark letter-like bars on the chest
    under a coloured stripe, the "text printed on the shirt" of the copier articles."""
    from PIL import Image, ImageDraw

    w, h = size
    image = Image.new("RGB", size, scene.background)
    draw = ImageDraw.Draw(image)
    draw.polygon(_shirt_polygon(scene, w, h), fill=scene.shirt)
    if with_mark:
        cx, cy = scene.center[0] * w, scene.center[1] * h
        half = 0.16 * scene.scale * w
        draw.rectangle([cx - half, cy - 0.02 * h, cx + half, cy + 0.02 * h], fill=(230, 40, 40))
        bars = 5
        step = 2 * half / bars
        for i in range(bars):
            x0 = cx - half + i * step + step * 0.2
            draw.rectangle([x0, cy + 0.05 * h, x0 + step * 0.6, cy + 0.13 * h], fill=(250, 250, 250))
    return image


def write_ab_sets(root: Path, count: int = 2, size: tuple[int, int] = (64, 64), repeats: int = 5, seed: int = 0,
                  caption: Optional[str] = None, name: str = "shirt") -> tuple[Path, Path]:
    """Set A (plain shirts) under `root/a/<repeats>_<name>/`, set B (the same shirts, marked) under `root/b/...`.

    Returns the two dataset folders (`root/a`, `root/b`). With `caption`, a `.txt` caption is written beside each
    image; without, images have none, as the copier method trains."""
    rng = random.Random(seed)
    scenes = [_random_scene(rng) for _ in range(count)]
    folders = []
    for set_name, with_mark in (("a", False), ("b", True)):
        folder = Path(root) / set_name / f"{repeats}_{name}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, scene in enumerate(scenes):
            draw_shirt(scene, size, with_mark).save(folder / f"{i:03d}.png")
            if caption is not None:
                (folder / f"{i:03d}.txt").write_text(caption, encoding="utf-8")
        folders.append(Path(root) / set_name)
    return folders[0], folders[1]
