"""Block-weight presets: shipped defaults, the user's file on top, saving and deleting, the `presets` command."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lib_copylora.cli import main
from lib_copylora.core.errors import SpecError
from lib_copylora.core.family import Family
from lib_copylora.core.presets import (
    PRESETS_ENV,
    default_presets,
    delete_preset,
    load_presets,
    presets_for,
    save_preset,
    user_preset_path,
)

# The values as their sources give them (the LoRA Block Weight extension's, the community's, ComfyUI's SDXL ones).
SEEDS = """
NONE:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
ALL:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1
INS:1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0
IND:1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0
INALL:1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0
MIDD:1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0
OUTD:1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0
OUTS:1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1
OUTALL:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1
ALL0.5:0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5
face:1,0,0,0,0,0,0,0,0.8,1,1,0.2,0,0,0,0,0
Nface:1,1,1,1,1,1,0.2,1,0.2,0,0,0.8,1,1,1,1,1
ware:1,1,1,1,1,0,0.2,0,0.8,1,1,0.2,0,0,0,0,0
pose:1,0,0,0,0,0,0.2,1,1,1,0,0,0,0,0,0,0
paint:1,0,0,0,0,0,0,0,0,0,0,0.8,1,1,1,1,1
char:1,1,1,1,1,0,0,0,1,1,1,1,1,1,1,0,0
back:1,1,1,1,1,1,0.2,1,0.2,0,0,0.8,1,1,1,0,0
soft:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1
SDXL-NONE:0,0,0,0,0,0,0,0,0,0,0,0
SDXL-ALL:1,1,1,1,1,1,1,1,1,1,1,1
SDXL-INALL:1,1,1,1,1,0,0,0,0,0,0,0
SDXL-MIDALL:1,0,0,0,0,1,0,0,0,0,0,0
SDXL-OUTALL:1,0,0,0,0,0,1,1,1,1,1,1
"""
EXPECTED = {line.split(":")[0]: tuple(float(v) for v in line.split(":")[1].split(","))
            for line in SEEDS.split() if line}
FACE = "1,0,0,0,0,0,0,0,0.8,1,1,0.2,0,0,0,0,0"


def test_defaults_are_exactly_the_seeded_presets():
    assert default_presets() == EXPECTED
    assert list(default_presets()) == list(EXPECTED)  # and in that order


def test_presets_for_keeps_what_fits_the_family():
    sd1 = presets_for(Family.SD1, EXPECTED)
    assert set(sd1) == {name for name, values in EXPECTED.items() if len(values) == 17}
    assert presets_for(Family.SD2, EXPECTED) == sd1
    assert set(presets_for(Family.SDXL, EXPECTED)) == {n for n in EXPECTED if n.startswith("SDXL-")}
    assert presets_for(Family.SDXL, {"long": (1.0,) * 20, "odd": (1.0,) * 26}) == {"long": (1.0,) * 20}


def test_user_preset_path(monkeypatch, tmp_path):
    monkeypatch.delenv(PRESETS_ENV, raising=False)
    default = user_preset_path()
    assert default.name == "block_weight_presets.txt"
    assert (default.parent / "lib_copylora").is_dir()  # the extension root
    monkeypatch.setenv(PRESETS_ENV, str(tmp_path / "mine.txt"))
    assert user_preset_path() == tmp_path / "mine.txt"


def test_user_file_goes_on_top_of_the_defaults(tmp_path):
    path = tmp_path / "presets.txt"
    path.write_text(
        "# my presets\n\n"
        "face:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0.5\n"
        "  mine : 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 \n"
        "skipped:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1  # any '#' makes a comment, as in the extension\n"
        "xl20:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0\n"
        "mine:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0\n"  # the last definition wins
    )
    presets = load_presets(path)
    assert presets["face"] == (1.0,) * 16 + (0.5,)
    assert presets["mine"] == (0.0,) * 17
    assert presets["xl20"] == (1.0,) * 19 + (0.0,)
    assert "skipped" not in presets
    assert presets["ALL"] == EXPECTED["ALL"]
    assert load_presets(tmp_path / "missing.txt") == EXPECTED


@pytest.mark.parametrize("line, message", [
    ("just words", "line 3: expected NAME:v1,v2,..."),
    (":1,1,1,1,1,1,1,1,1,1,1,1", "line 3: the preset has no name"),
    ("short:1,0,1", "line 3: 3 values fit no block format; use SD1: 17 or 26, SD2: 17 or 26, SDXL: 12 or 20"),
    ("typo:1,x,0,0,0,0,0,0,0,0,0,0", "line 3: block weight 2 of 12 ('x') is not a number"),
    ("gap:1,,0,0,0,0,0,0,0,0,0,0", "line 3: block weight 2 of 12 is empty"),
])
def test_malformed_line_is_reported_with_its_number(tmp_path, line, message):
    path = tmp_path / "presets.txt"
    path.write_text(f"ok:{FACE}\n\n{line}\nlater:{FACE}\n")
    with pytest.raises(SpecError) as caught:
        load_presets(path)
    assert str(caught.value).startswith(f"{path}, {message}")


def test_save_adds_and_replaces_keeping_other_lines(tmp_path):
    path = tmp_path / "presets.txt"
    original = ["# header comment", "", f"first:{FACE}", "# between", f"second:{FACE}", f"first:{FACE}"]
    path.write_text("\n".join(original) + "\n")
    save_preset("new", (1, 0.25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), path)
    assert path.read_text().splitlines() == original + ["new:1,0.25,0,0,0,0,0,0,0,0,0,0"]
    save_preset("first", [0.5] * 17, path)  # replaced in place; the later duplicate goes
    assert path.read_text().splitlines() == [
        "# header comment", "", "first:" + ",".join(["0.5"] * 17), "# between", f"second:{FACE}",
        "new:1,0.25,0,0,0,0,0,0,0,0,0,0",
    ]
    assert load_presets(path)["first"] == (0.5,) * 17
    assert sorted(os.listdir(tmp_path)) == ["presets.txt"]  # no temporary file left behind


def test_save_creates_the_file_and_keeps_its_mode(tmp_path):
    path = tmp_path / "sub" / "presets.txt"
    assert save_preset("xl", [1.0] * 20, path) == path
    assert load_presets(path)["xl"] == (1.0,) * 20
    path.chmod(0o640)
    save_preset("xl", [0.0] * 20, path)
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("name, values, message", [
    ("bad:name", [1.0] * 17, "preset name 'bad:name'"),
    ("", [1.0] * 17, "preset name ''"),
    ("two words", [1.0] * 17, "preset name 'two words'"),
    ("short", [1.0] * 5, "5 values fit no block format"),
    ("nan", [float("nan")] * 17, "is not finite"),
    ("huge", [1e6] * 17, "is out of range"),
])
def test_save_refuses_bad_presets_and_leaves_the_file_alone(tmp_path, name, values, message):
    path = tmp_path / "presets.txt"
    path.write_text(f"keep:{FACE}\n")
    with pytest.raises(SpecError, match=message):
        save_preset(name, values, path)
    assert path.read_text() == f"keep:{FACE}\n"


def test_delete_keeps_other_lines(tmp_path):
    path = tmp_path / "presets.txt"
    path.write_text(f"# mine\ngone:{FACE}\nkeep:{FACE}\ngone:{FACE}\n")
    delete_preset("gone", path)
    assert path.read_text() == f"# mine\nkeep:{FACE}\n"
    with pytest.raises(SpecError, match="no preset named 'gone'"):
        delete_preset("gone", path)
    with pytest.raises(SpecError, match="'face' is a built-in preset and cannot be deleted"):
        delete_preset("face", path)
    save_preset("face", [0.0] * 17, path)  # an override of a default can be deleted, bringing the default back
    delete_preset("face", path)
    assert load_presets(path)["face"] == EXPECTED["face"]


def test_presets_command_lists_values_and_fit(tmp_path, capsys):
    path = tmp_path / "presets.txt"
    path.write_text(f"mine:{FACE}\nxl:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1\n")
    assert main(["presets", "--file", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if not line.startswith("#")}
    assert rows["face"] == ["face", "SD1/SD2", "(17)", "default", FACE]
    assert rows["mine"] == ["mine", "SD1/SD2", "(17)", "user", FACE]
    assert rows["SDXL-ALL"] == ["SDXL-ALL", "SDXL", "(12)", "default", "1,1,1,1,1,1,1,1,1,1,1,1"]
    assert rows["xl"][1:3] == ["SDXL", "(20)"]
    assert len(rows) == len(EXPECTED) + 2

    assert main(["presets", "--family", "sdxl", "--file", str(path)]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert rows == ["SDXL-NONE", "SDXL-ALL", "SDXL-INALL", "SDXL-MIDALL", "SDXL-OUTALL", "xl"]


def test_presets_command_reports_a_malformed_file(tmp_path, capsys):
    path = tmp_path / "presets.txt"
    path.write_text(f"ok:{FACE}\nbroken:1,2\n")
    assert main(["presets", "--file", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {path}, line 2: 2 values fit no block format; use SD1: 17 or 26, SD2: 17 or 26, SDXL: 12 or 20")
    assert main(["presets", "--file", str(Path(tmp_path, "none.txt"))]) == 0
    assert "(not found; defaults only)" in capsys.readouterr().out
