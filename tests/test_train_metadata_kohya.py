"""Trained files carry the `ss_*` keys kohya's train_network.py writes, in its formats: every value a string, JSON
where kohya writes JSON (`ss_dataset_dirs`, `ss_reg_dataset_dirs`, `ss_tag_frequency`, `ss_bucket_info`), folder
names and never paths, and what the WebUI's Lora card reads from them (dataset size, training tags, resolutions)
comes out right, whatever the folders are called."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from lib_copylora.core.formats import read_lora
from lib_copylora.core.metadata import read_recipe
from lib_copylora.hosts.data_parallel import ShardedSource
from lib_copylora.train.config import LoopConfig, NetworkConfig, OptimConfig, OutputConfig, RouteConfig, TrainConfig
from lib_copylora.train.data_config import DatasetConfig
from lib_copylora.train.dataset import ImageDataset
from lib_copylora.train.metadata import count_tags
from lib_copylora.train.routes import _base_model_name, train
from toy_host import ToyHost

# kohya's train_network.py writes these in every file of a folder-of-folders run (its --train_data_dir path)
KOHYA_KEYS = {
    "ss_session_id", "ss_training_started_at", "ss_output_name", "ss_learning_rate", "ss_text_encoder_lr",
    "ss_unet_lr", "ss_num_train_images", "ss_num_validation_images", "ss_num_reg_images",
    "ss_num_batches_per_epoch", "ss_num_epochs", "ss_gradient_checkpointing", "ss_gradient_accumulation_steps",
    "ss_max_train_steps", "ss_lr_warmup_steps", "ss_lr_scheduler", "ss_network_module", "ss_network_dim",
    "ss_network_alpha", "ss_network_dropout", "ss_mixed_precision", "ss_full_fp16", "ss_v2", "ss_base_model_version",
    "ss_clip_skip", "ss_max_token_length", "ss_cache_latents", "ss_seed", "ss_lowram", "ss_noise_offset",
    "ss_multires_noise_iterations", "ss_multires_noise_discount", "ss_adaptive_noise_scale", "ss_zero_terminal_snr",
    "ss_training_comment", "ss_optimizer", "ss_max_grad_norm", "ss_caption_dropout_rate",
    "ss_caption_dropout_every_n_epochs", "ss_caption_tag_dropout_rate", "ss_face_crop_aug_range",
    "ss_prior_loss_weight", "ss_min_snr_gamma", "ss_scale_weight_norms", "ss_ip_noise_gamma",
    "ss_debiased_estimation", "ss_noise_offset_random_strength", "ss_ip_noise_gamma_random_strength", "ss_loss_type",
    "ss_huber_schedule", "ss_huber_scale", "ss_huber_c", "ss_fp8_base", "ss_fp8_base_unet", "ss_validation_seed",
    "ss_validation_split", "ss_max_validation_steps", "ss_validate_every_n_epochs", "ss_validate_every_n_steps",
    "ss_resize_interpolation",
    # the dataset's keys
    "ss_batch_size_per_device", "ss_total_batch_size", "ss_resolution", "ss_color_aug", "ss_flip_aug",
    "ss_random_crop", "ss_shuffle_caption", "ss_enable_bucket", "ss_bucket_no_upscale", "ss_min_bucket_reso",
    "ss_max_bucket_reso", "ss_keep_tokens", "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_tag_frequency",
    "ss_bucket_info",
    # written when the run ends or saves
    "ss_training_finished_at", "ss_steps", "ss_epoch",
}
JSON_KEYS = ("ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_tag_frequency", "ss_bucket_info")
KOHYA_OFF = {
    "ss_num_validation_images": "0", "ss_network_dropout": "None", "ss_full_fp16": "False",
    "ss_max_token_length": "None", "ss_lowram": "False", "ss_multires_noise_iterations": "None",
    "ss_multires_noise_discount": "0.3", "ss_adaptive_noise_scale": "None", "ss_zero_terminal_snr": "False",
    "ss_training_comment": "None", "ss_caption_dropout_every_n_epochs": "0", "ss_caption_tag_dropout_rate": "0.0",
    "ss_face_crop_aug_range": "None", "ss_scale_weight_norms": "None", "ss_ip_noise_gamma": "None",
    "ss_debiased_estimation": "False", "ss_noise_offset_random_strength": "False",
    "ss_ip_noise_gamma_random_strength": "False", "ss_loss_type": "l2", "ss_huber_schedule": "snr",
    "ss_huber_scale": "1.0", "ss_huber_c": "0.1", "ss_fp8_base": "False", "ss_fp8_base_unet": "False",
    "ss_validation_seed": "None", "ss_validation_split": "0.0", "ss_max_validation_steps": "None",
    "ss_validate_every_n_epochs": "None", "ss_validate_every_n_steps": "None", "ss_resize_interpolation": "lanczos",
    "ss_color_aug": "False", "ss_random_crop": "False",
}


class ImageToyHost(ToyHost):
    """ToyHost fed by real images: the "VAE" average-pools by 8 and adds the mean as a fourth channel."""

    def __init__(self, model_name=None):
        super().__init__()
        if model_name is not None:
            self.model_name = model_name

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d(images, 8)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)


def _image(path: Path, size: tuple[int, int], seed: int, caption=None) -> None:
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.numpy()).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


def _dataset(root: Path, **kwargs) -> DatasetConfig:
    base = dict(data_dir=root, resolution="64", min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=32)
    return DatasetConfig(**{**base, **kwargs})


def _config(out: Path, route: str = "single", a=None, b=None, steps: int = 2, accumulation: int = 1,
            **output) -> TrainConfig:
    return TrainConfig(network=NetworkConfig(rank=2, alpha=1), optim=OptimConfig(learning_rate=1e-3),
                       loop=LoopConfig(max_steps=steps, gradient_accumulation_steps=accumulation, seed=3),
                       output=OutputConfig(output_dir=out, output_name="meta", save_precision="fp32", **output),
                       route=RouteConfig(route=route, keep_parts=route != "single"), dataset_a=a, dataset_b=b)


def _webui_metadata(path: Path) -> dict:
    """The file's metadata as the WebUI v1.10.1 reads it (sd_models.read_metadata_from_safetensors): the raw header
    parsed as JSON, then every value that starts with "{" parsed again."""
    with open(path, "rb") as file:
        size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(size))
    out = {}
    for key, value in header["__metadata__"].items():
        out[key] = value
        if isinstance(value, str) and value[0:1] == "{":
            out[key] = json.loads(value)
    return out


def _webui_card(metadata: dict) -> tuple[list[tuple[str, int]], int, list[str]]:
    """What the WebUI's Lora metadata editor (ui_edit_user_metadata.py) shows: training tags, dataset size,
    resolutions (it writes a bucket's [w, h] as "h x w")."""
    tags: dict[str, int] = {}
    for _, per_dir in metadata.get("ss_tag_frequency", {}).items():
        for tag, count in per_dir.items():
            tags[tag.strip()] = tags.get(tag.strip(), 0) + int(count)
    images = sum(int(p.get("img_count", 0)) for p in metadata.get("ss_dataset_dirs", {}).values())
    info = metadata.get("ss_bucket_info")
    resolutions = []
    if info and "buckets" in info:
        resolutions = [f"{b['resolution'][1]}x{b['resolution'][0]}" for b in info["buckets"].values()]
    return sorted(tags.items(), key=lambda t: -t[1]), images, resolutions


def _assert_no_paths(metadata: dict[str, str], root: Path) -> None:
    for key, value in metadata.items():
        for text in (value, json.dumps(json.loads(value)) if key in JSON_KEYS else value):
            assert str(root) not in text and root.parent.name not in text, key
            assert not re.search(r"(^|[\"\s])/(tmp|home|work|root|Users)/", text), key
    recipe = json.dumps(read_recipe(metadata))
    assert str(root) not in recipe and root.parent.name not in recipe


@pytest.fixture()
def captioned(tmp_path: Path) -> DatasetConfig:
    train_dir, reg_dir = tmp_path / "sets" / "shirts", tmp_path / "sets" / "reg"
    _image(train_dir / "3_shirt" / "a.png", (64, 64), 1, "Shirt, text on shirt, red\nsecond line is not read")
    _image(train_dir / "3_shirt" / "b.png", (128, 64), 2, " shirt ,, RED , standing ")
    _image(train_dir / "1_plain" / "c.png", (48, 96), 3)  # no caption file
    _image(reg_dir / "1_person" / "r.png", (64, 64), 4, "person")
    return _dataset(train_dir, reg_dir=reg_dir, batch_size=2, flip_aug=True, shuffle_caption=True, keep_tokens=1,
                    caption_dropout_rate=0.25)


def test_a_run_writes_every_kohya_key_in_kohya_formats(tmp_path, captioned):
    host = ImageToyHost(model_name=str(tmp_path / "models" / "sd15-base.safetensors"))
    dataset = ImageDataset(captioned)
    result = train(host, _config(tmp_path / "out", a=captioned, steps=3, accumulation=2), dataset)
    meta = read_lora(result.path).metadata

    assert KOHYA_KEYS <= set(meta) and all(isinstance(v, str) for v in meta.values())
    assert {k: meta[k] for k in KOHYA_OFF} == KOHYA_OFF
    assert 0 <= int(meta["ss_session_id"]) <= 2**32
    assert meta["ss_sd_model_name"] == "sd15-base.safetensors"  # the file's name, not its path
    assert meta["ss_num_train_images"] == "7" and meta["ss_num_reg_images"] == "1"  # images × repeats
    assert meta["ss_num_batches_per_epoch"] == str(dataset.batches_per_epoch())
    assert meta["ss_batch_size_per_device"] == "2" and meta["ss_total_batch_size"] == "4"  # × accumulation
    assert meta["ss_resolution"] == "(64, 64)" and meta["ss_cache_latents"] == "True"
    assert (meta["ss_flip_aug"], meta["ss_shuffle_caption"], meta["ss_keep_tokens"]) == ("True", "True", "1")
    assert meta["ss_caption_dropout_rate"] == "0.25"
    assert (meta["ss_enable_bucket"], meta["ss_bucket_no_upscale"]) == ("True", "False")
    assert (meta["ss_min_bucket_reso"], meta["ss_max_bucket_reso"]) == ("32", "128")

    dirs = json.loads(meta["ss_dataset_dirs"])
    assert dirs == {"1_plain": {"n_repeats": 1, "img_count": 1}, "3_shirt": {"n_repeats": 3, "img_count": 2}}
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_person": {"n_repeats": 1, "img_count": 1}}
    # kohya's counting: comma-separated, stripped, lower-cased, empty tags skipped, first line only, once per image;
    # an uncaptioned folder has an empty count; regularisation folders are counted too
    assert json.loads(meta["ss_tag_frequency"]) == {
        "1_plain": {}, "3_shirt": {"shirt": 2, "text on shirt": 1, "red": 2, "standing": 1}, "1_person": {"person": 1}}

    info = json.loads(meta["ss_bucket_info"])
    assert set(info) == {"buckets", "mean_img_ar_error"}
    buckets = [(tuple(b["resolution"]), b["count"]) for b in info["buckets"].values()]
    assert list(info["buckets"]) == [str(i) for i in range(len(buckets))]  # kohya's int keys, as JSON writes them
    assert buckets == sorted(dataset.summary().buckets.items())  # sorted by (width, height), samples per epoch
    assert sum(count for _, count in buckets) == 7 + 7  # regularisation cycled up to the training samples
    records = dataset.used_records()
    expected = sum(abs(r.bucket[0] / r.bucket[1] - r.size[0] / r.size[1]) for r in records) / len(records)
    assert info["mean_img_ar_error"] == pytest.approx(expected) and expected > 0

    webui = _webui_metadata(result.path)
    tags, images, resolutions = _webui_card(webui)
    assert tags[:2] == [("shirt", 2), ("red", 2)] and images == 3
    assert sorted(resolutions) == sorted(f"{h}x{w}" for (w, h), _ in buckets)
    assert webui["ss_sd_model_name"] == "sd15-base.safetensors" and webui["ss_clip_skip"] == "1"
    _assert_no_paths(meta, tmp_path)


def test_every_file_of_a_run_shares_its_session_id_and_runs_differ(tmp_path, captioned):
    first = train(ImageToyHost(), _config(tmp_path / "one", a=captioned, steps=2, save_every_n_steps=1),
                  ImageDataset(captioned))
    second = train(ImageToyHost(), _config(tmp_path / "two", a=captioned, steps=2), ImageDataset(captioned))
    ids = {read_lora(path).metadata["ss_session_id"] for path in first.written}
    assert len(first.written) == 2 and len(ids) == 1
    assert read_lora(second.path).metadata["ss_session_id"] not in ids
    assert not {"ss_sd_model_name", "ss_sd_model_hash"} & set(read_lora(second.path).metadata)  # the host does not say


@pytest.mark.parametrize("route", ["copier", "difference"])
def test_two_set_files_describe_the_set_they_trained_on(tmp_path, route):
    # the copier's way: set A without captions, set B the same images with the feature and its caption
    for i in range(2):
        _image(tmp_path / "a" / "2_plain" / f"{i}.png", (64, 64), i)
        caption = "text on shirt" if i else "text on shirt, red"
        _image(tmp_path / "b" / "4_shirt" / f"{i}.png", (64, 64), 10 + i, caption)
    set_a, set_b = _dataset(tmp_path / "a", batch_size=1), _dataset(tmp_path / "b", batch_size=2, flip_aug=True)
    result = train(ImageToyHost(), _config(tmp_path / "out", route, a=set_a, b=set_b), ImageDataset(set_a),
                   ImageDataset(set_b))

    meta = read_lora(result.path).metadata
    assert json.loads(meta["ss_tag_frequency"]) == {"4_shirt": {"text on shirt": 2, "red": 1}}
    assert json.loads(meta["ss_dataset_dirs"]) == {"4_shirt": {"n_repeats": 4, "img_count": 2}}
    assert meta["ss_batch_size_per_device"] == "2" and meta["ss_flip_aug"] == "True"  # B's settings, not A's
    assert meta["ss_num_train_images"] == "8"
    assert set(read_recipe(meta)["datasets"]) == {"A", "B"}  # the recipe names both sets
    part_a = read_lora(tmp_path / "out" / "meta_A.safetensors").metadata
    assert json.loads(part_a["ss_tag_frequency"]) == {"2_plain": {}}  # caption-less: an empty count, as kohya
    assert json.loads(part_a["ss_dataset_dirs"]) == {"2_plain": {"n_repeats": 2, "img_count": 2}}
    assert part_a["ss_batch_size_per_device"] == "1" and part_a["ss_flip_aug"] == "False"
    assert part_a["ss_session_id"] == meta["ss_session_id"]
    if route == "difference":
        part_b = read_lora(tmp_path / "out" / "meta_B.safetensors").metadata
        assert part_b["ss_tag_frequency"] == meta["ss_tag_frequency"]
    for metadata in (meta, part_a):
        _assert_no_paths(metadata, tmp_path)


def test_without_bucketing_kohya_leaves_the_bucket_keys_unset(tmp_path):
    _image(tmp_path / "set" / "1_x" / "a.png", (96, 64), 1)
    config = _dataset(tmp_path / "set", enable_bucket=False, bucket_no_upscale=True, cache_latents=False)
    meta = read_lora(train(ImageToyHost(), _config(tmp_path / "out", a=config, steps=1),
                           ImageDataset(config)).path).metadata
    assert meta["ss_bucket_info"] == "null" and meta["ss_enable_bucket"] == "False"
    assert (meta["ss_min_bucket_reso"], meta["ss_max_bucket_reso"], meta["ss_bucket_no_upscale"]) == (
        "None", "None", "False")
    assert meta["ss_cache_latents"] == "False" and meta["ss_reg_dataset_dirs"] == "{}"
    assert meta["ss_num_reg_images"] == "0"


def test_a_data_parallel_source_is_described_by_the_dataset_it_shares(tmp_path, captioned):
    dataset = ImageDataset(captioned)
    source = ShardedSource(dataset, SimpleNamespace(rank=0, world_size=2))
    meta = read_lora(train(ImageToyHost(), _config(tmp_path / "out", a=captioned, steps=1), source).path).metadata
    assert meta["ss_total_batch_size"] == "4"  # 2 per device × 2 processes
    assert meta["ss_num_batches_per_epoch"] == str(dataset.batches_per_epoch(2))
    assert json.loads(meta["ss_tag_frequency"])["3_shirt"]["shirt"] == 2


def test_the_command_line_writes_the_dataset_keys(tmp_path):
    """`python -m lib_copylora train` hands the trainer a data-parallel wrapper of each set: its files carry the set's
    keys all the same, on the tiny SD1 model."""
    from lib_copylora.cli import main
    from lib_copylora.hosts.tiny import save_tiny_model, write_ab_sets

    model = save_tiny_model(tmp_path / "model")
    data_a, data_b = write_ab_sets(tmp_path / "data", count=2, size=(64, 64), repeats=2, caption="shirt, Text")
    assert main(["train", "--model", str(model), "--output", str(tmp_path / "out"), "--resolution", "64",
                 "--min_bucket_reso", "64", "--network_dim", "2", "--max_train_steps", "1", "--route", "difference",
                 "--data-a", str(data_a), "--data-b", str(data_b), "--output_name", "cli",
                 "--training_comment", " trigger: shirt\tText \u732b "]) == 0
    meta = _webui_metadata(tmp_path / "out" / "cli.safetensors")
    assert meta["ss_tag_frequency"] == {"2_shirt": {"shirt": 2, "text": 2}}
    assert meta["ss_dataset_dirs"] == {"2_shirt": {"n_repeats": 2, "img_count": 2}}
    raw = read_lora(tmp_path / "out" / "cli.safetensors").metadata["ss_bucket_info"]
    assert raw == '{"buckets": {"0": {"resolution": [64, 64], "count": 4}}, "mean_img_ar_error": 0.0}'  # kohya's bytes
    assert meta["ss_total_batch_size"] == "1" and meta["ss_num_batches_per_epoch"] == "4"
    assert meta["ss_training_comment"] == "trigger: shirt\tText \u732b"  # as given, trimmed
    assert meta["ss_sd_model_name"] == "model"  # the model folder's name, as the host loaded it
    assert "ss_sd_model_hash" not in meta and "ss_new_sd_model_hash" not in meta  # a folder has no file hash
    assert not any(str(tmp_path) in (v if isinstance(v, str) else json.dumps(v)) for v in meta.values())


HOSTILE = ['2_say "hi" \\ {x}', "1_ünïcødé 猫 ☃", "1_ctl\x01\x1f\x7f", "1_tab\there", "1_ end ,comma"]


def test_hostile_folder_names_and_tags_stay_valid_json(tmp_path):
    root = tmp_path / 'set "q"\n<script>'  # images right in it count once, under its own name
    names = [*HOSTILE, root.name]
    if os.name == "posix":
        names.append(os.fsdecode(b"1_not-utf8-\xff"))  # a name the file system has but UTF-8 cannot spell
    for i, name in enumerate(names):
        folder = root if name == root.name else root / name
        _image(folder / "img.png", (64, 64), i, f'"{name[2:6]}", ünï, \\back, {{"x": 1}}')
    config = _dataset(root)
    result = train(ImageToyHost(), _config(tmp_path / "out", a=config, steps=1), ImageDataset(config))

    meta = read_lora(result.path).metadata
    webui = _webui_metadata(result.path)  # the raw header parses, and so does every JSON value inside it
    dirs, tags = json.loads(meta["ss_dataset_dirs"]), json.loads(meta["ss_tag_frequency"])
    assert set(dirs) == set(tags) == set(names) and webui["ss_dataset_dirs"] == dirs
    for name in names:
        repeats = 1 if name == root.name else int(name.split("_")[0])
        assert dirs[name] == {"n_repeats": repeats, "img_count": 1}
        assert tags[name] == {f'"{name[2:6]}"'.lower(): 1, "ünï": 1, "\\back": 1, '{"x": 1}': 1}
    for key in JSON_KEYS:
        assert meta[key].isascii()  # kohya's json.dumps: every other character escaped
    _, images, _ = _webui_card(webui)
    assert images == len(names)
    _assert_no_paths(meta, tmp_path)


@pytest.mark.skipif(os.name != "posix", reason="file names in bytes that are not UTF-8 are a POSIX thing")
def test_a_set_folder_whose_name_is_not_utf8_still_saves(tmp_path):
    root = tmp_path / os.fsdecode(b"set-\xff")
    _image(root / os.fsdecode(b"2_x\xfe") / "a.png", (64, 64), 1, "tag")
    config = _dataset(root)
    meta = _webui_metadata(train(ImageToyHost(), _config(tmp_path / "out", a=config, steps=1),
                                 ImageDataset(config)).path)
    assert meta["ss_tag_frequency"] == {os.fsdecode(b"2_x\xfe"): {"tag": 1}}  # kohya's escapes, read back exactly
    assert meta["copylora"]["datasets"]["A"]["data_dir"] == "set-\\udcff"  # spelt out in the recipe


def test_tags_are_counted_as_kohya_counts_them():
    counts: dict[str, int] = {}
    for caption in ["1girl, Solo,  solo ,", "", " , ,", "Red Shirt,1girl"]:
        count_tags(counts, caption)
    assert counts == {"1girl": 2, "solo": 2, "red shirt": 1}


@pytest.mark.parametrize("given, name", [
    ("/models/Stable-diffusion/sd15.safetensors", "sd15.safetensors"),
    ("C:\\webui\\models\\Stable-diffusion\\anime\\x.ckpt", "x.ckpt"),
    ("models/sd15-diffusers/", "sd15-diffusers"),
    ("v1-5-pruned.safetensors", "v1-5-pruned.safetensors"),
    ("", None), ("   ", None), (None, None), (7, None)])
def test_the_base_model_is_named_by_its_file_name_only(given, name):
    assert _base_model_name(SimpleNamespace(model_name=given)) == name
    assert _base_model_name(SimpleNamespace()) is None


def test_a_blank_training_comment_is_none():
    assert OutputConfig(training_comment="  \n ").training_comment is None
    assert OutputConfig(training_comment="line one\nline two").training_comment == "line one\nline two"
