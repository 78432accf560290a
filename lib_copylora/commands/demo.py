"""`python -m lib_copylora demo`: the copy-machine method end to end on a tiny model, in a few CPU minutes.

It builds a tiny SD1-shaped model (nothing downloaded) and gives its UNet a short training on random plain shirts,
so that it is a base that already draws shirts, as a real base model knows its subjects. Two image sets differ in
one feature (one plain T-shirt; the same T-shirt with a red stripe and white "letters"). Both routes are trained
the way the copier articles do it (one image per set, over-fitted: every step is one epoch of 1 image × 5 repeats),
the exact difference and an SVD re-rank of it are written, and the routes are compared by what they change in the
denoiser's prediction, and by their ΔW.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from .train_report import lora_line

SIZE = (64, 64)
REPEATS = 5


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train both copy-machine routes on a tiny model and compare them",
                                   description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("copylora-demo"), help="folder for everything written")
    parser.add_argument("--steps", type=int, default=200,
                        help=f"optimizer steps per trained LoRA (4 are trained); each is one epoch of {REPEATS} "
                             "repeats of the set's image")
    parser.add_argument("--rank", type=int, default=4, help="rank (and alpha) of the trained LoRAs")
    parser.add_argument("--learning_rate", type=float, default=1e-3,
                        help="peak learning rate (cosine schedule); higher learns faster but moves the model so far "
                             "that LoRAs stop adding up")
    parser.add_argument("--images", type=int, default=1, help="images per set (the articles use one)")
    parser.add_argument("--pretrain_steps", type=int, default=None,
                        help="steps of base-model training on plain shirts before the LoRAs; default: --steps")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; the tiny model's operations are too small to gain from more")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the images and the training")
    parser.set_defaults(func=run)


def _config(args, route: str, name: str, data_a: Path, data_b: Path):
    from ..train.config import (LoopConfig, LossConfig, NetworkConfig, OptimConfig, OutputConfig, RouteConfig,
                                TrainConfig)
    from ..train.data_config import DatasetConfig

    def dataset(folder: Path) -> DatasetConfig:
        return DatasetConfig(data_dir=folder, resolution=f"{SIZE[0]},{SIZE[1]}", min_bucket_reso=64,
                             max_bucket_reso=128, seed=args.seed, batch_size=REPEATS * args.images)

    # cosine decay: the last steps average out the noise of the diffusion loss instead of adding to it;
    # min-SNR-5 weighting: ε-loss gradients of the least noisy timesteps are large and mostly noise.
    return TrainConfig(
        network=NetworkConfig(rank=args.rank, alpha=float(args.rank)),
        optim=OptimConfig(learning_rate=args.learning_rate, scheduler="cosine"),
        loop=LoopConfig(max_steps=args.steps, seed=args.seed),
        loss=LossConfig(min_snr_gamma=5.0),
        output=OutputConfig(output_dir=args.out, output_name=name, save_precision="fp32", overwrite=True),
        route=RouteConfig(route=route, keep_parts=True),
        dataset_a=dataset(data_a), dataset_b=dataset(data_b))


def _train(args, host, route: str, data: tuple[Path, Path]):
    from ..train.callbacks import Callbacks
    from ..train.dataset import ImageDataset
    from ..train.routes import train

    config = _config(args, route, route, *data)
    sources = [ImageDataset(config.dataset_a), ImageDataset(config.dataset_b)]
    state = {"losses": []}
    thirds = sorted({max(1, round(k * args.steps / 3)) for k in (1, 2, 3)})

    def on_step(step: int, loss: float, _lr: float) -> None:
        state["losses"].append(loss)
        if step in thirds:
            recent = state["losses"][state["mark"]:]
            state.update(mark=len(state["losses"]))
            state["line"].append(f"{sum(recent) / len(recent):.4f}")
        if step == args.steps:
            print(f"  {state['phase']}: loss (mean of each third) {' → '.join(state['line'])}")

    def on_phase(phase: str, _total: int) -> None:
        state.update(phase=phase, losses=[], line=[], mark=0)

    started = time.perf_counter()
    callbacks = Callbacks(on_step=on_step, on_phase=on_phase, on_log=lambda line: print(f"  {route}: {line}"))
    result = train(host, config, sources[0], sources[1], callbacks)
    print(f"  {route} route trained in {time.perf_counter() - started:.1f}s")
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


def _image(path: Path):
    from PIL import Image

    from ..hosts.tiny import image_to_tensor

    return image_to_tensor(Image.open(path))


def _compare(args, host, files: dict, images: tuple) -> None:
    import torch

    from .demo_compare import compare_deltas, compare_effects, effect, make_probe

    copier, exact, reranked = files["copier result"], files["difference (exact)"], files["difference (re-ranked)"]
    with torch.no_grad():
        latents = host.encode_images(images[1].unsqueeze(0).to(host.device))
    probe = make_probe(host, latents)
    on_a = compare_effects(effect(host, probe, copier, [(files["copier A"], 1.0)]),
                           effect(host, probe, exact, [(files["difference A"], 1.0)]))
    on_base = compare_effects(effect(host, probe, copier), effect(host, probe, exact))
    routes = compare_deltas(copier, exact)
    rank_error = compare_deltas(reranked, exact)
    print("copier vs difference, by the change each makes to the denoiser's prediction on image B (noised at 10 "
          "timesteps over the whole schedule), since many ΔW make the same change:")
    print(f"  on top of A (where both were trained):  relative gap {on_a.relative:.3f}, cosine {on_a.cosine:.3f}")
    print(f"  on the plain base (how users apply it): relative gap {on_base.relative:.3f}, "
          f"cosine {on_base.cosine:.3f}")
    print(f"  ΔW itself: ‖ΔW copier − ΔW difference‖ / ‖ΔW difference‖ = {routes.relative:.3f}, cosine "
          f"{routes.cosine:.3f} (low-rank factors in a deep network are far from unique)")
    print(f"  re-rank to {args.rank} keeps {100 * (1 - rank_error.relative ** 2):.1f}% of the exact difference's "
          f"energy (relative error {rank_error.relative:.3f})")


def _pictures(args, host, files: dict, images: tuple) -> None:
    import torch

    from .demo_compare import effect_map, save_grid, sample

    base = sample(host, args.seed, SIZE)
    with torch.no_grad():  # the tiny VAE is random: this is what a perfect copy of each image decodes to
        round_trip = host.decode_latents(host.encode_images(torch.stack(images).to(host.device)))
    round_trip = ((round_trip.float().cpu() + 1) / 2).clamp(0, 1)
    rows = [[(images[0] + 1) / 2, (images[1] + 1) / 2, round_trip[0], round_trip[1], base]]
    for part_a, result in (("copier A", "copier result"), ("difference A", "difference (exact)"),
                           ("difference A", "difference (re-ranked)")):
        a, lora = (files[part_a], 1.0), (files[result], 1.0)
        alone = sample(host, args.seed, SIZE, [lora])
        rows.append([sample(host, args.seed, SIZE, [a]), sample(host, args.seed, SIZE, [a, lora]), alone,
                     effect_map(alone, base)])
    path = save_grid(rows, args.out / "samples.png")
    print(f"{path}: row 1 = images A, B, both through the tiny random VAE (what a perfect copy decodes to), the "
          f"base's sample (seed {args.seed}); rows 2-4 = copier, difference, re-ranked: A applied, A + result, "
          "result alone, |result alone − base|×4 (where the result acts)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from ..core.formats import read_lora
    from ..hosts.diffusers_host import DiffusersHost
    from ..hosts.tiny import save_tiny_model, write_ab_sets

    torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    pretrain = args.steps if args.pretrain_steps is None else args.pretrain_steps
    model = save_tiny_model(args.out / "model", seed=args.seed, pretrain_steps=pretrain)
    data = write_ab_sets(args.out / "data", count=args.images, size=SIZE, repeats=REPEATS, seed=args.seed)
    print(f"tiny SD1 model, its UNet trained {pretrain} steps on plain shirts ({time.perf_counter() - started:.0f}s):"
          f" {model}\nimage sets ({args.images} × {REPEATS} repeats): {data[0]} (plain), {data[1]} (printed mark)")
    host = DiffusersHost.load(model)
    copier = _train(args, host, "copier", data)
    difference = _train(args, host, "difference", data)
    parts = {s: read_lora(args.out / f"difference{s}.safetensors") for s in ("_A", "_B")}
    files = {
        "copier A": read_lora(args.out / "copier_A.safetensors"),
        "copier result": copier.lora,  # B, trained on the base with A applied
        "difference A": parts["_A"], "difference B": parts["_B"],
        "difference (exact)": difference.lora,
        "difference (re-ranked)": _rerank(args, (parts["_B"], parts["_A"])),
    }
    _describe_files(files)
    images = tuple(_image(sorted((folder / f"{REPEATS}_shirt").glob("*.png"))[0]) for folder in data)
    _compare(args, host, files, images)
    _pictures(args, host, files, images)
    print(f"demo finished in {time.perf_counter() - started:.1f}s; everything is under {args.out}")
    return 0
