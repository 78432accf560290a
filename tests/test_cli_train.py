"""`python -m lib_copylora train` end to end on the tiny SD1 model: single, copier and difference routes write kohya
files with ss_* metadata that read back; the difference equals the merge of its two parts; Ctrl-C stops and saves,
and --resume finishes the job; every config field has a flag."""

from __future__ import annotations

import dataclasses
import signal

import pytest
import torch

from lib_copylora.cli import build_parser, main
from lib_copylora.commands import train_report
from lib_copylora.commands.train_flags import NOT_FLAGS, SECTIONS, _dest
from lib_copylora.core.formats import read_lora
from lib_copylora.core.merge import MergeSpec, merge_loras
from lib_copylora.core.metadata import read_recipe
from lib_copylora.hosts.tiny import save_tiny_model, write_ab_sets


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_train")
    model = save_tiny_model(root / "model")
    data_a, data_b = write_ab_sets(root / "data", count=2, size=(64, 64), repeats=2)
    return root, model, data_a, data_b


def _args(model, out, *extra):
    return ["train", "--model", str(model), "--output", str(out), "--resolution", "64", "--min_bucket_reso", "64",
            "--network_dim", "2", "--network_alpha", "1", "--learning_rate", "1e-3", "--save_precision", "fp32",
            "--max_train_steps", "3", *extra]


def test_single_route_writes_a_kohya_lora(workspace, capsys):
    root, model, data_a, _ = workspace
    out = root / "single"
    assert main(_args(model, out, "--data", str(data_a), "--output_name", "one", "--train_text_encoder")) == 0
    printed = capsys.readouterr().out
    assert "single step 3/3" in printed and "loss" in printed and "one.safetensors" in printed
    lora = read_lora(out / "one.safetensors")
    assert lora.family.value == "sd1" and len(lora.layers) == 192 + 18
    meta = lora.metadata
    assert meta["ss_output_name"] == "one" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_network_dim"] == "2" and meta["ss_network_alpha"] == "1.0" and meta["ss_steps"] == "3"
    assert meta["ss_network_module"] == "networks.lora" and "sshs_model_hash" in meta
    assert read_recipe(meta)["route"] == "single"
    # trained modules moved off their zero-initialised up weights
    assert any(float(layer.up.abs().max()) > 0 for layer in lora.layers.values())


def test_copier_and_difference_routes(workspace):
    root, model, data_a, data_b = workspace
    pair = ["--data-a", str(data_a), "--data-b", str(data_b)]
    out = root / "routes"
    assert main(_args(model, out, "--route", "copier", "--output_name", "copier", *pair)) == 0
    copier = read_lora(out / "copier.safetensors")
    assert read_recipe(copier.metadata)["route"] == "copier" and copier.layers
    assert main(_args(model, out, "--route", "difference", "--output_name", "diff", "--keep_parts", *pair)) == 0
    diff, part_a, part_b = (read_lora(out / f"diff{s}.safetensors") for s in ("", "_A", "_B"))
    assert diff.metadata["ss_network_dim"] == "4"  # exact: rank of A + rank of B
    expected = merge_loras([part_b, part_a], MergeSpec(ratios=(1.0, -1.0)))
    assert set(diff.layers) == set(expected.layers)
    for name, layer in diff.layers.items():
        assert torch.allclose(layer.delta(), expected.layers[name].delta(), atol=1e-6), name
    # the copier's B learns on top of A, the difference's B on the plain base: the same start, other results
    assert set(copier.layers) == set(part_b.layers)
    assert any(not torch.equal(copier.layers[n].up, part_b.layers[n].up) for n in copier.layers)


@pytest.mark.parametrize("batch, one", [("1", True), ("3", False)])
def test_the_trainer_learns_whether_every_batch_has_one_shape(workspace, monkeypatch, batch, one):
    """The CLI hands the trainer its sets wrapped for data parallelism; CUDA graphs and skipping dynamo's guards
    still learn that every batch has one shape (4 samples of one bucket: batches of 1; or of 3 and 1)."""
    from lib_copylora.train import routes

    seen, real = [], routes.host_speedups

    def spy(host, speed, log, one_shape):
        seen.append(one_shape)
        return real(host, speed, log, one_shape)

    monkeypatch.setattr(routes, "host_speedups", spy)
    root, model, data_a, _ = workspace
    out = root / f"shape{batch}"
    assert main(_args(model, out, "--data", str(data_a), "--train_batch_size", batch, "--max_train_steps", "1")) == 0
    assert seen == [one]


def test_ctrl_c_stops_saves_and_resume_finishes(workspace, monkeypatch, capsys):
    root, model, data_a, _ = workspace
    out = root / "stop"
    original = train_report.Reporter._step

    def press_ctrl_c_at_step_2(self, step, loss, lr):
        original(self, step, loss, lr)
        if step == 2:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(train_report.Reporter, "_step", press_ctrl_c_at_step_2)
    args = _args(model, out, "--data", str(data_a), "--output_name", "s")
    args[args.index("--max_train_steps") + 1] = "4"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN, not Python's handler, in a job started in the background
    assert main(args) == 130
    printed = capsys.readouterr().out
    assert "stopping after this step" in printed and "--resume" in printed
    assert (out / "s-step00000002.safetensors").is_file() and (out / "s.single.trainstate").is_file()
    assert not (out / "s.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is before  # our handler is gone again
    monkeypatch.setattr(train_report.Reporter, "_step", original)
    assert main(args + ["--resume"]) == 0
    assert "resuming at step 2" in capsys.readouterr().out
    assert read_lora(out / "s.safetensors").metadata["ss_steps"] == "4"


def test_bad_invocations_are_one_line_errors(workspace, capsys):
    root, model, data_a, _ = workspace
    assert main(_args(model, root / "bad", "--route", "copier", "--data-a", str(data_a))) == 2
    assert "--data-a DIR --data-b DIR" in capsys.readouterr().err
    assert main(_args(model, root / "bad", "--data", str(root / "nowhere"))) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(_args(model, root / "bad", "--data", str(data_a), "--network_dim", "0")) == 2


def test_every_config_field_has_a_flag():
    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    dests = {action.dest for action in train_parser._actions}
    missing = [f"{section}.{field.name}" for section, cls in SECTIONS.items() for field in dataclasses.fields(cls)
               if (section, field.name) not in NOT_FLAGS and _dest(section, field.name) not in dests]
    assert missing == []
    text = train_parser.format_help()
    for kohya in ("--network_dim", "--network_alpha", "--learning_rate", "--text_encoder_lr", "--unet_lr",
                  "--optimizer_type", "--lr_scheduler", "--lr_warmup_steps", "--max_train_steps",
                  "--max_train_epochs", "--gradient_accumulation_steps", "--mixed_precision", "--save_precision",
                  "--save_every_n_steps", "--save_every_n_epochs", "--resume", "--noise_offset", "--min_snr_gamma",
                  "--clip_skip", "--seed", "--resolution", "--enable_bucket", "--network_module", "--algo",
                  "--conv_dim", "--conv_alpha", "--new_rank", "--new_conv_rank", "--gradient_checkpointing",
                  "--train_batch_size", "--reg_data_dir", "--flip_aug", "--keep_tokens", "--caption_dropout_rate"):
        assert kohya in text, kohya
    parsed = parser.parse_args(["train", "--model", "m", "--data", "d", "--mixed_precision", "no",
                                "--save_precision", "float", "--betas", "0.9", "0.99", "--sample_prompt", "a",
                                "--sample_prompt", "b", "--no-cache_latents"])
    assert parsed.loop__precision == "fp32" and parsed.output__save_precision == "fp32"
    assert parsed.optim__betas == [0.9, 0.99] and parsed.sample__prompts == ["a", "b"]
    assert parsed.dataset__cache_latents is False and parsed.network__rank is None


def test_demo_runs_both_routes_and_reports(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--steps", "2", "--rank", "2"]) == 0
    printed = capsys.readouterr().out
    for name in ("copier.safetensors", "copier_A.safetensors", "difference.safetensors", "difference_A.safetensors",
                 "difference_B.safetensors", "difference_rank2.safetensors", "samples.png"):
        assert (tmp_path / "demo" / name).is_file(), name
        assert name in printed
    assert "‖ΔW copier − ΔW difference‖ / ‖ΔW difference‖ =" in printed and "demo finished" in printed
    assert "  difference: B: cached the latents of 1 image\n" in printed  # the trainer's log lines are shown
    assert read_lora(tmp_path / "demo" / "difference.safetensors").metadata["ss_network_dim"] == "4"
