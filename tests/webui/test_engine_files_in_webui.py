"""Files our engine writes load unchanged in the WebUI's built-in Lora: every key matched, the image changes.

The LoRA is trained by the host-agnostic trainer on the diffusers host (the CLI's path) over SD1.5's real
architecture with seeded random weights: a LoCon with text-encoder modules, so attention, feed-forward,
projections, ResNet convolutions, samplers and the text encoder are all named as kohya names them. Then the
exact difference of two such files is merged by the engine and loaded too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.webui

SUBFOLDER = "copylora-engine-test"
PROMPT = "a red cube on a wooden table"


def _train(out: Path, data: Path, name: str, seed: int) -> Path:
    from lib_copylora.hosts.diffusers_host import DiffusersHost
    from lib_copylora.hosts.full_size import sd15_pipeline
    from lib_copylora.train.config import (LoopConfig, NetworkConfig, OptimConfig, OutputConfig, RouteConfig,
                                           TrainConfig)
    from lib_copylora.train.data_config import DatasetConfig
    from lib_copylora.train.dataset import ImageDataset
    from lib_copylora.train.routes import train

    host = DiffusersHost.from_pipeline(sd15_pipeline(seed=0))
    dataset = DatasetConfig(data_dir=data, resolution="64", min_bucket_reso=64, batch_size=1)
    config = TrainConfig(
        network=NetworkConfig(kind="locon", rank=4, alpha=4.0, train_text_encoder=True),
        optim=OptimConfig(learning_rate=2e-2),
        loop=LoopConfig(max_steps=2, seed=seed),
        output=OutputConfig(output_dir=out, output_name=name, save_precision="fp16", overwrite=True),
        route=RouteConfig(route="single"),
        dataset_a=dataset,
    )
    return train(host, config, ImageDataset(dataset)).path


@pytest.fixture(scope="module")
def engine_loras(webui, tmp_path_factory):
    from lib_copylora.core.formats import read_lora, write_lora
    from lib_copylora.core.merge import MergeSpec, merge_loras
    from lib_copylora.hosts.tiny import write_ab_sets

    lora_dir = webui.folders().loras / SUBFOLDER
    lora_dir.mkdir(parents=True, exist_ok=True)
    data_a, data_b = write_ab_sets(tmp_path_factory.mktemp("sets"), count=1, size=(64, 64), repeats=1, seed=3)
    a = _train(lora_dir, data_a, "engine_a", seed=1)
    b = _train(lora_dir, data_b, "engine_b", seed=2)
    diff = merge_loras([read_lora(b), read_lora(a)], MergeSpec(ratios=(1.0, -1.0), output_name="engine_diff"))
    write_lora(diff, lora_dir / "engine_diff.safetensors", overwrite=True)
    webui.post("/sdapi/v1/refresh-loras", {})
    yield ["engine_a", "engine_diff"]
    shutil.rmtree(lora_dir, ignore_errors=True)
    webui.post("/sdapi/v1/refresh-loras", {})


@pytest.mark.parametrize("index", [0, 1])
def test_engine_files_load_fully_and_act(webui, engine_loras, index):
    name = engine_loras[index]
    listed = {entry["name"]: entry for entry in webui.get("/sdapi/v1/loras")}
    assert name in listed and listed[name]["metadata"].get("ss_base_model_version") == "sd_v1"
    plain = webui.txt2img(PROMPT, 99).image
    result = webui.txt2img(f"{PROMPT} <lora:{name}:1>", 99)
    assert np.abs(result.image.astype(np.int16) - plain.astype(np.int16)).mean() > 0.5
    assert name in result.infotext  # the "Lora hashes" entry: the network was applied
    if webui.server is not None:
        unmatched = [line for line in webui.server.log_text().splitlines()
                     if "didn't match keys" in line and name in line]
        assert unmatched == []
