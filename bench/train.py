"""Benchmark of our trainer against a plain hand-written LoRA training loop, on the same model, data and settings.

Run from the repository root:
    python bench/train.py                                           # CPU, the tiny SD1-shaped model
    python bench/train.py --device cuda --size sd15 --resolution 512  # a GPU, an SD1.5-sized model (random weights)

Both variants train kohya's default LoRA targets (the 192 attention/feed-forward/projection modules of an SD1 UNet)
with AdamW, the same rank, learning rate, batch, resolution, mixed precision and gradient clipping, on latents
cached by the same dataset. "ours" runs the full route (`train.routes.train`: lycoris modules on forward hooks,
dataset batches, callbacks, metadata and saving at the end); "plain" replaces each target with an nn.Linear /
1×1-conv LoRA wrapper and runs the textbook loop. Each variant runs in its own child process so that its peak
memory is its own; steps/s is timed between steps `--warmup` and `--steps`. Targets: ours ≥ 0.95 × plain in
steps/s, and peak memory within 10 %.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_copylora.core.family import Family  # noqa: E402
from lib_copylora.hosts.diffusers_host import DiffusersHost  # noqa: E402
from lib_copylora.hosts.full_size import sd15_pipeline  # noqa: E402
from lib_copylora.hosts.tiny import build_tiny_pipeline, write_ab_sets  # noqa: E402
from lib_copylora.train.host import Component  # noqa: E402

TARGET_SPEED = 0.95
TARGET_MEMORY = 1.10
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_host(args) -> DiffusersHost:
    pipe = sd15_pipeline(args.seed) if args.size == "sd15" else build_tiny_pipeline(Family.SD1, args.seed)
    weights = PRECISIONS[args.precision] if args.device.startswith("cuda") else torch.float32
    pipe.unet.to(weights)
    pipe.text_encoder.to(weights)
    return DiffusersHost.from_pipeline(pipe).to(args.device)


def make_dataset(args, host, folder: Path):
    from lib_copylora.train.data_config import DatasetConfig
    from lib_copylora.train.dataset import ImageDataset

    data_a, _ = write_ab_sets(folder, count=4, size=(args.resolution, args.resolution), repeats=args.steps)
    config = DatasetConfig(data_dir=data_a, resolution=str(args.resolution),
                           min_bucket_reso=min(256, args.resolution), max_bucket_reso=max(1024, args.resolution),
                           batch_size=args.batch, seed=args.seed)
    dataset = ImageDataset(config)
    dataset.cache_latents(host)
    return dataset


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_ours(args, host, dataset, folder: Path, stamps: list[float]) -> None:
    from lib_copylora.train.callbacks import Callbacks
    from lib_copylora.train.config import (LoopConfig, NetworkConfig, OptimConfig, OutputConfig, TrainConfig)
    from lib_copylora.train.routes import train

    config = TrainConfig(
        network=NetworkConfig(rank=args.rank, alpha=float(args.rank)), optim=OptimConfig(learning_rate=1e-4),
        loop=LoopConfig(max_steps=args.steps, precision=args.precision, seed=args.seed),
        output=OutputConfig(output_dir=folder / "out", output_name="bench"), dataset_a=dataset.config)
    train(host, config, dataset, callbacks=Callbacks(on_step=lambda *_: stamps.append(_now(host))))


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


def run_plain(args, host, dataset, stamps: list[float]) -> None:
    targets = [t for t in host.target_modules({Component.UNET}) if not t.conv_block]
    wrappers = []
    for target in targets:
        wrapper = PlainLoRA(target.module, args.rank, float(args.rank))
        _swap(host.unet, target.module, wrapper)
        wrappers.append(wrapper)
    params = [p for w in wrappers for p in (w.down.weight, w.up.weight)]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    abar = host.noise_schedule().alphas_cumprod
    generator = torch.Generator(device=host.device).manual_seed(args.seed)
    dtype = PRECISIONS[args.precision]
    with torch.no_grad():
        cond = host.encode_prompts([""] * args.batch)
    step, epoch = 0, 0
    while step < args.steps:
        for batch in dataset.batches(host, epoch):
            latents = batch.latents.to(host.device, torch.float32)
            noise = torch.randn(latents.shape, generator=generator, device=host.device)
            t = torch.randint(0, len(abar), (latents.shape[0],), generator=generator, device=host.device)
            a = abar[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
            with torch.autocast(host.device.type, dtype=dtype, enabled=args.precision != "fp32"):
                pred = host.unet(noisy.to(host.dtype), t, encoder_hidden_states=cond).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()  # ours reads the loss every step too (for the callback)
            step += 1
            stamps.append(_now(host))
            if step >= args.steps:
                break
        epoch += 1


def _now(host) -> float:
    if host.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def run_variant(args) -> dict:
    torch.manual_seed(args.seed)
    host = make_host(args)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(args, host, Path(tmp) / "data")
        if host.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = _rss_mb()
        stamps: list[float] = []
        if args.variant == "ours":
            run_ours(args, host, dataset, Path(tmp), stamps)
        else:
            run_plain(args, host, dataset, stamps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    timed = stamps[args.warmup - 1:]
    result = {"variant": args.variant, "steps_per_s": (len(timed) - 1) / (timed[-1] - timed[0]),
              "rss_before_mb": before, "peak_rss_mb": peak}
    if host.device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return result


def _child(args, variant: str) -> dict:
    command = [sys.executable, __file__, "--variant", variant] + [
        f"--{k}={v}" for k, v in vars(args).items() if k != "variant" and v is not None]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default=None,
                        help="autocast dtype (default: fp16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=("ours", "plain"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.precision = args.precision or ("fp16" if args.device.startswith("cuda") else "fp32")
    if args.variant is not None:
        print(json.dumps(run_variant(args)))
        return 0
    results = {v: _child(args, v) for v in ("plain", "ours")}
    ours, plain = results["ours"], results["plain"]
    print(f"{args.size} model, {args.resolution}px, batch {args.batch}, rank {args.rank}, {args.precision}, "
          f"{args.device}, steps {args.warmup}..{args.steps} timed")
    for name, r in results.items():
        extra = f", CUDA peak {r['cuda_peak_mb']:.0f} MiB" if "cuda_peak_mb" in r else ""
        print(f"  {name:5s}: {r['steps_per_s']:.3f} steps/s, peak RSS {r['peak_rss_mb']:.0f} MiB "
              f"(before training {r['rss_before_mb']:.0f}){extra}")
    speed = ours["steps_per_s"] / plain["steps_per_s"]
    rss = ours["peak_rss_mb"] / plain["peak_rss_mb"]
    print(f"speed ratio ours/plain {speed:.3f} (target >= {TARGET_SPEED}): "
          f"{'ok' if speed >= TARGET_SPEED else 'MISS'}")
    print(f"peak RSS ratio ours/plain {rss:.3f} (target <= {TARGET_MEMORY}): "
          f"{'ok' if rss <= TARGET_MEMORY else 'MISS'}")
    if "cuda_peak_mb" in ours:
        cuda = ours["cuda_peak_mb"] / plain["cuda_peak_mb"]
        print(f"CUDA peak ratio ours/plain {cuda:.3f} (target <= {TARGET_MEMORY}): "
              f"{'ok' if cuda <= TARGET_MEMORY else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
