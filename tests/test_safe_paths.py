"""Names from the API stay inside their folder: `..`, absolute paths and symlinks out are refused."""

import os
from pathlib import Path

import pytest

from lib_copylora.service.safe_paths import UnsafePath, lora_file_inside, relative_name, resolve_inside


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "datasets"
    (folder / "shirt" / "5_shirt").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    return folder


def test_plain_and_nested_names_resolve_inside(root):
    assert resolve_inside(root, "shirt") == (root / "shirt").resolve()
    assert resolve_inside(root, "shirt/5_shirt", must_exist=True) == (root / "shirt" / "5_shirt").resolve()
    assert resolve_inside(root, "shirt\\5_shirt") == (root / "shirt" / "5_shirt").resolve()  # Windows separators


@pytest.mark.parametrize("name", ["..", "../secret", "shirt/../../secret", "..\\secret", "shirt/.."])
def test_dot_dot_is_refused(root, name):
    with pytest.raises(UnsafePath, match=r"'\.\.'"):
        resolve_inside(root, name, "dataset")


@pytest.mark.parametrize("name", ["/etc/passwd", "C:\\Windows", "C:relative", "\\\\server\\share\\x"])
def test_absolute_paths_are_refused(root, name):
    with pytest.raises(UnsafePath, match="absolute"):
        resolve_inside(root, name, "dataset")


@pytest.mark.parametrize("name", ["", "   ", ".", "./"])
def test_empty_or_the_folder_itself_is_refused(root, name):
    with pytest.raises(UnsafePath):
        resolve_inside(root, name)


def test_symlink_leading_out_is_refused_and_one_inside_is_fine(root):
    os.symlink(root.parent / "secret", root / "escape")
    os.symlink(root / "shirt", root / "alias")
    with pytest.raises(UnsafePath, match="outside"):
        resolve_inside(root, "escape", "dataset")
    with pytest.raises(UnsafePath, match="outside"):
        resolve_inside(root, "escape/new_file", "output")  # not existing yet, but its parent leads out
    assert resolve_inside(root, "alias") == (root / "shirt").resolve()


def test_a_symlinked_root_itself_is_allowed(tmp_path, root):
    link = tmp_path / "linked_root"
    os.symlink(root, link)
    assert resolve_inside(link, "shirt") == (root / "shirt").resolve()


def test_must_exist(root):
    with pytest.raises(UnsafePath, match="does not exist"):
        resolve_inside(root, "nothing_here", must_exist=True)


def test_lora_file_names_get_their_suffix(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.safetensors").write_bytes(b"x")
    assert lora_file_inside(tmp_path, "sub/a", must_exist=True) == (tmp_path / "sub" / "a.safetensors").resolve()
    assert lora_file_inside(tmp_path, "b.safetensors").name == "b.safetensors"
    assert lora_file_inside(tmp_path, "b.v2").name == "b.v2.safetensors"
    with pytest.raises(UnsafePath, match="no LoRA file"):
        lora_file_inside(tmp_path, "missing", must_exist=True)
    with pytest.raises(UnsafePath):
        lora_file_inside(tmp_path, "../a")


def test_relative_name(tmp_path):
    assert relative_name(tmp_path, tmp_path / "sub" / "a.safetensors") == "sub/a.safetensors"
