"""`bench/train.py --profile`: where a step's time goes, ours against plain, under torch.profiler.

Each variant runs in its own process; the profiler records `--profile` steps after the warm-up, one profiler step
per optimizer step. Per step it reports the process's CPU time (all threads; the median step), wall time, aten calls (every
aten:: op, nested ones included: what dispatch costs), and on CUDA the kernel launches; then the ops whose calls
per step differ most between the variants, and the ops costing each variant the most self CPU time.
"""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile, schedule

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def profile_steps(run, device: torch.device, warmup: int, active: int) -> dict:
    """Call `run(tick)` (a training that calls `tick()` after every step) under the profiler."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities, schedule=schedule(wait=0, warmup=warmup, active=active, repeat=1))
    marks: list[tuple[float, float]] = []

    def tick(_step: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        marks.append((time.process_time(), time.perf_counter()))
        prof.step()

    prof.start()
    try:
        run(tick)
    finally:
        prof.stop()
    if len(marks) < warmup + active:
        raise SystemExit(f"only {len(marks)} steps ran; --steps must be at least warm-up + --profile")
    timed = marks[warmup - 1:warmup + active]
    cpu = sorted(b[0] - a[0] for a, b in zip(timed, timed[1:]))
    wall = sorted(b[1] - a[1] for a, b in zip(timed, timed[1:]))
    ops = {e.key: [e.count / active, e.self_cpu_time_total / active / 1000] for e in prof.key_averages()}
    # medians: on a shared machine a neighbour's burst lands on one step, not on all of them
    return {"cpu_ms": cpu[len(cpu) // 2] * 1000, "wall_ms": wall[len(wall) // 2] * 1000,
            "aten_calls": sum(v[0] for k, v in ops.items() if k.startswith("aten::")),
            "launches": sum(ops.get(k, [0, 0])[0] for k in LAUNCHES) if device.type == "cuda" else None,
            "ops": ops}


def report(results: dict[str, dict], top: int = 12) -> list[str]:
    """Lines comparing every variant with the first ("plain")."""
    names = list(results)
    base = results[names[0]]
    lines = [f"  {'variant':8s} {'CPU ms/step':>12s} {'wall ms/step':>13s} {'aten calls/step':>16s}"
             f"{'  launches/step' if base['launches'] is not None else ''}"]
    for name in names:
        r = results[name]
        launches = f" {r['launches']:14.0f}" if r["launches"] is not None else ""
        lines.append(f"  {name:8s} {r['cpu_ms']:12.1f} {r['wall_ms']:13.1f} {r['aten_calls']:16.0f}{launches}")
    for name in names[1:]:
        r = results[name]
        lines.append(f"{name}/{names[0]}: CPU time {r['cpu_ms'] / base['cpu_ms']:.3f}, aten calls "
                     f"{r['aten_calls'] / base['aten_calls']:.3f}")
        keys = set(r["ops"]) | set(base["ops"])
        diffs = sorted(((r["ops"].get(k, [0, 0])[0] - base["ops"].get(k, [0, 0])[0], k) for k in keys),
                       key=lambda d: -abs(d[0]))
        lines.append(f"  calls/step, {name} minus {names[0]} (largest differences):")
        lines += [f"    {d:+9.0f}  {k}" for d, k in diffs[:top] if d]
    for name in names:
        heavy = sorted(results[name]["ops"].items(), key=lambda kv: -kv[1][1])[:top]
        lines.append(f"  {name}: most self CPU time per step")
        lines += [f"    {v[1]:9.2f} ms {v[0]:7.0f} calls  {k}" for k, v in heavy]
    return lines
