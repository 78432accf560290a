"""What `speed.skip_guards` saves: one compiled training run, timed in alternating blocks of steps that skip
dynamo's guards once settled (the default) and that check them all, so that drift and the machine's noise hit both.

    python bench/guards.py                                  # CPU, the tiny model, compile=unet (inductor)
    python bench/guards.py --size sd15 --resolution 64 --threads 2
    python bench/guards.py --device cuda --size sd15 --resolution 512 --precision bf16 --variant unet-graphs

Prints the median time of a step in each kind of block and their ratio. Steps before `--warmup` (compiling, and
the loop settling) are left out. The loss is read every step, so that each step is timed on its own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402

import train_setup  # noqa: E402
from lib_copylora.train import speedups  # noqa: E402
from train_setup import make_dataset, make_host, now, run_ours  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=("tiny", "tiny-sdxl", "sd15", "sdxl"), default="tiny")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--precision", choices=tuple(train_setup.PRECISIONS), default="fp32")
    parser.add_argument("--variant", choices=train_setup.COMPILED, default="unet")
    parser.add_argument("--steps", type=int, default=130)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--block", type=int, default=10, help="steps per block of one kind (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads (0: its default)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    speedups.COMPILE_BACKEND = args.compile_backend
    train_setup.READ_LOSS_EVERY = 1
    host = make_host(args.size, args.precision, args.device, args.seed)
    skipping = {"on": True}
    settled_step = speedups.settled_step
    speedups.settled_step = lambda settled: settled_step(settled and skipping["on"])
    stamps: list[tuple[int, float, bool]] = []  # (step, time it ended, whether it could skip guards)

    def tick(step: int) -> None:
        stamps.append((step, now(host.device), skipping["on"]))
        skipping["on"] = (step // args.block) % 2 == 0  # the blocks alternate from the next step on

    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(host, Path(tmp) / "data", args.resolution, args.batch, args.steps, args.seed)
        run_ours(args.variant, args, host, dataset, Path(tmp), tick, log=lambda line: None)
    times: dict[bool, list[float]] = {True: [], False: []}
    for (_, start, _), (step, end, skip) in zip(stamps, stamps[1:]):
        if step > args.warmup:
            times[skip].append(end - start)
    skip, full = (statistics.median(times[k]) * 1e3 for k in (True, False))
    print(f"{args.size} {args.resolution}px batch {args.batch} {args.precision} {args.device} {args.variant}: "
          f"{len(times[True])} steps skipping guards, {len(times[False])} checking them all")
    print(f"  median ms/step: skipping {skip:.2f}, checking all {full:.2f}; saved {full - skip:.2f} ms a step")
    print(f"  steps/s skipping / checking all: {full / skip:.3f}")


if __name__ == "__main__":
    main()
