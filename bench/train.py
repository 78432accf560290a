"""Benchmark of our trainer against a plain hand-written LoRA training loop, on the same model, data and settings.

Run from the repository root:
    python bench/train.py                                    # CPU, the tiny SD1-shaped model: plain vs ours
    python bench/train.py --size sd15 --resolution 64 --batch 1     # CPU, SD1.5's architecture (random weights)
    python bench/train.py --profile 4 --size sd15 --resolution 64 --batch 1   # where a step's time goes
    python bench/train.py --device cuda --size sd15 --resolution 512          # a GPU
    python bench/train.py --gpu-table                         # the whole GPU table in one call (bench/gpu_table.sh)
    python bench/train.py --gpu-table --smoke                 # the same code path on the CPU with tiny models

The variants are described in `bench/train_setup.py` (plain, lycoris, ours, blocks, graphs, unet, unet-graphs,
lowmem). Outside the table,
each variant runs in its own child process, so that its peak memory is its own; steps/s is timed between steps
`--warmup` and `--steps`. Targets: ours ≥ 0.95 × plain in steps/s, peak memory within 10 %. In the table, one
child per (model, precision) builds the model once and runs every batch size and variant on it in turn (CUDA peak
reset before each), so the whole table fits one device call; `--budget-s` stops starting new children in time.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib_copylora.hosts.full_size import sd15_pipeline  # noqa: E402,F401  (bench/webui_train.py uses it)
import train_setup  # noqa: E402
from train_setup import (PRECISIONS, VARIANTS, make_dataset, make_host, now, run_ours,  # noqa: E402
                         run_plain)

TARGET_SPEED = 0.95
TARGET_MEMORY = 1.10
TABLE_CASES = {"sd15": 512, "sdxl": 1024}  # model → resolution of the GPU table
SMOKE_CASES = {"tiny": 64, "tiny-sdxl": 64}
BATCH_1_ONLY = ("lowmem", "graphs", "unet-graphs")  # the memory budgets are for batch 1; CUDA graphs record per shape


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def train_variant(variant: str, args, host, dataset, folder: Path, tick) -> None:
    if variant == "plain":
        run_plain(args, host, dataset, tick)
    else:
        run_ours(variant, args, host, dataset, folder, tick, log=lambda text: print(text, file=sys.stderr))


def measure(variant: str, args, host, dataset, folder: Path) -> dict:
    """Steps/s between steps `warmup` and `steps`, and the CUDA peak (reset first)."""
    if host.device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    stamps: list[tuple[int, float]] = []
    try:
        train_variant(variant, args, host, dataset, folder, lambda step: stamps.append((step, now(host.device))))
    except torch.cuda.OutOfMemoryError:
        return {"variant": variant, "batch": args.batch, "error": "out of memory"}
    # A variant reading its loss every n steps reports n steps at once, when the n-th is done: time those.
    every = train_setup.READ_LOSS_EVERY if variant in train_setup.COMPILED else 1
    timed = [(step, t) for step, t in stamps if step >= args.warmup and (step % every == 0 or step == args.steps)]
    rate = (timed[-1][0] - timed[0][0]) / (timed[-1][1] - timed[0][1])
    result = {"variant": variant, "batch": args.batch, "steps_per_s": rate, "images_per_s": rate * args.batch}
    if host.device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return result


def _measure_or_profile(variant: str, args, host, dataset, folder: Path) -> dict:
    if variant in train_setup.COMPILED:  # each compiled variant starts from an empty dynamo cache
        torch._dynamo.reset()
    if not args.profile:
        return measure(variant, args, host, dataset, folder)
    from train_profile import profile_steps

    def run(tick):
        train_variant(variant, args, host, dataset, folder, tick)
    return {"variant": variant, **profile_steps(run, host.device, args.warmup, args.profile)}


def run_child(args) -> None:
    """One variant (or, with --table-child, one model and precision of the table); prints JSON lines."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.read_loss_every:
        train_setup.READ_LOSS_EVERY = args.read_loss_every
    if args.profile:  # one step callback per optimizer step, so that each profiler step is one training step
        train_setup.READ_LOSS_EVERY = 1
    if args.compile_backend:
        from lib_copylora.train import speedups

        speedups.COMPILE_BACKEND = args.compile_backend  # a bench-only switch: --smoke traces, inductor compiles
    torch.manual_seed(args.seed)
    host = make_host(args.size, args.precision, args.device, args.seed)
    batches = [int(b) for b in args.batches.split(",")] if args.table_child else [args.batch]
    variants = args.variants.split(",")
    for batch in batches:
        args.batch = batch
        with tempfile.TemporaryDirectory() as tmp:
            dataset = make_dataset(host, Path(tmp) / "data", args.resolution, batch, args.steps, args.seed)
            before = _rss_mb()
            for variant in variants:
                if variant in BATCH_1_ONLY and batch != batches[0]:
                    continue
                try:
                    result = _measure_or_profile(variant, args, host, dataset, Path(tmp))
                except Exception as error:  # noqa: BLE001 - one variant's failure is a row; the others still run
                    traceback.print_exc()
                    result = {"variant": variant, "batch": batch,
                              "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"}
                if variant == "lowmem":  # says whether 8-bit AdamW was there (bitsandbytes) or plain AdamW ran
                    result["variant"] = f"lowmem-{train_setup.lowmem_optimizer()}"
                result.update(size=args.size, precision=args.precision, rss_before_mb=before,
                              peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                print(json.dumps(result), flush=True)


def _child(args, overrides: dict, timeout: float | None = None, echo: bool = False) -> list[dict]:
    """Runs one child; its JSON result lines as they come (printed at once with `echo`), kept when it is stopped at
    `timeout` or fails later, so that a table cut short still reports what it measured."""
    values = {**vars(args), **overrides}
    command = [sys.executable, __file__, "--child"] + [
        f"--{k.replace('_', '-')}={v}" for k, v in values.items()
        if v not in (None, False) and k not in ("child", "gpu_table")]
    command = [c[:-5] if c.endswith("=True") else c for c in command]
    rows: list[dict] = []
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        timer = threading.Timer(timeout, child.kill) if timeout else None
        if timer:
            timer.start()
        for line in child.stdout:
            if line.startswith("{"):
                rows.append(json.loads(line))
                if echo:
                    print(f"  measured: {line.strip()}", flush=True)
        child.wait()
        timed_out = timer is not None and not timer.is_alive() and child.returncode < 0
        if timer:
            timer.cancel()
        errors.seek(0)
        text = errors.read()
        tail = text[-3000:]
    if echo:  # the trainer's compile lines and dynamo's recompile warnings say what the compiled variants did
        notes = [line for line in text.splitlines() if line.startswith("compile:") or "recompile" in line]
        print("\n".join(f"  child: {line[:300]}" for line in dict.fromkeys(notes)), flush=True)
    if timed_out:
        return rows + [{"error": "ran past the time budget", **overrides}]
    if child.returncode != 0:
        return rows + [{"error": f"failed:\n{tail}", **overrides}]
    return rows


def _ratio_lines(ours: dict, plain: dict) -> list[str]:
    lines = []
    speed = ours["steps_per_s"] / plain["steps_per_s"]
    lines.append(f"speed ratio {ours['variant']}/plain {speed:.3f} (target >= {TARGET_SPEED}): "
                 f"{'ok' if speed >= TARGET_SPEED else 'MISS'}")
    key = "cuda_peak_mb" if "cuda_peak_mb" in ours else "peak_rss_mb"
    memory = ours[key] / plain[key]
    label = "CUDA peak" if key == "cuda_peak_mb" else "peak RSS"
    lines.append(f"{label} ratio {ours['variant']}/plain {memory:.3f} (target <= {TARGET_MEMORY}): "
                 f"{'ok' if memory <= TARGET_MEMORY else 'MISS'}")
    return lines


def _result_line(r: dict) -> str:
    if "error" in r:
        return f"  {r.get('variant', '?'):8s}: {r['error']}"
    cuda = f", CUDA peak {r['cuda_peak_mb']:.0f} MiB" if "cuda_peak_mb" in r else ""
    return (f"  {r['variant']:8s}: {r['steps_per_s']:.3f} steps/s, {r['images_per_s']:.2f} images/s, peak RSS "
            f"{r['peak_rss_mb']:.0f} MiB (before training {r['rss_before_mb']:.0f}){cuda}")


def compare(args) -> int:
    variants = args.variants.split(",")
    results = [r for v in variants for r in _child(args, {"variants": v})]
    print(f"{args.size} model, {args.resolution}px, batch {args.batch}, rank {args.rank}, {args.precision}, "
          f"{args.device}, steps {args.warmup}..{args.steps} timed")
    if args.profile:
        from train_profile import report

        print("\n".join(report({r["variant"]: r for r in results if "error" not in r})))
        return 0
    print("\n".join(_result_line(r) for r in results))
    plain = next((r for r in results if r.get("variant") == "plain" and "error" not in r), None)
    for r in results:
        if plain is not None and r is not plain and "error" not in r:
            print("\n".join(_ratio_lines(r, plain)))
    return 1 if any("error" in r for r in results) else 0


def table_cases(smoke: bool, device: str) -> list[tuple[str, str]]:
    """(model, precision) in the order they run: bf16 first (it has the memory variant), SD1.5 before SDXL."""
    sizes = SMOKE_CASES if smoke else TABLE_CASES
    precisions = ("fp32",) if smoke and device == "cpu" else ("bf16", "fp16")
    return [(size, precision) for precision in precisions for size in sizes]


def table_variants(precision: str, first: bool) -> str:
    """Every case: plain, ours, unet, blocks; bf16 also lowmem; the first case also unet-graphs and graphs (CUDA
    graphs, batch 1). The most promising come first, so a budget that runs out takes what was measured before
    (lowmem's peaks: 2026-11-28): unet-graphs, the candidate for 12 steps/s at batch 1, right after the baselines.
    The whole UNet is compiled once per case and batch size: its first step takes the longest."""
    compiled = "unet-graphs,unet,graphs,blocks" if first else "unet,blocks"
    return "plain,ours," + compiled + (",lowmem" if precision != "fp16" else "")


def gpu_table(args) -> int:
    """Batch 1 and 8 × bf16 and fp16 × SD1.5 512 px and SDXL 1024 px × plain / ours / blocks / unet (+ lowmem,
    graphs, unet-graphs); each child's rows are printed as they come and kept when the budget stops it."""
    sizes = SMOKE_CASES if args.smoke else TABLE_CASES
    start, results = time.perf_counter(), []
    for index, (size, precision) in enumerate(table_cases(args.smoke, args.device)):
        left = args.budget_s - (time.perf_counter() - start)
        if left < 20:
            results.append({"size": size, "precision": precision, "error": "not run: time budget spent"})
            _print_table(results, time.perf_counter() - start)
            continue
        overrides = {"size": size, "precision": precision, "resolution": args.resolution or sizes[size],
                     "table_child": True, "variants": table_variants(precision, first=index == 0)}
        rows = _child(args, overrides, timeout=left, echo=True)
        results += [{**overrides, **r} for r in rows]
        _print_table(results, time.perf_counter() - start)
    return 1 if any("error" in r for r in results) else 0


def _print_table(results: list[dict], elapsed: float) -> None:
    print(f"--- GPU table after {elapsed:.0f} s ---")
    print("| model | px | batch | precision | variant | steps/s | images/s | CUDA peak MiB | vs plain |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['size']} | {r.get('resolution', '')} | {r.get('batch', '')} | {r['precision']} | "
                  f"{r.get('variant', 'all')} | {r['error'].splitlines()[0]} | | | |")
            continue
        plain = next((p for p in results if p.get("variant") == "plain" and "error" not in p
                      and (p["size"], p["precision"], p["batch"]) == (r["size"], r["precision"], r["batch"])), None)
        ratio = f"{r['steps_per_s'] / plain['steps_per_s']:.2f}" if plain else ""
        peak = f"{r['cuda_peak_mb']:.0f}" if "cuda_peak_mb" in r else ""
        print(f"| {r['size']} | {r['resolution']} | {r['batch']} | {r['precision']} | {r['variant']} | "
              f"{r['steps_per_s']:.2f} | {r['images_per_s']:.2f} | {peak} | {ratio} |")
    sys.stdout.flush()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda for --gpu-table, else cpu)")
    parser.add_argument("--size", choices=("tiny", "tiny-sdxl", "sd15", "sdxl"), default="tiny")
    parser.add_argument("--resolution", type=int, default=None, help="default: 128 (the table: 512 / 1024)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="default: 40 (the table: 20)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out of the timing (default 5; "
                        "the table: 8, for compilation)")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default=None,
                        help="autocast dtype (default: fp16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--variants", default="plain,ours", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile N steps after the warm-up instead of timing (see bench/train_profile.py)")
    parser.add_argument("--gpu-table", action="store_true", help="run the whole GPU table")
    parser.add_argument("--smoke", action="store_true", help="the table with tiny models, a few steps")
    parser.add_argument("--budget-s", type=float, default=450.0, help="the table starts no child after this")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend of the compiled variants (default inductor; --smoke: eager)")
    parser.add_argument("--read-loss-every", type=int, default=None,
                        help="the compiled variants read their loss every n steps (default 10; --smoke: 2)")
    parser.add_argument("--batches", default="1,8", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help="torch's CPU threads (1 steadies --profile "
                        "on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--table-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.compile_backend = args.compile_backend or ("eager" if args.smoke else None)
    args.read_loss_every = args.read_loss_every or (2 if args.smoke else None)
    args.device = args.device or ("cuda" if args.gpu_table and not args.smoke else "cpu")
    args.precision = args.precision or ("fp16" if args.device.startswith("cuda") else "fp32")
    table = args.gpu_table or args.table_child
    args.steps = args.steps or (6 if args.smoke else 20 if table else 40)
    args.warmup = args.warmup or (2 if args.smoke else 8 if table else 5)
    if not args.gpu_table:
        args.resolution = args.resolution or 128
    if args.steps <= args.warmup + max(args.profile, 1) - 1:
        parser.error("--steps must exceed --warmup (plus --profile steps)")
    return args


def main() -> int:
    args = parse_args()
    if args.child:
        run_child(args)
        return 0
    if args.gpu_table:
        return gpu_table(args)
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
