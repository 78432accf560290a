"""What `bench/train.py` measures: the models, the image set, and the variants that train on them.

Variants (each trains kohya's default LoRA targets with AdamW, the same rank, learning rate, batch, resolution,
mixed precision and gradient clipping, on latents cached by the same dataset):
- plain: each target swapped for a textbook nn.Linear / 1×1-conv LoRA wrapper, the loop written out by hand;
- lycoris: our trainer (`train.routes.train`, saving included) with every `SpeedConfig` option off: lycoris'
  own forward per module, AdamW per tensor (what the trainer did before the speed options existed);
- ours: our trainer as users get it (the default `SpeedConfig`);
- blocks, graphs, unet, unet-graphs: ours with that `SpeedConfig.compile` (each transformer block compiled, or the
  whole UNet; the graphs forms add CUDA graphs, on CUDA with one batch shape), losses read every 10 steps;
- lowmem: ours with gradient checkpointing and 8-bit AdamW (when bitsandbytes is importable), for memory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from lib_copylora.core.family import Family
from lib_copylora.hosts.diffusers_host import DiffusersHost
from lib_copylora.hosts.full_size import sd15_pipeline, sdxl_pipeline
from lib_copylora.hosts.tiny import build_tiny_pipeline, write_ab_sets
from lib_copylora.train.host import Component

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILED = ("blocks", "graphs", "unet", "unet-graphs")  # named as their `SpeedConfig.compile`
VARIANTS = ("plain", "lycoris", "ours", *COMPILED, "lowmem")
READ_LOSS_EVERY = 10  # of the compiled variants; their step callbacks then come in bursts: see `bench/train.py:measure`
Tick = Callable[[int], None]  # called with the step number after each optimizer step


def make_host(size: str, precision: str, device: str, seed: int) -> DiffusersHost:
    """`tiny`/`tiny-sdxl`: the test models; `sd15`/`sdxl`: the real architectures with random weights."""
    builders = {"tiny": lambda: build_tiny_pipeline(Family.SD1, seed),
                "tiny-sdxl": lambda: build_tiny_pipeline(Family.SDXL, seed),
                "sd15": lambda: sd15_pipeline(seed, device), "sdxl": lambda: sdxl_pipeline(seed, device)}
    pipe = builders[size]()
    weights = PRECISIONS[precision] if device.startswith("cuda") else torch.float32
    for model in (pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if model is not None:
            model.to(weights)
    return DiffusersHost.from_pipeline(pipe).to(device)


def make_dataset(host, folder: Path, resolution: int, batch: int, steps: int, seed: int):
    from lib_copylora.train.data_config import DatasetConfig
    from lib_copylora.train.dataset import ImageDataset

    # every batch full (4 × repeats a multiple of the batch): the table measures one batch shape, as CUDA graphs need
    data_a, _ = write_ab_sets(folder, count=4, size=(resolution, resolution), repeats=batch * (steps // 4 + 1))
    config = DatasetConfig(data_dir=data_a, resolution=str(resolution), min_bucket_reso=min(256, resolution),
                           max_bucket_reso=max(1024, resolution), batch_size=batch, seed=seed)
    dataset = ImageDataset(config)
    dataset.cache_latents(host)
    return dataset


def speed_config(variant: str):
    from lib_copylora.train.config import SpeedConfig

    if variant == "lycoris":
        return SpeedConfig(fused_lowrank=False, fused_optimizer=False, host_attention=False)
    if variant in COMPILED:
        return SpeedConfig(compile=variant, read_loss_every=READ_LOSS_EVERY)
    return SpeedConfig()


def lowmem_optimizer() -> str:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "adamw"
    return "adamw8bit"


def run_ours(variant: str, args, host, dataset, folder: Path, tick: Tick, log=print) -> None:
    from lib_copylora.train.callbacks import Callbacks
    from lib_copylora.train.config import LoopConfig, NetworkConfig, OptimConfig, OutputConfig, TrainConfig
    from lib_copylora.train.routes import train

    lowmem = variant == "lowmem"
    config = TrainConfig(
        network=NetworkConfig(rank=args.rank, alpha=float(args.rank)),
        optim=OptimConfig(learning_rate=1e-4, optimizer=lowmem_optimizer() if lowmem else "adamw"),
        loop=LoopConfig(max_steps=args.steps, precision=args.precision, seed=args.seed,
                        gradient_checkpointing=lowmem),
        output=OutputConfig(output_dir=folder / "out", output_name="bench", overwrite=True),
        speed=speed_config(variant), dataset_a=dataset.config)
    train(host, config, dataset, callbacks=Callbacks(on_step=lambda step, *_: tick(step), on_log=log))


class PlainLoRA(torch.nn.Module):
    """The textbook wrapper: base(x) + scale · up(down(x)), up starting at zero."""

    def __init__(self, base: torch.nn.Module, rank: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        if isinstance(base, torch.nn.Linear):
            self.down = torch.nn.Linear(base.in_features, rank, bias=False)
            self.up = torch.nn.Linear(rank, base.out_features, bias=False)
        else:  # 1×1 conv projections of SD1's transformer blocks
            self.down = torch.nn.Conv2d(base.in_channels, rank, 1, bias=False)
            self.up = torch.nn.Conv2d(rank, base.out_channels, 1, bias=False)
        torch.nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        torch.nn.init.zeros_(self.up.weight)
        device = base.weight.device
        self.down.to(device)
        self.up.to(device)

    def forward(self, x):
        return self.base(x) + self.up(self.down(x)) * self.scale


def _swap(root: torch.nn.Module, module: torch.nn.Module, replacement: torch.nn.Module) -> None:
    for parent in root.modules():
        for name, child in parent.named_children():
            if child is module:
                setattr(parent, name, replacement)
                return
    raise LookupError("target not found")


def run_plain(args, host, dataset, tick: Tick) -> None:
    """The textbook loop; the host's modules are put back afterwards (the GPU table reuses the host)."""
    targets = [t for t in host.target_modules({Component.UNET}) if not t.conv_block]
    wrappers = []
    try:
        for target in targets:
            wrapper = PlainLoRA(target.module, args.rank, float(args.rank))
            _swap(host.unet, target.module, wrapper)
            wrappers.append(wrapper)
        _plain_loop(args, host, dataset, wrappers, tick)
    finally:
        for wrapper in wrappers:
            _swap(host.unet, wrapper, wrapper.base)


def _plain_loop(args, host, dataset, wrappers: list[PlainLoRA], tick: Tick) -> None:
    params = [p for w in wrappers for p in (w.down.weight, w.up.weight)]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    abar = host.noise_schedule().alphas_cumprod
    generator = torch.Generator(device=host.device).manual_seed(args.seed)
    dtype = PRECISIONS[args.precision]
    scaler = torch.amp.GradScaler("cuda") if args.precision == "fp16" and host.device.type == "cuda" else None
    conds: dict[int, object] = {}  # one per batch size: the last batch of a set may be smaller
    step, epoch = 0, 0
    while step < args.steps:
        for batch in dataset.batches(host, epoch):
            latents = batch.latents.to(host.device, torch.float32)
            rows = latents.shape[0]
            if rows not in conds:
                with torch.no_grad():
                    conds[rows] = host.encode_prompts([""] * rows)
            noise = torch.randn(latents.shape, generator=generator, device=host.device)
            t = torch.randint(0, len(abar), (rows,), generator=generator, device=host.device)
            a = abar[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
            with torch.autocast(host.device.type, dtype=dtype, enabled=args.precision != "fp32"):
                pred = host.predict_noise(noisy, t, conds[rows])
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer) if scaler else optimizer.step()
            if scaler:
                scaler.update()
            optimizer.zero_grad(set_to_none=True)
            loss.item()  # the textbook loop logs its loss every step
            step += 1
            tick(step)
            if step >= args.steps:
                break
        epoch += 1


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()
