"""Shared by the hostile-input corpus (test_hostile_cli*.py): a workspace, running the CLI in-process, and the
checks every refused case makes (exit 2, one `error:` line naming the problem, no traceback, nothing changed)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save as save_safetensors

from lib_copylora.cli import main
from lib_copylora.hosts.tiny import save_tiny_model, write_ab_sets

REPO = Path(__file__).resolve().parents[1]
ATTN = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
SMALL_RUN = ["--resolution", "64", "--min_bucket_reso", "64", "--network_dim", "2", "--max_train_steps", "1",
             "--save_precision", "fp32"]


# ----------------------------------------------------------------------------------------------------- helpers
def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with the hash of its bytes (links and folders by kind), to compare before/after."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            state[key] = "link:" + os.readlink(path)
        elif path.is_file():
            state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[key] = "folder"
    return state


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(root: Path, argv, capsys, *expected: str) -> str:
    """Run `argv`; it must exit 2 with one error line holding every `expected` text, and change nothing."""
    before = snapshot(root)
    code, out, err = run_cli(argv, capsys)
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1, (code, out, err)
    for text in expected:
        assert text in errors[0], (text, errors[0])
    assert snapshot(root) == before, "a refused run changed or left files"
    return errors[0]


def image_bytes(fmt: str, size=(64, 64), seed=0) -> bytes:
    pixels = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8")
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, fmt)
    return stream.getvalue()


def write_lora_file(path: Path, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, out_dim, in_dim in ((TE, 8, 6), (ATTN, 10, 10)):
        tensors[f"{name}.lora_down.weight"] = torch.randn(2, in_dim, generator=g)
        tensors[f"{name}.lora_up.weight"] = torch.randn(out_dim, 2, generator=g)
        tensors[f"{name}.alpha"] = torch.tensor(1.0)
    path.write_bytes(save_safetensors(tensors, metadata={"ss_base_model_version": "sd_v1"}))
    return path


def make_workspace(tmp_path_factory):
    """A tiny model, a good image set and two LoRAs, shared read-only by every case (their hashes are checked)."""
    root = tmp_path_factory.mktemp("hostile")
    save_tiny_model(root / "model")
    data_a, _ = write_ab_sets(root / "data", count=2, size=(64, 64), repeats=1)
    write_lora_file(root / "B.safetensors", 1)
    write_lora_file(root / "A.safetensors", 2)
    return root, data_a


def train_argv(root: Path, data: Path, *flags) -> list:
    return ["train", "--model", root / "model", "--output", root / "out", "--data", data, *SMALL_RUN, *flags]
