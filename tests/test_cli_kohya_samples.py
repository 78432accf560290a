"""kohya's preview flags through `python -m lib_copylora train`: a `--sample_prompts` file becomes our preview
prompts and settings, `--sample_every_n_epochs` our epoch previews, `--sample_sampler` a note; a prompt file that
cannot be used is one line naming it and the line, with nothing written."""

from __future__ import annotations

import os

import pytest

from hostile_support import assert_refused
from test_cli_kohya_flags import kohya_argv, parse, workspace  # noqa: F401 (the tiny model and set)

BASE = ["--pretrained_model_name_or_path", "m", "--train_data_dir", "d"]


def _file(tmp_path, text, name="prompts.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


def test_a_kohya_prompt_file_becomes_the_preview_prompts_and_settings(tmp_path):
    path = _file(tmp_path, "# previews\n\nshirt, text --n blurry --w 512 --h 768 --d 7 --l 6.5 --s 28\n"
                           "  plain shirt --s 28 --d 7\n")
    config, notes = parse(*BASE, "--sample_prompts", path, "--sample_every_n_epochs", "50",
                          "--sample_sampler", "euler_a")
    sample = config.sample
    assert sample.prompts == ("shirt, text", "plain shirt")
    assert (sample.steps, sample.guidance_scale, sample.seed, sample.every_n_epochs) == (28, 6.5, 7, 50)
    joined = "\n".join(notes)
    assert "--n is not used" in joined and "--w is not used" in joined and "--h is not used" in joined
    assert "--sample_sampler is not needed" in joined and "DDIM" in joined


def test_prompt_options_that_differ_between_lines_take_the_first_and_say_so(tmp_path):
    path = _file(tmp_path, "a --s 10 --l 5\nb --s 30\nc\n")
    config, notes = parse(*BASE, "--sample_prompts", path)
    assert (config.sample.prompts, config.sample.steps, config.sample.guidance_scale) == (("a", "b", "c"), 10, 5.0)
    assert any("one steps for every prompt" in note and "--s 10" in note for note in notes)


def test_the_default_sampler_and_no_epoch_previews_change_nothing(tmp_path):
    path = _file(tmp_path, "a\n")
    plain, _ = parse(*BASE, "--sample_prompts", path)
    same, notes = parse(*BASE, "--sample_prompts", path, "--sample_sampler", "ddim")
    assert plain == same and not any("sampler" in note for note in notes)
    assert plain.sample.every_n_epochs == 0 and plain.sample.steps == 20  # our default where the file is silent


BAD_FILES = [
    ("missing", None, "no such file"),
    ("empty", "", "no prompt"),
    ("comments", "# only a comment\n\n   \n", "no prompt"),
    ("no-prompt", " --s 20\n", "line 1"),
    ("steps-text", "a\nb --s many\n", "line 2"),
    ("steps-fraction", "a --s 2.5\n", "whole number"),
    ("scale-nan", "a --l nan\n", "--l"),
    ("seed-inf", "a --d inf\n", "--d"),
    ("steps-huge", "a --s 100000\n", "steps"),
    ("seed-huge", "a --d 1e30\n", "seed"),
    ("not-utf8", b"a \xff\xfe prompt\n", "not UTF-8"),
    ("toml", "[[prompt]]\n", ".txt"),
    ("folder", None, "no such file"),
    ("huge", "a\n" * (600 * 1024), "larger than"),
]


@pytest.mark.parametrize("case, text, expected", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_prompt_file_that_cannot_be_used_is_one_line_and_writes_nothing(workspace, capsys, tmp_path, case, text,
                                                                         expected):
    root, data = workspace
    if case == "missing":
        path = str(tmp_path / "nope.txt")
    elif case == "folder":
        path = str(tmp_path)
    else:
        path = _file(tmp_path, text, "p.toml" if case == "toml" else "p.txt")
    line = assert_refused(root, kohya_argv(root, data, "--sample_prompts", path), capsys, expected)
    assert "--sample_prompts" in line or expected in ("steps", "seed")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_prompt_file_is_one_line(workspace, capsys, tmp_path):
    root, data = workspace
    path = _file(tmp_path, "a\n")
    os.chmod(path, 0)
    try:
        assert_refused(root, kohya_argv(root, data, "--sample_prompts", path), capsys, "cannot read")
    finally:
        os.chmod(path, 0o600)


def test_prompts_given_both_ways_are_refused(workspace, capsys, tmp_path):
    root, data = workspace
    argv = kohya_argv(root, data, "--sample_prompts", _file(tmp_path, "a\n"), "--sample_prompt", "b")
    assert_refused(root, argv, capsys, "once")


def test_a_prompt_file_setting_that_contradicts_a_flag_is_refused(workspace, capsys, tmp_path):
    root, data = workspace
    argv = kohya_argv(root, data, "--sample_prompts", _file(tmp_path, "a --s 28\n"), "--sample_steps", "20")
    assert_refused(root, argv, capsys, "keep one")
