"""Hostile input through `python -m lib_copylora`, run in-process through `cli.main(argv)`: bad settings, names,
ratios and preset lines (images, checkpoints and LoRA headers: test_hostile_cli_files.py). Every refused case exits
2 with one `error:` line naming the problem, prints no traceback, leaves no new file anywhere in its workspace and
every input byte-identical (the whole tree is hashed before and after). One case runs as a real process to show
that nothing reaches the terminal but that line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hostile_support import REPO, SMALL_RUN, assert_refused, make_workspace, run_cli, snapshot, train_argv
from lib_copylora.cli import main
from lib_copylora.core.formats import read_lora
from lib_copylora.core.metadata import read_recipe


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory)


# ------------------------------------------------------------------------------------------- training settings
def _family(flag: str, values, expected: str) -> list:
    return [pytest.param([flag, v], expected, id=f"{flag}={v!r}"[:60]) for v in values]


NON_FINITE = ["nan", "inf", "-inf"]
BAD_NAMES = ["a\x00b", "a\x01b", "line\nbreak", "cr\rname", "esc\x1b", "sep\u2028arator", "nel\x85", "a/b",
             "..\\up", ".hidden", "x" * 300, "", "   ", "CON", "a:b", "star*", "tab\tname"]
SETTINGS = (
    _family("--learning_rate", NON_FINITE + ["0", "-1", "1e20"], "learning_rate")
    + _family("--text_encoder_lr", NON_FINITE + ["-1e-4"], "text_encoder_lr")
    + _family("--weight_decay", NON_FINITE + ["-0.01", "11"], "weight_decay")
    + _family("--training_comment", ["a\x00b", "esc\x1b[2J", "bell\x07", "x" * 1001, "sep\u2028arator"],
              "training_comment")
    + _family("--network_alpha", NON_FINITE + ["-1", "1e20"], "alpha")
    + _family("--network_dim", ["0", "-1", "100000"], "rank")
    + _family("--network_dim", ["1e20", "abc", "nan", "1.5"], "--network_dim")
    + _family("--conv_dim", ["100000", "0"], "conv_rank")
    + _family("--output_name", BAD_NAMES, "output_name")
    + _family("--resolution", ["60000", "0", "-64", "abc", "1e3", "64,64,64", "9" * 50, "32", "64,99999"],
              "resolution")
    + [pytest.param(["--resolution", "60000", "--no-enable_bucket"], "resolution", id="resolution-60000-no-bucket")]
    + _family("--seed", [str(2**70), str(-2**70)], "seed")
    + _family("--prior_loss_weight", NON_FINITE + ["-1"], "prior_loss_weight")
    + _family("--caption_dropout_rate", NON_FINITE + ["2", "-0.5"], "caption_dropout_rate")
    + _family("--caption_extension", ["/../x", "a b", "\x00", "." + "x" * 40], "caption_extension")
    + _family("--clip_skip", ["100", "0"], "clip_skip")
    + _family("--max_train_steps", [str(10**12), "-5"], "max_steps")
    + _family("--train_batch_size", ["0", "100000"], "batch_size")
    + _family("--noise_offset", NON_FINITE + ["-0.1"], "noise_offset")
    + _family("--min_snr_gamma", NON_FINITE + ["0"], "min_snr_gamma")
    + _family("--max_grad_norm", NON_FINITE, "max_grad_norm")
    + _family("--lr_warmup_steps", ["-1"], "warmup_steps")
    + _family("--sample_guidance_scale", NON_FINITE + ["1e9"], "guidance_scale")
    + _family("--sample_steps", ["0", "100000"], "steps")
    + _family("--keep_tokens", ["-1", str(10**9)], "keep_tokens")
    + _family("--device", ["bogus", "cuda:-1", "cuda:99", "meta", "cuda:0 ", ""], "--device")
    + [pytest.param(["--betas", "nan", "0.9"], "betas", id="betas-nan"),
       pytest.param(["--betas", "1", "0.9"], "betas", id="betas-1"),
       pytest.param(["--eps", "nan"], "eps", id="eps-nan")]
)


@pytest.mark.parametrize("flags, expected", SETTINGS)
def test_a_bad_training_setting_is_refused_before_anything_loads(workspace, capsys, flags, expected):
    root, data = workspace
    assert_refused(root, train_argv(root, data, *flags), capsys, expected)


def test_an_existing_output_is_refused_before_the_model_loads(workspace, tmp_path, capsys):
    root, data = workspace
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.safetensors").write_bytes(b"precious")
    argv = ["train", "--model", tmp_path / "no_model_needed", "--output", out, "--data", data, *SMALL_RUN,
            "--output_name", "mine"]
    assert_refused(tmp_path, argv, capsys, "mine.safetensors exists", "--overwrite")
    # a kept part that exists would only fail after training: refused up front as well
    (out / "pair_A.safetensors").write_bytes(b"precious")
    argv = ["train", "--model", tmp_path / "no_model_needed", "--output", out, "--route", "copier", "--data-a", data,
            "--data-b", data, *SMALL_RUN, "--output_name", "pair", "--keep_parts"]
    assert_refused(tmp_path, argv, capsys, "pair_A.safetensors exists")


# ------------------------------------------------------------------------------------------------ merge and names
def merge_argv(root: Path, save_to, *extra) -> list:
    return ["merge", "--models", root / "B.safetensors", root / "A.safetensors", "--ratios", "1", "-1",
            "--save_to", save_to, *extra]


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n not in ("", "   ", "a/b", "..\\up")])
def test_a_bad_merge_output_name_is_refused(workspace, capsys, name):
    root, _ = workspace
    assert_refused(root, merge_argv(root, root / f"{name}.safetensors"), capsys, "--save_to")


@pytest.mark.parametrize("where", ["folder", "models"])
def test_names_the_file_system_refuses_are_our_error(workspace, capsys, where):
    root, _ = workspace
    long = root / ("y" * 300) / "out.safetensors"
    if where == "folder":
        assert_refused(root, merge_argv(root, long), capsys, "--save_to", "File name too long")
    else:
        argv = ["merge", "--models", root / "B.safetensors", long, "--ratios", "1", "1", "--save_to",
                root / "new.safetensors"]
        assert_refused(root, argv, capsys, "--models", "File name too long")
    assert_refused(root, ["inspect", root / ("z" * 300)], capsys, "z" * 20)


@pytest.mark.parametrize("device", ["bogus", "mps", "cuda:99", "cudax", "meta", "cuda:-1"])
def test_a_device_this_machine_cannot_merge_on_is_refused(workspace, capsys, device):
    root, _ = workspace
    assert_refused(root, merge_argv(root, root / "new.safetensors", "--device", device), capsys, "device", device)


def test_an_existing_merge_output_is_refused(workspace, capsys):
    root, _ = workspace
    assert_refused(root, merge_argv(root, root / "A.safetensors"), capsys, "exists", "--overwrite")


@pytest.mark.parametrize("ratio", ["-1e-1", "-1E+0", "-.5", "-2.5e-3"])
def test_a_negative_ratio_in_any_float_spelling_is_a_value(workspace, tmp_path, capsys, ratio):
    root, _ = workspace
    out = tmp_path / "diff.safetensors"
    code, printed, err = run_cli(["merge", "--models", root / "B.safetensors", root / "A.safetensors",
                                  "--ratios", "1", ratio, "--save_to", out], capsys)
    assert code == 0 and "wrote" in printed, err
    assert read_recipe(read_lora(out).metadata)["ratios"] == [1.0, float(ratio)]


@pytest.mark.parametrize("ratio", NON_FINITE)
def test_non_finite_ratios_are_refused(workspace, capsys, ratio):
    root, _ = workspace
    argv = ["merge", "--models", root / "B.safetensors", root / "A.safetensors", "--ratios", "1", ratio,
            "--save_to", root / "new.safetensors"]
    assert_refused(root, argv, capsys, "ratios must be finite")


def test_a_preset_file_with_bad_lines_costs_those_lines_only(workspace, tmp_path, capsys):
    root, _ = workspace
    presets = tmp_path / "presets.txt"
    presets.write_bytes("mine:" .encode() + b",".join([b"1"] * 17) + b"\ncl\x0bp:" + b",".join([b"1"] * 17)
                        + "\ncl\u2028p:".encode() + b",".join([b"0"] * 17) + b"\nshort:1,2\n")
    out = tmp_path / "blocks.safetensors"
    code, printed, err = run_cli(merge_argv(root, out, "--blocks", "mine", "face", "--presets", presets), capsys)
    assert code == 0 and "Traceback" not in printed + err, err
    warnings = [line for line in printed.splitlines() if line.startswith("warning:")]
    assert [w.split(", line ")[1].split(":")[0] for w in warnings] == ["2", "3", "4"]
    assert all(w.endswith("line skipped") for w in warnings)
    assert out.is_file()


# --------------------------------------------------------------------------------------- what still crashes loud
def test_a_real_bug_still_shows_its_traceback(monkeypatch):
    from lib_copylora.commands import inspect

    def broken(_args):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(inspect, "run", broken)
    with pytest.raises(RuntimeError, match="a bug of ours"):
        main(["inspect", "x.safetensors"])

    def os_bug(_args):
        raise OSError("no file involved")

    monkeypatch.setattr(inspect, "run", os_bug)
    with pytest.raises(OSError):
        main(["inspect", "x.safetensors"])


# ------------------------------------------------------------------------------------------- as a real process
def test_only_the_error_line_reaches_the_terminal(workspace, tmp_path):
    """One real process (each costs seconds of imports): a name too long, after a ratio argparse used to refuse."""
    root, _ = workspace
    argv = ["merge", "--models", root / "B.safetensors", root / "A.safetensors", "--ratios", "1", "-1e-1",
            "--save_to", tmp_path / ("x" * 300 + ".safetensors")]
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "lib_copylora", *map(str, argv)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: --save_to: ")
    assert "too long" in done.stderr and "Traceback" not in done.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("blocked, argv", [
    ("torch", lambda root, data: ["merge", "--help"]),  # before any command is known
    ("diffusers", lambda root, data: train_argv(root, data)),  # when the model is loaded
])
def test_a_python_without_a_needed_package_says_how_to_get_it(workspace, blocked, argv):
    """Run by a Python that lacks a package (outside .venv or the WebUI's venv), as a real process: one line naming
    the package and `bash dev.sh setup`, no traceback, nothing written."""
    root, data = workspace
    before = snapshot(root)
    script = (f"import sys; sys.modules[{blocked!r}] = None; from lib_copylora.cli import main; "
              f"sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, *map(str, argv(root, data))], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"has no {blocked}, which CopyLoRA needs" in errors[0]
    assert "bash dev.sh setup" in errors[0]
    assert snapshot(root) == before


def test_a_conv_re_rank_without_a_rank_is_refused_before_anything_trains(workspace, capsys):
    """The difference route's final merge has this rule; it is checked with the settings, not after A and B."""
    root, data = workspace
    argv = ["train", "--model", root / "model", "--output", root / "out", "--route", "difference", "--data-a", data,
            "--data-b", data, *SMALL_RUN, "--new_conv_rank", "4"]
    assert_refused(root, argv, capsys, "new_conv_rank needs new_rank")


def test_a_merge_name_has_the_same_limit_as_in_the_tab_and_api(workspace, tmp_path, capsys):
    """200 bytes of name before `.safetensors`, as everywhere a LoRA is named (core/output_names.py)."""
    root, _ = workspace
    longest = tmp_path / ("n" * 200 + ".safetensors")
    code, _, err = run_cli(merge_argv(root, longest), capsys)
    assert code == 0 and longest.is_file(), err
    assert_refused(root, merge_argv(root, tmp_path / ("n" * 201 + ".safetensors")), capsys, "201 bytes",
                   "at most 200")
