"""Data-parallel training under `accelerate launch` with two CPU processes: one LoRA, written by the main process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib_copylora.core.formats import read_lora
from lib_copylora.hosts.tiny import save_tiny_model, write_ab_sets
from lib_copylora.train.callbacks import TrainControl
from lib_copylora.train.config import LoopConfig, NetworkConfig, OptimConfig, OutputConfig, TrainConfig
from lib_copylora.train.routes import train
from toy_host import ToyHost, ToySource

ROOT = Path(__file__).resolve().parents[1]


def _accelerate() -> list[str]:
    script = Path(sys.executable).with_name("accelerate")
    if script.is_file():
        return [str(script)]
    if shutil.which("accelerate"):
        return ["accelerate"]
    pytest.skip("accelerate is not installed")


@pytest.mark.slow
def test_two_cpu_processes_train_one_lora(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    data_a, _ = write_ab_sets(tmp_path / "data", count=2, size=(64, 64), repeats=2)
    out = tmp_path / "out"
    # `--multi_gpu` picks accelerate's torchrun launcher; on a machine without GPUs the processes talk over gloo.
    command = [*_accelerate(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lib_copylora", "train",
               "--data", str(data_a), "--model", str(model), "--output", str(out), "--output_name", "dp",
               "--resolution", "64", "--min_bucket_reso", "64", "--network_dim", "2", "--max_train_steps", "3",
               "--learning_rate", "1e-3", "--log_every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "data parallel: 2 processes" in done.stdout
    assert "2 batches per epoch for each of 2 processes" in done.stdout  # 4 samples, batch 1, shared out
    assert done.stdout.count("single step 3/3") == 1  # only the main process reports
    assert sorted(p.name for p in out.iterdir()) == ["dp.safetensors"]
    lora = read_lora(out / "dp.safetensors")
    assert lora.metadata["ss_steps"] == "3" and len(lora.layers) == 192


def test_gradients_are_reduced_once_a_step_before_clipping(tmp_path):
    """`TrainControl.reduce_gradients` (the CLI's DataParallel.average_gradients, launched as several processes)
    gets each optimizer step's complete gradients, before clipping (and before fp16 unscaling, which comes first),
    and what it leaves is what the optimizer applies: zeroed, nothing moves."""
    norms = []

    def reduce(grads):
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        for grad in grads:
            grad.zero_()

    config = TrainConfig(
        network=NetworkConfig(kind="lora", rank=2, alpha=1),
        optim=OptimConfig(learning_rate=0.01, weight_decay=0.0, max_grad_norm=1e-6),
        loop=LoopConfig(max_steps=3, gradient_accumulation_steps=2, seed=0),
        output=OutputConfig(output_dir=tmp_path, output_name="r", save_precision="fp32"))
    latents = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    result = train(ToyHost(seed=0), config, ToySource(latents, 2), control=TrainControl(reduce_gradients=reduce))
    assert len(norms) == 3 and min(norms) > 1e-3  # one call a step (2 batches each), unclipped
    layers = read_lora(result.path).layers.values()
    assert layers and all(torch.count_nonzero(layer.up) == 0 for layer in layers)  # LoRA's up starts at zero
