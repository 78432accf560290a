"""`python -m lib_copylora demo`: the copy-machine method end to end on a tiny model, in a few CPU minutes.

It builds a tiny SD1-shaped model (random weights, nothing downloaded) and two synthetic image sets that differ
in one feature (plain T-shirts; the same T-shirts with a red stripe and white "letters"), then trains the copier
route and the difference route, writes the exact difference and an SVD re-rank of it, and reports what each file
is and how the routes compare: the relative difference of their ΔW and their effect on a fixed-seed sample.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from .train_report import lora_line

SIZE = (64, 64)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train both copy-machine routes on a tiny model and compare them",
                                   description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("copylora-demo"), help="folder for everything written")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per trained LoRA (4 are trained)")
    parser.add_argument("--rank", type=int, default=4, help="rank (and alpha) of the trained LoRAs")
    parser.add_argument("--learning_rate", type=float, default=3e-3, help="learning rate (high: the model is tiny)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the images and the training")
    parser.set_defaults(func=run)


def _config(args, route: str, name: str, data_a: Path, data_b: Path):
    from ..train.config import LoopConfig, NetworkConfig, OptimConfig, OutputConfig, RouteConfig, TrainConfig
    from ..train.data_config import DatasetConfig

    def dataset(folder: Path) -> DatasetConfig:
        return DatasetConfig(data_dir=folder, resolution=f"{SIZE[0]},{SIZE[1]}", min_bucket_reso=64,
                             max_bucket_reso=128, seed=args.seed)

    return TrainConfig(
        network=NetworkConfig(rank=args.rank, alpha=float(args.rank)),
        optim=OptimConfig(learning_rate=args.learning_rate),
        loop=LoopConfig(max_steps=args.steps, seed=args.seed),
        output=OutputConfig(output_dir=args.out, output_name=name, save_precision="fp32", overwrite=True),
        route=RouteConfig(route=route, keep_parts=True),
        dataset_a=dataset(data_a), dataset_b=dataset(data_b))


def _train(args, host, route: str, name: str, data: tuple[Path, Path]):
    from ..train.callbacks import Callbacks
    from ..train.dataset import ImageDataset
    from ..train.routes import train

    config = _config(args, route, name, *data)
    sources = [ImageDataset(config.dataset_a), ImageDataset(config.dataset_b)]
    last = {}

    def on_step(step: int, loss: float, _lr: float) -> None:
        if step % max(1, args.steps // 3) == 0 or step == args.steps:
            print(f"  {last['phase']} step {step}/{args.steps}  loss {loss:.4f}")

    callbacks = Callbacks(on_step=on_step, on_phase=lambda phase, _total: last.update(phase=phase))
    started = time.perf_counter()
    print(f"{route} route:")
    result = train(host, config, sources[0], sources[1], callbacks)
    print(f"  trained in {time.perf_counter() - started:.1f}s")
    return result


def _rerank(args, exact_parts):
    from ..core.formats import write_lora
    from ..core.merge import MergeSpec, merge_loras

    part_b, part_a = exact_parts
    name = f"difference_rank{args.rank}"
    merged = merge_loras([part_b, part_a], MergeSpec(ratios=(1.0, -1.0), new_rank=args.rank, output_name=name))
    merged.path = write_lora(merged, args.out / f"{name}.safetensors", dtype=_fp32(), overwrite=True)
    return merged


def _fp32():
    import torch

    return torch.float32


def _describe_files(files: dict[str, object]) -> None:
    print("files:")
    for kind, lora in files.items():
        print(f"  [{kind}] {lora_line(lora)}")


def _compare(args, host, files: dict) -> None:
    from .demo_compare import applied, compare_deltas, mean_abs, sample, save_strip

    copier, exact, reranked = files["copier result"], files["difference (exact)"], files["difference (re-ranked)"]
    routes = compare_deltas(copier, exact)
    rank_error = compare_deltas(reranked, exact)
    print("how the routes compare (ΔW over all modules):")
    print(f"  ‖ΔW copier − ΔW difference‖ / ‖ΔW difference‖ = {routes.relative:.3f}, cosine {routes.cosine:.3f} "
          f"(‖ΔW‖: copier {routes.norm_x:.4f}, difference {routes.norm_y:.4f})")
    print(f"  re-rank to {args.rank} keeps {100 * (1 - rank_error.relative ** 2):.1f}% of the exact difference's "
          f"energy (relative error {rank_error.relative:.3f})")
    base = sample(host, "", args.seed, SIZE)
    images = {"base": base}
    for label, lora in (("copier", copier), ("difference", exact), ("re-ranked", reranked)):
        with applied(host, [(lora, 1.0)]):
            images[label] = sample(host, "", args.seed, SIZE)
    strip = save_strip(list(images.values()), args.out / "samples.png")
    print(f"fixed-seed sample (seed {args.seed}, empty prompt): {strip} = {', '.join(images)}")
    for label in ("copier", "difference", "re-ranked"):
        print(f"  {label}: mean |change| from base {mean_abs(images[label], base):.4f}")
    gap = mean_abs(images["copier"], images["difference"])
    change = (mean_abs(images["copier"], base) + mean_abs(images["difference"], base)) / 2
    print(f"  copier vs difference: mean |gap| {gap:.4f} = {gap / change if change else 0:.2f} × their mean change")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..core.formats import read_lora
    from ..hosts.diffusers_host import DiffusersHost
    from ..hosts.tiny import save_tiny_model, write_ab_sets

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    model = save_tiny_model(args.out / "model", seed=args.seed)
    data = write_ab_sets(args.out / "data", count=2, size=SIZE, repeats=5, seed=args.seed)
    print(f"tiny SD1 model: {model}; image sets: {data[0]} (plain shirts), {data[1]} (with a printed mark)")
    host = DiffusersHost.load(model)
    copier = _train(args, host, "copier", "copier", data)
    difference = _train(args, host, "difference", "difference", data)
    parts = {s: read_lora(args.out / f"difference{s}.safetensors") for s in ("_A", "_B")}
    files = {
        "copier A": read_lora(args.out / "copier_A.safetensors"),
        "copier result": copier.lora,  # B, trained on the base with A applied
        "difference A": parts["_A"], "difference B": parts["_B"],
        "difference (exact)": difference.lora,
        "difference (re-ranked)": _rerank(args, (parts["_B"], parts["_A"])),
    }
    _describe_files(files)
    _compare(args, host, files)
    print(f"demo finished in {time.perf_counter() - started:.1f}s; everything is under {args.out}")
    return 0
