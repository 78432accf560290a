"""Does compiled code give the eager LoRA gradients on this device? A correctness check, not a timing.

For each case it runs one forward and backward of the UNet with a LoRA attached (its up factors random, so every
module acts), once eagerly and once compiled by inductor: with `--unit blocks` the host's first `--units`
transformer blocks (`SpeedConfig.compile=blocks`), with `--unit unet` the whole UNet as one graph (`compile=unet`).
It prints the largest gradient difference relative to the largest gradient, with the tensor where it is. Weights
and activations are float32, so anything above ~1e-4 is a fault, not rounding.

Batch 1 is where inductor's CPU code (torch 2.13) once went wrong: a block's input is a transposed view of the conv
before it, and the LayerNorm backward over it lost rows of a tile (2-10 % off with compiled blocks, 5 % through a
whole compiled UNet). `speedups.contiguous_inputs` now makes every transformer block's input contiguous first
(eagerly before a compiled block, inside the graph of a compiled UNet); each case is run both ways (`as passed`:
the view as the host passes it, the fault's trigger; `contiguous`: what training does), so the output says whether
this device's inductor has the fault and that the trainer's path does not.

    python bench/compile_check.py                                  # the tiny model on the CPU (about a minute)
    python bench/compile_check.py --unit unet --resolution 128     # the whole tiny UNet (minutes on a CPU)
    python bench/compile_check.py --device cuda --size sd15 --resolution 512 [--unit unet]
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_copylora.train import speedups  # noqa: E402
from lib_copylora.train.config import CompileMode, NetworkConfig  # noqa: E402
from lib_copylora.train.host import Component  # noqa: E402
from lib_copylora.train.network import LoraNetwork  # noqa: E402

FAULT = 1e-4  # float32 rounding stays orders of magnitude below this


def _network(host, seed: int) -> LoraNetwork:
    network = LoraNetwork(host.target_modules({Component.UNET}), NetworkConfig(rank=4), seed=seed,
                          device=host.device)
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules_by_name.values():
        weight = module.lora_up.weight
        weight.data.copy_(torch.randn(weight.shape, generator=generator) * 0.1)
    return network


def _gradients(host, network, inputs) -> dict[str, torch.Tensor]:
    for parameter in network.parameters():
        parameter.grad = None
    latents, timesteps, cond = inputs
    with network.attached():
        host.predict_noise(latents, timesteps, cond).square().mean().backward()
    return {name: p.grad.detach().clone() for name, p in network.named_parameters() if p.grad is not None}


def _inputs(host, batch: int, resolution: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    side = resolution // 8
    latents = torch.randn(batch, 4, side, side, generator=generator).to(host.device)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator).to(host.device)
    with torch.no_grad():
        cond = host.encode_prompts(["a photo of a shirt"] * batch)
    return latents, timesteps, cond


def compiled_gradients(host, network, inputs, unit: str, units: int, as_passed: bool) -> dict[str, torch.Tensor]:
    """The gradients with the first `units` blocks, or the whole UNet, compiled; `as_passed`: without the
    contiguous input copy."""
    compiled = speedups.units_to_compile(host, CompileMode(unit))
    compiled = compiled if unit == "unet" else compiled[:units]
    blocks = speedups.blocks_within(compiled)
    torch._dynamo.reset()
    try:
        with nullcontext() if as_passed else speedups.contiguous_inputs(blocks):
            with speedups.compiled_forwards(compiled, {}, lambda line: None, dynamic_batch=False):
                return _gradients(host, network, inputs)
    finally:
        torch._dynamo.reset()


def check(host, batch: int, resolution: int, unit: str, units: int, as_passed: bool,
          seed: int) -> tuple[float, str]:
    """The largest gradient difference relative to the largest gradient, and the line that reports it."""
    network, inputs = _network(host, seed), _inputs(host, batch, resolution, seed)
    eager = _gradients(host, network, inputs)
    started = time.perf_counter()
    compiled = compiled_gradients(host, network, inputs, unit, units, as_passed)
    largest = max(g.abs().max().item() for g in eager.values())
    worst = max(eager, key=lambda name: (compiled[name] - eager[name]).abs().max().item())
    error = (compiled[worst] - eager[worst]).abs().max().item() / largest
    layout = "as passed" if as_passed else "contiguous"
    verdict = "ok" if error < FAULT else "DIFFERS"
    return error, (f"batch {batch}, block input {layout:10}: max |grad diff| / max |grad| = {error:.2e} over "
                   f"{len(eager)} tensors ({verdict}; worst {worst.split('.', 1)[-1]}; "
                   f"{time.perf_counter() - started:.0f} s)")


def main() -> int:
    from train_setup import make_host  # bench/'s own module

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=("tiny", "tiny-sdxl", "sd15", "sdxl"), default="tiny")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batches", default="1,2", help="comma-separated batch sizes")
    parser.add_argument("--unit", choices=("blocks", "unet"), default="blocks",
                        help="compile transformer blocks (compile=blocks) or the whole UNet (compile=unet)")
    parser.add_argument("--units", type=int, default=1, help="with --unit blocks: how many transformer blocks to "
                        "compile (from the first: the first follows a conv, so its input is a transposed view)")
    parser.add_argument("--layouts", default="as-passed,contiguous",
                        help="which block inputs to check: as-passed (the fault's trigger), contiguous (training's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    layouts = args.layouts.split(",")
    if not set(layouts) <= {"as-passed", "contiguous"}:
        parser.error(f"--layouts takes as-passed and/or contiguous, not {args.layouts}")
    reason = speedups.compile_unavailable(torch.device(args.device))
    if reason is not None:
        print(f"compile check: {reason}; nothing to check")
        return 1
    host = make_host(args.size, "fp32", args.device, args.seed)
    host.unet.requires_grad_(False)
    what = "the whole UNet" if args.unit == "unet" else f"{args.units} block(s)"
    print(f"compile check, {args.size} at {args.resolution} px on {args.device}, torch {torch.__version__}, "
          f"{what} compiled with inductor:", flush=True)
    faults = 0
    for batch in (int(b) for b in args.batches.split(",")):
        for as_passed in [layout == "as-passed" for layout in layouts]:
            error, line = check(host, batch, args.resolution, args.unit, args.units, as_passed, args.seed)
            faults += not as_passed and error >= FAULT  # the trainer's own path
            print("  " + line, flush=True)
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
