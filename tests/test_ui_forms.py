"""The tab's pure parts, without the WebUI or gradio: widget values → requests and configs, sweep previews,
training presets, the loss plot's data, the queue's view, uploads, merge requests and block-weight sliders."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from lib_copylora.core.errors import CopyLoraError, MergeError, SpecError
from lib_copylora.train.config import NetworkConfig, OptimizerKind, SchedulerKind
from lib_copylora.train.data_config import DatasetConfig
from lib_copylora.train.dataset import scan_dataset
from lib_copylora.train.errors import TrainConfigError
from lib_copylora.ui.block_form import (FORMAT_CHOICES, MAX_SLIDERS, choice_for_count, preset_form, slider_layout,
                                        slider_values)
from lib_copylora.ui.fields import PROMPTS, REQUEST, Widget, train_fields
from lib_copylora.ui.job_view import current_job, queue_rows, result_tag, running_job, status_text
from lib_copylora.ui.loss_plot import MAX_POINTS_PER_SERIES, loss_rows, merge_losses
from lib_copylora.ui.merge_form import MergeMode, MergeRow, build_merge_request
from lib_copylora.ui.train_form import build_train_request, preview_runs
from lib_copylora.ui.train_presets import PRESET_KEYS, TRAINING_PRESETS, form_defaults, preset_values
from lib_copylora.ui.uploads import save_uploaded_dataset
from lib_copylora.service.jobs import JobState, JobStatus
from lib_copylora.service.safe_paths import UnsafePath
from lib_copylora.service.train_request import Folders, to_train_config

SPECS = train_fields()


@pytest.fixture
def folders(tmp_path):
    f = Folders(tmp_path / "datasets", tmp_path / "outputs", tmp_path / "loras")
    for name, colour in (("set_a", (200, 40, 40)), ("set_b", (40, 40, 200))):
        folder = f.datasets / name / "5_x"
        folder.mkdir(parents=True)
        Image.new("RGB", (64, 64), colour).save(folder / "img0.png")
    f.loras.mkdir()
    return f


def _form(changes=None, has_bnb=False):
    values = form_defaults(SPECS, has_bnb)
    values.update({(REQUEST, "name"): "shirt", (REQUEST, "dataset_a"): "set_a"})
    values.update(changes or {})
    return values


def test_every_field_explains_itself_with_its_dataclass_help():
    network_help = {f.name: f.metadata["help"] for f in dataclasses.fields(NetworkConfig)}
    assert SPECS[("network", "rank")].help.startswith(network_help["rank"])
    dataset_help = next(f.metadata["help"] for f in dataclasses.fields(DatasetConfig) if f.name == "flip_aug")
    assert SPECS[("dataset", "flip_aug")].help.startswith(dataset_help)
    assert all(spec.help.strip() for spec in SPECS.values())
    assert SPECS[("network", "rank")].sweepable and "comma list" in SPECS[("network", "rank")].help
    assert ("dataset", "data_dir") not in SPECS and ("output", "output_name") not in SPECS  # the server sets them
    assert len({spec.label for spec in SPECS.values()}) == len(SPECS)  # the WebUI keys saved defaults by label


def test_the_default_form_is_the_copier_recipe_and_becomes_a_valid_config(folders):
    request = build_train_request(_form(), SPECS)
    config = to_train_config(request, folders, torch.float32)
    assert (config.network.rank, config.network.alpha, config.network.conv_rank) == (8, 1.0, None)
    assert (config.optim.optimizer, config.optim.learning_rate) == (OptimizerKind.ADAMW, 1e-4)
    assert config.optim.scheduler is SchedulerKind.CONSTANT and config.loop.max_steps == 4000
    assert config.dataset_a.resolution == "600,900" and config.dataset_b is None
    assert config.output.output_name == "shirt" and config.output.path().parent == folders.loras.resolve()
    assert "every_n_steps" not in request.sample and "prompts" not in request.sample  # blank: server decides


def test_the_speed_section_reaches_the_config_from_the_form_and_defaults_to_speed_config(folders):
    from lib_copylora.train.config import CompileMode, SpeedConfig

    assert to_train_config(build_train_request(_form(), SPECS), folders, torch.float32).speed == SpeedConfig()
    assert SPECS[("speed", "compile")].choices == ("off", "blocks", "graphs", "unet", "unet-graphs")
    changes = {("speed", "compile"): "graphs", ("speed", "read_loss_every"): 10, ("speed", "fused_lowrank"): False}
    config = to_train_config(build_train_request(_form(changes), SPECS), folders, torch.float32)
    assert config.speed == SpeedConfig(compile=CompileMode.GRAPHS, read_loss_every=10, fused_lowrank=False)


def test_bitsandbytes_decides_the_default_optimiser():
    assert preset_values(next(iter(TRAINING_PRESETS)), True)[("optim", "optimizer")] == "adamw8bit"
    assert preset_values(next(iter(TRAINING_PRESETS)), False)[("optim", "optimizer")] == "adamw"


@pytest.mark.parametrize("label", list(TRAINING_PRESETS))
def test_every_training_preset_sets_the_same_fields_and_validates(label, folders):
    values = preset_values(label, has_bitsandbytes=False)
    assert tuple(values) == PRESET_KEYS
    config = to_train_config(build_train_request(_form(values), SPECS), folders, torch.float32)
    assert config.network.kind.value == values[("network", "kind")]
    assert config.loop.max_steps == int(values[("loop", "max_steps")])


def test_routes_previews_and_resume_unpack_once(folders):
    single = build_train_request(_form({(REQUEST, "dataset_b"): "set_b"}), SPECS)
    assert single.dataset_b == ""  # the single route ignores a leftover set B
    copier = build_train_request(_form({(REQUEST, "route"): "copier", (REQUEST, "dataset_b"): "set_b",
                                          PROMPTS: "a red shirt, front\n\n a shirt on a table "}), SPECS, resume=True)
    assert copier.route == "copier" and copier.dataset_b == "set_b" and copier.output["resume"] is True
    assert copier.sample["prompts"] == ("a red shirt, front", "a shirt on a table")  # commas stay in a prompt
    config = to_train_config(copier, folders, torch.float32)
    assert config.dataset_b.data_dir == (folders.datasets / "set_b").resolve()
    assert config.sample.prompts == ("a red shirt, front", "a shirt on a table")


def test_the_difference_re_rank_reaches_the_config_and_is_checked_before_training(folders):
    """Both ranks of the difference route's re-rank come from the form, as --new_rank and --new_conv_rank do; a conv
    rank without a rank is refused when the run is prepared, by the merge's own rule, not after A and B trained."""
    form = {(REQUEST, "route"): "difference", (REQUEST, "dataset_b"): "set_b", (REQUEST, "new_rank"): 8,
            (REQUEST, "new_conv_rank"): 4}
    config = to_train_config(build_train_request(_form(form), SPECS), folders, torch.float32)
    assert (config.route.new_rank, config.route.new_conv_rank) == (8, 4)
    alone = build_train_request(_form({**form, (REQUEST, "new_rank"): None}), SPECS)
    with pytest.raises(TrainConfigError, match="^new_conv_rank needs new_rank"):
        to_train_config(alone, folders, torch.float32)


def test_bad_values_are_refused_with_the_field_named():
    with pytest.raises(TrainConfigError, match="name"):
        build_train_request(_form({(REQUEST, "name"): "  "}), SPECS)
    with pytest.raises(TrainConfigError, match="Preview steps"):
        build_train_request(_form({("sample", "steps"): 2.5}), SPECS)
    assert SPECS[("sample", "steps")].widget is Widget.INTEGER
    assert SPECS[("sample", "every_n_steps")].widget is Widget.TEXT  # may stay blank: the setting decides


def test_the_sweep_preview_lists_every_run_before_anything_is_queued():
    text = preview_runs(_form({("network", "rank"): "4, 8", ("optim", "learning_rate"): "1e-4,5e-5"}), SPECS)
    assert text.startswith("4 runs")
    for name in ("shirt-r4-lr1e-4", "shirt-r4-lr5e-5", "shirt-r8-lr1e-4", "shirt-r8-lr5e-5"):
        assert name in text
    assert preview_runs(_form(), SPECS) == "1 run: shirt"
    assert preview_runs(_form({(REQUEST, "dataset_a"): ""}), SPECS).startswith("not ready:")


def _status(job="j1", phase="single", step=0, losses=(), state=JobState.RUNNING, started=1.0, **kw):
    values = dict(id=job, group="g", name=f"run-{job}", state=state, phase=phase, step=step, total_steps=10,
                  losses=list(losses), samples=[], result=None, tag=None, written=[], error=None, log=[],
                  submitted_at=0.0, started_at=started, finished_at=None)
    values.update(kw)
    return JobStatus(**values)


def test_loss_history_places_each_window_at_its_steps_and_keeps_phases_apart():
    history = merge_losses({}, _status(phase="A", step=3, losses=[0.9, 0.8, 0.7]))
    history = merge_losses(history, _status(phase="A", step=5, losses=[0.9, 0.8, 0.7, 0.6, 0.5]))
    assert history["j1"]["A"] == {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.5}
    # phase B restarts at step 1; the window still holds A's last losses, which must not land on B's steps
    history = merge_losses(history, _status(phase="B", step=2, losses=[0.6, 0.5, 0.4, 0.3]))
    assert history["j1"]["B"] == {1: 0.4, 2: 0.3} and history["j1"]["A"][5] == 0.5
    rows = loss_rows(history, [_status()])
    assert {r["run"] for r in rows} == {"run-j1 (A)", "run-j1 (B)"} and len(rows) == 7
    assert merge_losses({}, _status(step=0, losses=[1.0])) == {}


def test_long_loss_series_are_thinned_but_keep_their_ends():
    history = {"j1": {"single": {step: 1.0 / step for step in range(1, 5001)}}}
    steps = [r["step"] for r in loss_rows(history, [_status()])]
    assert len(steps) <= MAX_POINTS_PER_SERIES + 1 and steps[0] == 1 and steps[-1] == 5000


def test_the_queue_view_shows_the_running_run_then_the_last_started():
    done = _status("j1", state=JobState.DONE, step=10, losses=[0.25], tag="<lora:run-j1:1>",
                   result="run-j1.safetensors")
    running = _status("j2", step=3, losses=[0.5], started=2.0)
    queued = _status("j3", state=JobState.QUEUED, started=None)
    assert running_job([done, running, queued]) is running and current_job([done, running, queued]) is running
    assert current_job([done, queued]) is done and current_job([queued]) is queued and current_job([]) is None
    assert status_text(running) == "run-j2: running, step 3/10, loss 0.5000"
    assert "<lora:run-j1:1>" in status_text(done) and result_tag(done) == "<lora:run-j1:1>"
    assert result_tag(running) == "" and result_tag(None) == ""
    assert queue_rows([done, queued])[0] == ["run-j1", "done", "single", "10/10", "0.2500", "<lora:run-j1:1>"]


def test_uploads_become_a_kohya_image_set(tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 48), (10, 20, 30)).save(uploads / name)
    (uploads / "a.txt").write_text("a shirt", encoding="utf-8")
    (uploads / "notes.pdf").write_bytes(b"%PDF")
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    files = sorted(uploads.iterdir())
    saved = save_uploaded_dataset(datasets, "shirt", 3, files)
    assert (saved.name, saved.images, saved.captions, saved.skipped) == ("shirt", 2, 1, ["notes.pdf"])
    summary = scan_dataset(DatasetConfig(data_dir=datasets / "shirt", resolution="64", min_bucket_reso=32))
    assert (summary.images, summary.samples_per_epoch, summary.captioned) == (2, 6, 1)
    with pytest.raises(CopyLoraError, match="exists already"):
        save_uploaded_dataset(datasets, "shirt", 3, files)
    with pytest.raises(UnsafePath):
        save_uploaded_dataset(datasets, "../outside", 3, files)
    with pytest.raises(CopyLoraError, match="no images"):
        save_uploaded_dataset(datasets, "empty", 3, [uploads / "a.txt"])


def test_merge_rows_become_one_request():
    rows = [MergeRow("b", 1, ""), MergeRow(None, 1, ""), MergeRow("sub/a", -1.0, " face ")]
    exact = build_merge_request(rows, MergeMode.EXACT.value, 16, None, "fp16", " diff ", False)
    assert (exact.models, exact.ratios, exact.blocks, exact.new_rank) == (("b", "sub/a"), (1.0, -1.0),
                                                                         ("-", "face"), None)
    assert exact.output == "diff"
    rerank = build_merge_request(rows[:1], MergeMode.RERANK.value, 16.0, "", "bf16", "r", True)
    assert (rerank.blocks, rerank.new_rank, rerank.new_conv_rank, rerank.overwrite) == (None, 16, None, True)
    with pytest.raises(MergeError, match="new rank"):
        build_merge_request(rows, MergeMode.RERANK.value, None, None, "fp16", "r", False)
    with pytest.raises(MergeError, match="at least one"):
        build_merge_request([MergeRow(None, 1, "")], MergeMode.EXACT.value, None, None, "fp16", "r", False)


def test_block_sliders_follow_the_four_formats():
    assert sorted(c.count for c in FORMAT_CHOICES) == [12, 17, 20, 26] and MAX_SLIDERS == 26
    sd17 = choice_for_count(17)
    layout = slider_layout(sd17.label)
    assert [s.label for s in layout[:4]] == ["BASE", "IN01", "IN02", "IN04"] and layout[16].label == "OUT11"
    assert sum(s.visible for s in layout) == 17
    assert [s.label for s in slider_layout(choice_for_count(12).label)[:6]] == ["BASE", "IN04", "IN05", "IN07",
                                                                                "IN08", "MID"]
    presets = {"face": (1, 0, 0, 0, 0, 0, 0, 0, 0.8, 1, 1, 0.2, 0, 0, 0, 0, 0)}
    label, values = preset_form("face", presets)
    assert label == sd17.label and len(values) == MAX_SLIDERS and values[17:] == [0.0] * 9
    assert slider_values(label, values) == [float(v) for v in presets["face"]]
    with pytest.raises(SpecError):
        choice_for_count(5)
