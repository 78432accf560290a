"""kohya sd-scripts `train_network.py` command lines through `python -m lib_copylora train`: the copier articles'
published line parses to the TrainConfig it means; mapped flags land on our fields; speed/memory/logging flags are
accepted with a note on stderr; flags that would change the file are refused in one line before anything loads;
hostile --network_args / --optimizer_args values are refused naming the flag, with nothing written."""

from __future__ import annotations

import pytest

from hostile_support import assert_refused, run_cli
from lib_copylora.cli import build_parser
from lib_copylora.commands.kohya_table import NOTED, REFUSED
from lib_copylora.commands.train import build_train_config
from lib_copylora.core.formats import read_lora
from lib_copylora.hosts.tiny import save_tiny_model, write_ab_sets
from lib_copylora.train.config import NetworkKind, OptimizerKind, Precision, SchedulerKind

# the copier article's settings, as kohya's train_network.py is called with them
PUBLISHED = ["--pretrained_model_name_or_path", "models/sd15.safetensors", "--train_data_dir", "sets/a",
             "--output_dir", "out", "--output_name", "shirt_a", "--network_module", "networks.lora",
             "--network_dim", "8", "--network_alpha", "1", "--optimizer_type", "AdamW8bit", "--learning_rate", "1e-4",
             "--text_encoder_lr", "1e-5", "--lr_scheduler", "constant", "--resolution", "600,900", "--enable_bucket",
             "--min_bucket_reso", "256", "--max_bucket_reso", "1536", "--mixed_precision", "fp16",
             "--save_precision", "fp16", "--cache_latents", "--xformers", "--max_train_epochs", "800",
             "--train_batch_size", "1", "--caption_extension", ".txt", "--seed", "42", "--save_model_as",
             "safetensors", "--max_data_loader_n_workers", "1", "--persistent_data_loader_workers",
             "--logging_dir", "logs", "--log_with", "tensorboard"]


def parse(*argv: str):
    """The TrainConfig and the note lines a `train` command line gives, without loading or training anything."""
    args = build_parser().parse_args(["train", *argv])
    notes: list[str] = []
    from lib_copylora.commands.kohya_flags import apply_kohya_flags
    apply_kohya_flags(args, note=notes.append)
    return build_train_config(args), notes


def test_the_published_copier_line_is_the_config_it_means():
    config, notes = parse(*PUBLISHED)
    net, optim, loop, out, data = config.network, config.optim, config.loop, config.output, config.dataset_a
    assert (net.kind, net.rank, net.alpha, net.conv_rank) == (NetworkKind.LORA, 8, 1.0, None)
    assert net.train_text_encoder  # kohya trains the text encoder unless --network_train_unet_only
    assert (optim.optimizer, optim.learning_rate, optim.text_encoder_lr) == (OptimizerKind.ADAMW_8BIT, 1e-4, 1e-5)
    assert optim.scheduler is SchedulerKind.CONSTANT and optim.weight_decay is None  # the optimiser's own 0.01
    assert (loop.epochs, loop.max_steps, loop.precision, loop.seed) == (800, 0, Precision.FP16, 42)
    assert out.save_precision is Precision.FP16 and out.output_name == "shirt_a" and str(out.output_dir) == "out"
    assert str(data.data_dir) == "sets/a" and data.max_size == (600, 900) and data.enable_bucket
    assert (data.min_bucket_reso, data.max_bucket_reso, data.batch_size) == (256, 1536, 1)
    assert data.caption_extension == ".txt" and data.cache_latents and data.folder_name_as_caption
    assert config.dataset_b is None and config.route.route.value == "single"
    noted = " ".join(notes)
    for flag in ("--xformers", "--max_data_loader_n_workers", "--persistent_data_loader_workers", "--logging_dir",
                 "--log_with"):
        assert flag in noted, flag
    assert "--save_model_as" not in noted  # safetensors is what we write: nothing to say


def test_kohya_defaults_fill_what_a_kohya_line_leaves_out():
    config, notes = parse("--pretrained_model_name_or_path", "m", "--train_data_dir", "d", "--network_module",
                          "networks.lora")
    assert config.network.rank == 4 and config.network.train_text_encoder
    assert config.optim.learning_rate == 2e-6 and config.output.save_precision is Precision.FP32
    assert config.loop.max_steps == 1600 and not config.dataset_a.enable_bucket
    assert config.dataset_a.max_bucket_reso == 1024 and config.dataset_a.folder_name_as_caption
    assert any(n.startswith("kohya's defaults") and "1600 steps" in n for n in notes)
    # our own spelling of the model keeps our defaults, and says nothing
    ours, notes = parse("--model", "m", "--data", "d")
    assert ours.network.rank == 8 and not ours.network.train_text_encoder and ours.dataset_a.enable_bucket
    assert notes == []


@pytest.mark.parametrize("flags, check", [
    (["--network_args", "conv_dim=4", "conv_alpha=2"],
     lambda c: (c.network.kind, c.network.conv_rank, c.network.conv_alpha) == (NetworkKind.LOCON, 4, 2.0)),
    (["--network_args", "conv_dim=4"],  # kohya's networks.lora gives conv_alpha 1 when conv_dim comes alone
     lambda c: (c.network.kind, c.network.conv_alpha) == (NetworkKind.LOCON, 1.0)),
    (["--network_module", "loha", "--network_args", "conv_dim=8", "algo=loha"],
     lambda c: (c.network.kind, c.network.conv_rank) == (NetworkKind.LOHA, 8)),
    (["--network_module", "lokr", "--network_args", "factor=8", "use_tucker=True"],
     lambda c: (c.network.kind, c.network.lokr_factor, c.network.use_tucker) == (NetworkKind.LOKR, 8, True)),
    (["--network_module", "locon", "--network_args", "dora_wd=true", "dropout=0"],
     lambda c: c.network.dora and c.network.kind is NetworkKind.LOCON),
    (["--optimizer_args", "weight_decay=0.1", "betas=0.9,0.99", "eps=1e-6"],
     lambda c: (c.optim.weight_decay, c.optim.betas, c.optim.eps) == (0.1, (0.9, 0.99), 1e-6)),
    (["--optimizer_type", "Prodigy", "--learning_rate", "1", "--optimizer_args", "decouple=True", "d_coef=1"],
     lambda c: c.optim.optimizer is OptimizerKind.PRODIGY),
    (["--use_8bit_adam"], lambda c: c.optim.optimizer is OptimizerKind.ADAMW_8BIT),
    (["--use_lion_optimizer"], lambda c: c.optim.optimizer is OptimizerKind.LION),
    (["--network_train_unet_only"], lambda c: not c.network.train_text_encoder),
    # kohya: --unet_lr for the UNet; --learning_rate stays the text encoder's when it has no rate of its own
    (["--learning_rate", "2e-5", "--unet_lr", "1e-4"],
     lambda c: (c.optim.learning_rate, c.optim.effective_text_encoder_lr) == (1e-4, 2e-5)),
    (["--unet_lr", "1e-4"], lambda c: (c.optim.learning_rate, c.optim.effective_text_encoder_lr) == (1e-4, 2e-6)),
    (["--caption_extention", ".caption"], lambda c: c.dataset_a.caption_extension == ".caption"),
    (["--save_state_on_train_end"], lambda c: c.output.save_state),
    (["--torch_compile"], lambda c: c.speed.compile.value == "unet"),
    (["--v2", "--v_parameterization"], lambda c: True),
    (["--max_train_steps", "100", "--lr_scheduler", "cosine", "--lr_warmup_steps", "0.1"],
     lambda c: (c.loop.max_steps, c.optim.warmup_steps) == (100, 10)),
    (["--max_train_steps", "100", "--max_train_epochs", "3"], lambda c: (c.loop.max_steps, c.loop.epochs) == (0, 3)),
])
def test_mapped_flags_land_on_our_fields(flags, check):
    config, _ = parse("--pretrained_model_name_or_path", "m", "--train_data_dir", "d", "--network_module",
                      "networks.lora", *flags)
    assert check(config), config


def test_family_flags_set_the_family():
    args = build_parser().parse_args(["train", "--model", "m", "--data", "d", "--v2"])
    build_train_config(args)
    assert args.family == "sd2"
    args = build_parser().parse_args(["train", "--model", "m", "--data", "d", "--sdxl"])
    build_train_config(args)
    assert args.family == "sdxl"


NOTED_CASES = [["--cache_latents_to_disk"], ["--sdpa"], ["--mem_eff_attn"], ["--lowram"], ["--vae_batch_size", "4"],
               ["--save_last_n_steps", "1000"], ["--wandb_api_key", "secret"], ["--deepspeed"],
               ["--lr_scheduler_power", "2"], ["--console_log_level", "INFO"], ["--sample_at_first"]]


@pytest.mark.parametrize("flags", NOTED_CASES, ids=lambda f: f[0])
def test_speed_memory_and_logging_flags_are_noted_and_change_nothing(flags):
    base, _ = parse(*PUBLISHED)
    config, notes = parse(*PUBLISHED, *flags)
    assert config == base
    line = [n for n in notes if n.startswith(flags[0] + " ")]
    assert len(line) == 1 and "not needed" in line[0]
    assert "secret" not in " ".join(notes)


def test_notes_reach_stderr_once(tmp_path, capsys):
    argv = ["train", "--pretrained_model_name_or_path", tmp_path / "no_model", "--train_data_dir", tmp_path / "none",
            "--network_module", "networks.lora", "--xformers", "--output_dir", tmp_path / "out"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2  # the missing image folder stops it, after the notes
    assert err.count("note: --xformers is not needed") == 1 and "does not exist" in err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("kohya")
    save_tiny_model(root / "model")
    data_a, _ = write_ab_sets(root / "data", count=2, size=(64, 64), repeats=1)
    return root, data_a


def kohya_argv(root, data, *flags) -> list:
    return ["train", "--pretrained_model_name_or_path", root / "model", "--train_data_dir", data,
            "--output_dir", root / "out", "--network_module", "networks.lora", "--network_dim", "2",
            "--resolution", "64", "--min_bucket_reso", "64", "--max_train_steps", "1", *flags]


REFUSED_CASES = [
    (["--network_weights", "old.safetensors"], "--network_weights"), (["--base_weights", "a.safetensors"], "copier"),
    (["--network_dropout", "0.1"], "--network_dropout"), (["--scale_weight_norms", "1"], "--scale_weight_norms"),
    (["--network_train_text_encoder_only"], "UNet"), (["--full_fp16"], "--mixed_precision"),
    (["--full_bf16"], "fp32"), (["--no_half_vae"], "--model_dtype"), (["--vae", "vae.pt"], "VAE"),
    (["--random_crop"], "centrally"), (["--color_aug"], "colours"), (["--max_token_length", "225"], "75"),
    (["--caption_tag_dropout_rate", "0.1"], "--caption_dropout_rate"), (["--dataset_config", "d.toml"], "--data"),
    (["--in_json", "meta.json"], "--in_json"),
    (["--save_model_as", "ckpt"], ".safetensors"), (["--output_config"], ".toml"), (["--min_timestep", "100"], "1000"),
    (["--loss_type", "huber"], "L2"), (["--zero_terminal_snr"], "betas"),
    (["--network_module", "lycoris.kohya"], "--network_module locon"),
    (["--network_module", "networks.dylora"], "networks.lora"),
    (["--use_8bit_adam", "--use_lion_optimizer"], "keep one"),
    (["--optimizer_type", "AdamW", "--use_lion_optimizer"], "keep one"),
    (["--network_train_unet_only", "--train_text_encoder"], "keep one"),
    (["--lr_warmup_steps", "0.1", "--lr_scheduler", "cosine", "--max_train_epochs", "2"], "--lr_warmup_steps"),
]


@pytest.mark.parametrize("flags, expected", REFUSED_CASES, ids=lambda v: v[0] if isinstance(v, list) else None)
def test_flags_that_would_change_the_file_are_refused_before_anything_loads(workspace, capsys, flags, expected):
    root, data = workspace
    line = assert_refused(root, kohya_argv(root, data, *flags), capsys, expected)
    assert "would" in line or "keep one" in line or "--lr_warmup_steps" in line or "networks.lora" in line


HOSTILE_CASES = [
    (["--network_args", "conv_dim"], "--network_args", "key=value"),
    (["--network_args", "=4"], "--network_args", "key=value"),
    (["--network_args", "colour=4"], "--network_args", "colour"),
    (["--network_args", "conv_dim=four"], "--network_args", "finite number"),
    (["--network_args", "conv_dim=nan"], "--network_args", "finite number"),
    (["--network_args", "conv_alpha=inf"], "--network_args", "finite number"),
    (["--network_args", "conv_dim=2.5"], "--network_args", "whole number"),
    (["--network_args", "conv_dim=4", "conv_dim=8"], "--network_args", "twice"),
    (["--network_args", "use_tucker=maybe"], "--network_args", "true or false"),
    (["--network_args", "algo=loha"], "--network_args", "algo"),
    (["--network_args", "rank_dropout=0.1"], "--network_args", "rank_dropout"),
    (["--network_args", "x" * 300 + "=1"], "--network_args", "too long"),
    (["--network_args", "conv_dim=0"], "conv_rank"),
    (["--network_args", "conv_dim=4", "--conv_dim", "8"], "--network_args", "keep one"),
    (["--optimizer_args", "weight_decay"], "--optimizer_args", "key=value"),
    (["--optimizer_args", "momentum=0.9"], "--optimizer_args", "momentum"),
    (["--optimizer_args", "weight_decay=lots"], "--optimizer_args", "finite number"),
    (["--optimizer_args", "weight_decay=nan"], "--optimizer_args", "finite number"),
    (["--optimizer_args", "eps=-inf"], "--optimizer_args", "finite number"),
    (["--optimizer_args", "betas=0.9"], "--optimizer_args", "two numbers"),
    (["--optimizer_args", "betas=0.9,nan"], "--optimizer_args", "finite number"),
    (["--optimizer_args", "weight_decay=0.1", "weight_decay=0.2"], "--optimizer_args", "twice"),
    (["--optimizer_args", "weight_decay=0.1", "--weight_decay", "0.2"], "--optimizer_args", "keep one"),
    (["--optimizer_args", "weight_decay=-1"], "weight_decay"),
    (["--optimizer_type", "Prodigy", "--optimizer_args", "d_coef=2"], "--optimizer_args", "d_coef"),
]


HOSTILE = [pytest.param(flags, expected, id=" ".join(flags)[:40]) for flags, *expected in HOSTILE_CASES]


@pytest.mark.parametrize("flags, expected", HOSTILE)
def test_hostile_network_and_optimizer_args_are_one_line_refusals(workspace, capsys, flags, expected):
    root, data = workspace
    line = assert_refused(root, kohya_argv(root, data, *flags), capsys, *expected)
    assert len(line) < 300


def test_every_kohya_flag_in_the_tables_is_listed_in_the_docs():
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    section = text[text.index("## kohya command lines"):]
    missing = [name for name in [*NOTED, *REFUSED] if f"--{name}" not in section]
    assert missing == []


def test_a_kohya_line_trains_the_text_encoder_as_kohya_does(workspace, capsys):
    root, data = workspace
    argv = kohya_argv(root, data, "--output_name", "k", "--save_precision", "fp16", "--cache_latents", "--xformers",
                      "--network_args", "conv_dim=2", "conv_alpha=1", "--optimizer_args", "weight_decay=0.05")
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "note: --xformers" in err
    lora = read_lora(root / "out" / "k.safetensors")
    names = set(lora.layers)
    assert any(n.startswith("lora_te_") for n in names) and any("resnets" in n for n in names)
    assert lora.metadata["ss_network_dim"] == "2"


def test_sdxl_two_text_encoder_rates_are_one_rate_when_equal():
    config, _ = parse("--model", "m", "--data", "d", "--text_encoder_lr", "1e-5", "1e-5")
    assert config.optim.text_encoder_lr == 1e-5
    config, _ = parse("--model", "m", "--data", "d", "--text_encoder_lr", "2e-5")
    assert config.optim.text_encoder_lr == 2e-5
    config, _ = parse("--model", "m", "--data", "d", "--resume")
    assert config.output.resume is True


@pytest.mark.parametrize("flags, expected", [
    (["--text_encoder_lr", "1e-5", "2e-5"], "one rate"), (["--text_encoder_lr", "1e-5", "1e-5", "1e-5"], "one rate"),
    (["--text_encoder_lr", "nan"], "text_encoder_lr"), (["--text_encoder_lr", "1e-5", "abc"], "--text_encoder_lr"),
    (["--resume", "out/last-state"], "--resume alone")])
def test_kohya_forms_we_cannot_honour_are_one_line(workspace, capsys, flags, expected):
    root, data = workspace
    assert_refused(root, kohya_argv(root, data, *flags), capsys, expected)
