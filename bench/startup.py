"""Start-up cost of the command line, against a bare `import torch` measured in the same run.

Run from the repository root: `python bench/startup.py [--repeats N]`.

Each command runs in a fresh interpreter (as a user types it), N times, interleaved with the baseline so a busy
neighbour slows all of them alike; the median of each is printed in seconds, with its difference from and ratio
to `python -c "import torch"`. Measured: `merge --help`, `presets`, and `inspect` of a plain rank-4 SD1 LoRA
written to a temporary folder. The target (issue 12): each within 1 s of torch's own import time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_plain_lora(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {f"{name}.lora_down.weight": torch.randn(4, 320, generator=gen).half(),
               f"{name}.lora_up.weight": torch.randn(320, 4, generator=gen).half(),
               f"{name}.alpha": torch.tensor(1.0)}
    save_file(tensors, str(path), {"ss_base_model_version": "sd_v1"})


def timed(argv: list[str]) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    started = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (median reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lora = Path(tmp) / "plain.safetensors"
        write_plain_lora(lora)
        cli = [sys.executable, "-m", "lib_copylora"]
        commands = {
            "import torch (baseline)": [sys.executable, "-c", "import torch"],
            "merge --help": [*cli, "merge", "--help"],
            "presets": [*cli, "presets"],
            "inspect plain LoRA": [*cli, "inspect", str(lora)],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        timed(commands["import torch (baseline)"])  # warm the file cache before measuring anything
        for _ in range(args.repeats):
            for name, argv in commands.items():
                times[name].append(timed(argv))
    base = statistics.median(times["import torch (baseline)"])
    print(f"{'command':<26}{'median s':>10}{'- torch s':>11}{'/ torch':>9}   (median of {args.repeats})")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<26}{median:>10.2f}{median - base:>+11.2f}{median / base:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
