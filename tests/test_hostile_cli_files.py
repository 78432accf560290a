"""Hostile files through `python -m lib_copylora`, in-process: unreadable images in a training set, truncated and
lying safetensors headers (LoRAs for inspect and merge, checkpoints for train), broken model folders. The same
checks as test_hostile_cli.py: exit 2, one `error:` line naming the file and the reason, no traceback, nothing
changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save as save_safetensors

from hostile_support import SMALL_RUN, assert_refused, image_bytes, make_workspace, run_cli, snapshot
from lib_copylora.core.formats import read_lora
from lib_copylora.train.data_config import DatasetConfig
from lib_copylora.train.dataset import scan_dataset


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory)


# -------------------------------------------------------------------------------------------------- bad images
PNG, JPG = image_bytes("PNG"), image_bytes("JPEG")


def _corrupt_idat(data: bytes) -> bytes:
    data = bytearray(data)
    data[data.index(b"IDAT") + 20] ^= 0xFF
    return bytes(data)


def _make_bad_image(folder: Path, kind: str) -> Path:
    """One unreadable image of the given kind in `folder`; returns its path."""
    makers = {
        "truncated.png": lambda: PNG[: len(PNG) // 2],
        "truncated.jpg": lambda: JPG[: len(JPG) // 2],
        "text.jpg": lambda: b"this is a text file, not a photo\n",
        "empty.png": lambda: b"",
        "corrupt.png": lambda: _corrupt_idat(PNG),
        "bomb_warning.png": lambda: image_bytes("PNG", size=(80, 80)),  # between PIL's limit and twice it
        "bomb_error.png": lambda: image_bytes("PNG", size=(120, 120)),  # above twice the limit
    }
    path = folder / kind
    if kind == "link.png":
        path.symlink_to(folder / "missing.png")
    elif kind == "private.png":
        path.write_bytes(PNG)
        path.chmod(0)
    else:
        path.write_bytes(makers[kind]())
    return path


BAD_IMAGES = {
    "truncated.png": "truncated or corrupt", "truncated.jpg": "truncated or corrupt",
    "text.jpg": "not an image", "empty.png": "empty file (0 bytes)", "corrupt.png": "truncated or corrupt",
    "bomb_warning.png": "too many pixels", "bomb_error.png": "too many pixels", "link.png": "cannot be read",
    "private.png": "cannot be read (Permission denied)",
}
_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
IMAGE_KINDS = [pytest.param(kind, marks=pytest.mark.skipif(_ROOT, reason="root reads any file"))
               if kind == "private.png" else kind for kind in BAD_IMAGES]


@pytest.fixture
def small_pixel_limit(monkeypatch):
    """PIL's decompression-bomb limit lowered so that an 80×80 image is a 'bomb': 64×64 images stay fine."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)


def _set_with(tmp_path: Path, workspace_data: Path, *kinds: str) -> Path:
    folder = tmp_path / "set" / "1_shirt"
    folder.mkdir(parents=True)
    for image in sorted((workspace_data / "1_shirt").glob("*.png")):
        (folder / image.name).write_bytes(image.read_bytes())
    for kind in kinds:
        _make_bad_image(folder, kind)
    return folder.parent


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_an_unreadable_image_refuses_the_set_naming_it(workspace, tmp_path, capsys, small_pixel_limit, kind):
    root, data = workspace
    dataset = _set_with(tmp_path, data, kind)
    argv = ["train", "--model", root / "model", "--output", tmp_path / "out", "--data", dataset, *SMALL_RUN]
    line = assert_refused(tmp_path, argv, capsys, f"1_shirt/{kind}", BAD_IMAGES[kind], "skip_unreadable_images")
    assert "1 of the images" in line
    summary = scan_dataset(DatasetConfig(data_dir=dataset, resolution="64", min_bucket_reso=64))
    assert [(u.path.name, BAD_IMAGES[kind] in u.reason) for u in summary.unreadable] == [(kind, True)]
    assert summary.images == 2 and f"1_shirt/{kind} ({BAD_IMAGES[kind]}" in summary.describe()


def test_many_unreadable_images_are_listed_by_the_first_few_and_a_count(workspace, tmp_path, capsys,
                                                                      small_pixel_limit):
    root, data = workspace
    kinds = [k for k in BAD_IMAGES if k != "private.png"]
    dataset = _set_with(tmp_path, data, *kinds)
    argv = ["train", "--model", root / "model", "--output", tmp_path / "out", "--data", dataset, *SMALL_RUN]
    line = assert_refused(tmp_path, argv, capsys, f"{len(kinds)} of the images", f"and {len(kinds) - 3} more")
    assert line.count("1_shirt/") == 3


def test_a_set_of_only_unreadable_images_says_so(workspace, tmp_path, capsys):
    root, _ = workspace
    folder = tmp_path / "set" / "1_shirt"
    folder.mkdir(parents=True)
    _make_bad_image(folder, "text.jpg")
    argv = ["train", "--model", root / "model", "--output", tmp_path / "out", "--data", folder.parent,
            *SMALL_RUN, "--skip_unreadable_images"]
    assert_refused(tmp_path, argv, capsys, "no readable images", "text.jpg (not an image")


def test_a_caption_that_is_not_text_is_refused_naming_it(workspace, tmp_path, capsys):
    root, data = workspace
    dataset = _set_with(tmp_path, data)
    caption = next((dataset / "1_shirt").glob("*.png")).with_suffix(".txt")
    caption.write_bytes(b"\xff\xfe\x00binary")
    argv = ["train", "--model", root / "model", "--output", tmp_path / "out", "--data", dataset, *SMALL_RUN]
    assert_refused(tmp_path, argv, capsys, caption.name, "not UTF-8")


def test_skip_unreadable_images_trains_without_them_and_lists_them(workspace, tmp_path, capsys, small_pixel_limit):
    root, data = workspace
    kinds = [k for k in BAD_IMAGES if k != "private.png"]
    dataset = _set_with(tmp_path, data, *kinds)
    before = snapshot(dataset)
    out = tmp_path / "out"
    code, printed, err = run_cli(["train", "--model", root / "model", "--output", out, "--data", dataset,
                                  *SMALL_RUN, "--skip_unreadable_images"], capsys)
    assert code == 0 and "Traceback" not in printed + err, err
    assert f"unreadable: {len(kinds)} images" in printed and "1_shirt/text.jpg (not an image" in printed
    assert "single step 1/1" in printed
    assert snapshot(dataset) == before
    assert sorted(p.name for p in out.iterdir()) == ["copylora.safetensors"]
    assert read_lora(out / "copylora.safetensors").metadata["ss_num_train_images"] == "2"


# ----------------------------------------------------------------------------------------- safetensors headers
def _with_header(data: bytes, edit) -> bytes:
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size:]


def _first_tensor(header: dict) -> dict:
    return header[sorted(k for k in header if k != "__metadata__")[0]]


def _overlap(header: dict) -> None:
    names = sorted(k for k in header if k != "__metadata__")
    header[names[1]]["data_offsets"] = header[names[0]]["data_offsets"]


def broken_safetensors(data: bytes) -> dict[str, bytes]:
    """A family of truncated and lying files made from one good file."""
    size = int.from_bytes(data[:8], "little")
    header_text = data[8:8 + size]
    return {
        "empty": b"",
        "4-bytes": data[:4],
        "half-header": data[:8 + size // 2],
        "header-only": data[:8 + size],
        "one-byte-short": data[:-1],
        "half": data[:len(data) // 2],
        "huge-length": (2**63).to_bytes(8, "little") + data[8:],
        "length-past-end": len(data).to_bytes(8, "little") + data[8:],
        "zero-length": (0).to_bytes(8, "little") + data[8:],
        "not-json": data[:8] + b"\xff" * size + data[8 + size:],
        "json-list": data[:8] + b"[]".ljust(size) + data[8 + size:],
        "not-utf8": data[:8] + header_text.replace(b'"F32"', b'"\xff32"') + data[8 + size:],
        "bad-dtype": _with_header(data, lambda h: _first_tensor(h).update(dtype="Q99")),
        "negative-shape": _with_header(data, lambda h: _first_tensor(h).update(shape=[-2, 6])),
        "offsets-past-end": _with_header(data, lambda h: _first_tensor(h).update(data_offsets=[0, 10**9])),
        "offsets-vs-shape": _with_header(data, lambda h: _first_tensor(h).update(shape=[3, 6])),
        "overlapping": _with_header(data, _overlap),
        "metadata-not-strings": _with_header(data, lambda h: h.update(__metadata__={"ss_network_dim": 8})),
        "text-file": b"this is not a safetensors file at all, just text\n" * 3,
    }


BROKEN = sorted(broken_safetensors(save_safetensors({"a": torch.zeros(2, 6), "b": torch.ones(3)})))


@pytest.mark.parametrize("variant", BROKEN)
def test_a_truncated_or_lying_lora_is_refused_by_inspect_and_merge(workspace, tmp_path, capsys, variant):
    root, _ = workspace
    bad = tmp_path / f"{variant}.safetensors"
    bad.write_bytes(broken_safetensors((root / "A.safetensors").read_bytes())[variant])
    assert_refused(tmp_path, ["inspect", bad], capsys, f"{variant}.safetensors")
    assert_refused(tmp_path, ["merge", "--models", root / "B.safetensors", bad, "--ratios", "1", "-1", "--save_to",
                              tmp_path / "out.safetensors"], capsys, f"{variant}.safetensors")


@pytest.mark.parametrize("variant", ["empty", "half-header", "huge-length", "not-json", "offsets-past-end",
                                     "overlapping", "text-file"])
def test_a_truncated_or_lying_checkpoint_is_refused_as_model(workspace, tmp_path, capsys, variant):
    root, data = workspace
    good = next((root / "model" / "unet").glob("*.safetensors")).read_bytes()
    model = tmp_path / "model.safetensors"
    model.write_bytes(broken_safetensors(good)[variant])
    argv = ["train", "--model", model, "--output", tmp_path / "out", "--data", data, *SMALL_RUN]
    assert_refused(tmp_path, argv, capsys, "model checkpoint model.safetensors")


def test_a_model_folder_with_broken_files_is_refused(workspace, tmp_path, capsys):
    root, data = workspace
    folder = tmp_path / "model"
    for path in (root / "model").rglob("*"):
        if path.is_file():
            target = folder / path.relative_to(root / "model")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    unet = next((folder / "unet").glob("*.safetensors"))
    unet.write_bytes(unet.read_bytes()[:-100])
    argv = ["train", "--model", folder, "--output", tmp_path / "out", "--data", data, *SMALL_RUN]
    assert_refused(tmp_path, argv, capsys, f"unet/{unet.name}", "truncated")
    (folder / "model_index.json").write_text("{not json")
    assert_refused(tmp_path, argv, capsys, "model_index.json cannot be read as JSON")


def test_an_unreadable_regularisation_image_refuses_the_set_too(workspace, tmp_path, capsys):
    root, data = workspace
    dataset = _set_with(tmp_path, data)
    reg = tmp_path / "reg" / "1_person"
    reg.mkdir(parents=True)
    (reg / "fine.png").write_bytes(PNG)
    _make_bad_image(reg, "truncated.jpg")
    argv = ["train", "--model", root / "model", "--output", tmp_path / "out", "--data", dataset, "--reg_data_dir",
            reg.parent, *SMALL_RUN]
    assert_refused(tmp_path, argv, capsys, "1_person/truncated.jpg (truncated or corrupt", "skip_unreadable_images")
