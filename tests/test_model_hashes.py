"""The base checkpoint's hashes in trained files (kohya's `ss_sd_model_hash`, the WebUI's old 8-digit model hash,
and `ss_new_sd_model_hash`, the whole file's sha256): computed as the WebUI and kohya compute them, written only
when real, asked of the host once per run, and taken from the WebUI's checkpoint info where it already has them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from lib_copylora.core.formats import read_lora
from lib_copylora.core.model_hashes import ModelHashes, checked_hashes, file_hashes
from lib_copylora.core.family import Family
from lib_copylora.hosts.diffusers_host import DiffusersHost
from lib_copylora.hosts.tiny import save_tiny_model
from lib_copylora.train.dataset import ImageDataset
from lib_copylora.train.routes import train
from lib_copylora.webui import compat

from test_train_metadata_kohya import ImageToyHost, _config, _dataset, _image

SHA = "a" * 64


def _webui_old_hash(path: Path) -> str:
    """The WebUI's sd_models.model_hash, written out: sha256 of the 64 KiB at 1 MiB, first 8 hex digits."""
    with open(path, "rb") as file:
        file.seek(0x100000)
        return hashlib.sha256(file.read(0x10000)).hexdigest()[:8]


@pytest.mark.parametrize("size", [0, 1000, 0x100000 + 5, 0x100000 + 0x10000 + (3 << 20) + 7])
def test_file_hashes_are_the_webuis(tmp_path, size):
    path = tmp_path / "model.safetensors"
    path.write_bytes(os.urandom(size))
    hashes = file_hashes(path)
    assert hashes == ModelHashes(_webui_old_hash(path), hashlib.sha256(path.read_bytes()).hexdigest())
    assert hashes.metadata() == {"ss_sd_model_hash": hashes.legacy, "ss_new_sd_model_hash": hashes.sha256}


def test_a_folder_or_a_missing_file_has_no_hashes(tmp_path):
    assert file_hashes(tmp_path) == ModelHashes() and file_hashes(tmp_path / "gone.ckpt") == ModelHashes()
    assert ModelHashes().metadata() == {}


@pytest.mark.parametrize("legacy, sha256, expected", [
    ("0123abcd", SHA, ModelHashes("0123abcd", SHA)),
    ("0123ABCD", SHA.upper(), ModelHashes("0123abcd", SHA)),  # one spelling
    ("NOFILE", "IsADirectory", ModelHashes()),  # kohya's and the WebUI's placeholders are not hashes
    (None, None, ModelHashes()),
    ("", "", ModelHashes()),
    (12345678, b"a" * 64, ModelHashes()),
    ("0123abc", SHA[:-1], ModelHashes()),
    ("0123abcde", SHA + "a", ModelHashes()),
    ("0123abcg", "g" * 64, ModelHashes()),
    (" 0123abcd", SHA + "\n", ModelHashes()),
    ("0123abcd", None, ModelHashes("0123abcd", None)),  # a WebUI run with --no-hashing: the old hash only
])
def test_reported_hashes_are_kept_only_when_they_are_hashes(legacy, sha256, expected):
    assert checked_hashes(legacy, sha256) == expected


def test_the_webui_checkpoint_info_gives_the_hashes():
    info = SimpleNamespace(filename="/models/Stable-diffusion/base.safetensors", hash="0123abcd", sha256=SHA)
    model = SimpleNamespace(sd_checkpoint_info=info)
    assert compat.checkpoint_hashes(model) == ModelHashes("0123abcd", SHA)
    assert compat.checkpoint_file(model) == info.filename
    assert compat.checkpoint_hashes(SimpleNamespace(sd_checkpoint_info=SimpleNamespace(hash="NOFILE", sha256=None))) \
        == ModelHashes()
    assert compat.checkpoint_hashes(SimpleNamespace()) == ModelHashes() and compat.checkpoint_file(object()) is None


class HashingHost(ImageToyHost):
    def __init__(self, hashes):
        super().__init__(model_name="base.safetensors")
        self.hashes, self.asked = hashes, 0

    def model_hashes(self):
        self.asked += 1
        return self.hashes


@pytest.fixture()
def data(tmp_path):
    _image(tmp_path / "set" / "2_thing" / "a.png", (64, 64), 1, "thing")
    return _dataset(tmp_path / "set")


def test_every_file_of_a_run_carries_the_hashes_asked_once(tmp_path, data):
    host = HashingHost(ModelHashes("0123abcd", SHA))
    result = train(host, _config(tmp_path / "out", a=data, steps=2, save_every_n_steps=1), ImageDataset(data))
    assert len(result.written) == 2 and host.asked == 1
    for path in result.written:
        meta = read_lora(path).metadata
        assert (meta["ss_sd_model_hash"], meta["ss_new_sd_model_hash"]) == ("0123abcd", SHA)


@pytest.mark.parametrize("reported", [None, "0123abcd", ("NOFILE", "NOFILE"), ("0123abcd",), (1, 2, 3), 42])
def test_a_host_that_reports_nonsense_gets_no_hash_keys_and_the_run_saves(tmp_path, data, reported):
    result = train(HashingHost(reported), _config(tmp_path / "out", a=data, steps=1), ImageDataset(data))
    meta = read_lora(result.path).metadata
    assert "ss_sd_model_hash" not in meta and "ss_new_sd_model_hash" not in meta
    assert meta["ss_sd_model_name"] == "base.safetensors"


def test_the_diffusers_host_hashes_a_checkpoint_file_and_not_a_folder(tmp_path):
    folder = save_tiny_model(tmp_path / "model", Family.SD1)
    host = DiffusersHost.load(folder)
    assert host.model_path == folder and host.model_hashes() == ModelHashes()
    single = tmp_path / "model.safetensors"
    single.write_bytes(os.urandom(0x100000 + 0x10000))
    host.model_path = single  # as load() records a single-file checkpoint
    assert host.model_hashes() == file_hashes(single)
    assert host.model_hashes().legacy == _webui_old_hash(single)
    single.unlink()  # the file went away after loading: the run still saves, without the keys
    assert host.model_hashes() == ModelHashes()
