"""One atomic write for LoRA files, resume states and the preset file (core/atomic.py): the same fsync, the same
mode, nothing left behind when writing fails, never over an existing file unless asked."""

import os

import pytest
import torch

from lib_copylora.core.atomic import NEW_FILE_MODE, write_atomic
from lib_copylora.core.errors import OutputExists
from lib_copylora.core.safetensors_io import write_safetensors
from lib_copylora.train.checkpoint import save_state


def test_every_writer_gives_the_same_mode_and_keeps_an_old_files(tmp_path):
    lora = write_safetensors(tmp_path / "x.safetensors", {"a": torch.zeros(2)})
    state = save_state(tmp_path / "x.trainstate", {"step": 3})
    assert lora.stat().st_mode & 0o777 == NEW_FILE_MODE == state.stat().st_mode & 0o777
    state.chmod(0o600)
    save_state(state, {"step": 4})
    assert state.stat().st_mode & 0o777 == 0o600
    assert torch.load(state, weights_only=True)["step"] == 4


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_bytes(b"old")

    def fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_atomic(path, fail, overwrite=True)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["keep.txt"]
    with pytest.raises(OutputExists):
        write_atomic(path, lambda handle: handle.write(b"new"))
    assert path.read_bytes() == b"old"


def test_the_write_is_fsynced_before_it_is_published(tmp_path, monkeypatch):
    order = []
    real_fsync, real_link = os.fsync, os.link
    monkeypatch.setattr(os, "fsync", lambda fd: (order.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "link", lambda a, b: (order.append("publish"), real_link(a, b))[1])
    write_atomic(tmp_path / "y.bin", lambda handle: handle.write(b"data"))
    assert order == ["fsync", "publish"]
