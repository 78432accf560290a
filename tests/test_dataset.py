"""Datasets the kohya way: repeats, captions, buckets, flips, caption shuffles and dropout, regularisation, the
latent cache and a deterministic, resumable order."""

from __future__ import annotations

import random
from pathlib import Path

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from lib_copylora.hosts.data_parallel import ShardedSource

from lib_copylora.train.buckets import closest_bucket, cover_and_crop, make_buckets, no_upscale_bucket
from lib_copylora.train.captions import augment_caption, read_caption, shuffle_tokens
from lib_copylora.train.data_config import DatasetConfig, DatasetError, parse_resolution
from lib_copylora.train.dataset import Batch, ImageDataset, cycle_regularisation, scan_dataset


class PoolingHost:
    """Stands in for a VAE: latents are the image average-pooled by 8 (plus a fourth channel), and every call is
    counted so the tests can see what was encoded when."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self):
        self.encoded = 0

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        self.encoded += images.shape[0]
        pooled = torch.nn.functional.avg_pool2d(images, 8)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)


def _image(path: Path, size: tuple[int, int], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.numpy()).save(path)


def _config(root: Path, **kwargs) -> DatasetConfig:
    base = dict(data_dir=root, resolution="64", min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=32)
    return DatasetConfig(**{**base, **kwargs})


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    _image(root / "3_cat" / "a.png", (64, 64), 1)
    _image(root / "3_cat" / "b.png", (128, 64), 2)
    (root / "3_cat" / "a.txt").write_text("cat, sitting, red\nsecond line is ignored", encoding="utf-8")
    (root / "3_cat" / "b.caption").write_text("cat, running", encoding="utf-8")
    _image(root / "1_dog" / "c.png", (48, 96), 3)
    _image(root / "loose.png", (64, 64), 4)  # directly in the folder: counts once
    _image(root / "misc" / "ignored.png", (64, 64), 5)  # no `N_` prefix: skipped, as kohya does
    return root


def test_repeats_folders_and_notes(data):
    summary = scan_dataset(_config(data))
    repeats = {f.path.name: (f.images, f.repeats) for f in summary.folders}
    assert repeats == {"train": (1, 1), "1_dog": (1, 1), "3_cat": (2, 3)}
    assert summary.images == 4 and summary.samples_per_epoch == 2 * 3 + 1 + 1
    assert any("misc" in note for note in summary.notes)
    assert summary.captioned == 2 and summary.caption_coverage == pytest.approx(0.5)
    assert sum(summary.buckets.values()) == summary.samples_per_epoch
    assert "3_cat: 2 images × 3 repeats" in summary.describe()


def test_pointing_at_an_n_name_folder_uses_its_repeats(data):
    summary = scan_dataset(_config(data / "3_cat"))
    assert summary.samples_per_epoch == 6


def test_missing_or_empty_folders_are_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        ImageDataset(_config(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        ImageDataset(_config(tmp_path / "empty"))


def test_captions_files_fallbacks_and_defaults(data):
    assert read_caption(data / "3_cat" / "a.png", ".txt") == "cat, sitting, red"
    assert read_caption(data / "3_cat" / "b.png", ".txt") == "cat, running"  # .caption is read too
    assert read_caption(data / "1_dog" / "c.png", ".txt") is None
    plain = ImageDataset(_config(data, default_caption="photo"))
    by_name = {r.path.name: plain.base_caption(r) for r in plain.records}
    assert by_name == {"a.png": "cat, sitting, red", "b.png": "cat, running", "c.png": "photo", "loose.png": "photo"}
    named = ImageDataset(_config(data, folder_name_as_caption=True))
    assert {r.path.name: named.base_caption(r) for r in named.records}["c.png"] == "dog"
    empty = ImageDataset(_config(data))
    assert {r.path.name: empty.base_caption(r) for r in empty.records}["c.png"] == ""


def test_bucket_family_respects_area_steps_and_limits():
    buckets = make_buckets((512, 512), 256, 1024, 64)
    assert (512, 512) in buckets and (768, 320) in buckets and (320, 768) in buckets and (1024, 256) in buckets
    for w, h in buckets:
        assert w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 and 256 <= min(w, h) and max(w, h) <= 1024
    assert make_buckets((600, 900), 256, 1536, 64) == sorted(set(make_buckets((600, 900), 256, 1536, 64)))
    assert all(w * h <= 600 * 900 for w, h in make_buckets((600, 900), 256, 1536, 64))


def test_images_go_to_the_closest_aspect_and_are_cropped_centrally():
    buckets = make_buckets((512, 512), 256, 1024, 64)
    assert closest_bucket((1000, 500), buckets) == (704, 320)  # 2.2:1 is nearer 2:1 than 640x384's 1.67:1
    assert closest_bucket((500, 1000), buckets) == (320, 704)
    assert closest_bucket((300, 300), buckets) == (512, 512)  # upscaled without bucket_no_upscale
    resized, box = cover_and_crop((200, 100), (64, 64))
    assert resized == (128, 64) and box == (32, 0, 96, 64)


def test_bucket_choice_follows_kohya_where_log_and_linear_ratios_disagree():
    buckets = make_buckets((600, 900), 256, 1536, 64)
    # 214x365 (0.586): 512x960 (0.533) is 0.053 away, 576x896 (0.643) 0.057; in log space the order flips
    assert closest_bucket((214, 365), buckets) == (512, 960)
    assert closest_bucket((576, 896), buckets) == (576, 896)  # an image of a bucket's size keeps it
    assert cover_and_crop((214, 365), (512, 960)) == ((563, 960), (25, 0, 537, 960))
    # sides round half up, as kohya's int(x + 0.5): 5 x 2.5 = 12.5 -> 13 (Python's round() gives 12)
    assert cover_and_crop((5, 2), (2, 5))[0] == (13, 5)


def test_no_upscale_keeps_small_images_small_and_shrinks_large_ones():
    assert no_upscale_bucket((100, 70), (512, 512), 32) == (96, 64)
    w, h = no_upscale_bucket((2048, 1024), (512, 512), 64)
    assert w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 and w > h
    assert no_upscale_bucket((10, 10), (512, 512), 64) == (64, 64)  # at least one step


def test_dataset_buckets_follow_config(data):
    dataset = ImageDataset(_config(data))
    buckets = {r.path.name: r.bucket for r in dataset.records}
    assert buckets["a.png"] == (64, 64) and buckets["c.png"] == (32, 96)
    # b.png's 2:1 lies as far from 64x64 (1:1) as from 96x32 (3:1): kohya takes the first bucket in sorted order
    assert buckets["b.png"] == (64, 64)
    fixed = ImageDataset(_config(data, enable_bucket=False))
    assert {r.bucket for r in fixed.records} == {(64, 64)}


def test_flip_aug_caches_mirror_images_and_uses_them(data):
    host = PoolingHost()
    dataset = ImageDataset(_config(data / "3_cat", flip_aug=True, resolution="64"))
    assert dataset.cache_latents(host) == 4  # 2 images × (plain, mirrored)
    flips = set()
    for epoch in range(4):
        for samples in dataset.epoch_plan(epoch):
            for s in samples:
                flips.add(s.flip)
                plain, mirrored = dataset._latents[(s.record, False)], dataset._latents[(s.record, True)]
                # average pooling commutes with mirroring, so the mirror's latent is the mirrored latent
                assert torch.allclose(mirrored, torch.flip(plain, dims=[-1]), atol=1e-6)
    assert flips == {False, True}
    no_flip = ImageDataset(_config(data / "3_cat"))
    assert all(not s.flip for batch in no_flip.epoch_plan(0) for s in batch)


def test_caption_shuffle_keeps_leading_tokens():
    caption = "trigger, a, b, c, d, e"
    seen = set()
    for seed in range(20):
        out = shuffle_tokens(caption, keep_tokens=1, rng=random.Random(seed))
        tokens = out.split(", ")
        assert tokens[0] == "trigger" and sorted(tokens) == sorted(caption.split(", "))
        seen.add(out)
    assert len(seen) > 5
    assert shuffle_tokens(caption, keep_tokens=6, rng=random.Random(0)) == caption


def test_caption_dropout_rates():
    rng = random.Random(0)
    kept = [augment_caption("x, y", rng, False, 0, 0.5) for _ in range(400)]
    assert 150 < kept.count("") < 250
    assert all(augment_caption("x, y", rng, False, 0, 1.0) == "" for _ in range(20))
    assert all(augment_caption("x, y", rng, False, 0, 0.0) == "x, y" for _ in range(20))


def test_regularisation_cycles_to_training_count_with_prior_weight(tmp_path):
    for i in range(2):
        _image(tmp_path / "train" / "3_thing" / f"{i}.png", (64, 64), i)
    for i in range(4):
        _image(tmp_path / "reg" / "1_class" / f"{i}.png", (64, 64), 10 + i)
    dataset = ImageDataset(_config(tmp_path / "train", reg_dir=tmp_path / "reg", prior_loss_weight=0.25,
                                   batch_size=4))
    summary = dataset.summary()
    assert summary.samples_per_epoch == 6 and summary.reg_images == 4 and summary.reg_samples == 6
    host = PoolingHost()
    dataset.cache_latents(host)
    weights = torch.cat([b.loss_weights for b in dataset.batches(host, epoch=0)])
    assert sorted(weights.tolist()) == [0.25] * 6 + [1.0] * 6


def test_cycle_regularisation_follows_kohya():
    class R:  # only `repeats` matters here
        def __init__(self, repeats):
            self.repeats = repeats
    assert cycle_regularisation([R(1)] * 4, 6) == [0, 1, 2, 3, 0, 1]
    assert cycle_regularisation([R(2)] * 5, 6) == [0, 0, 1, 1, 2, 2]  # a large set is cut short
    assert cycle_regularisation([], 6) == []


def test_latents_are_cached_once(data):
    host = PoolingHost()
    dataset = ImageDataset(_config(data, batch_size=2))
    assert dataset.cache_latents(host) == 4 and host.encoded == 4
    assert dataset.cache_latents(host) == 0 and host.encoded == 4
    batches = list(dataset.batches(host, epoch=0))
    assert host.encoded == 4 and all(isinstance(b, Batch) for b in batches)
    assert sum(len(b.captions) for b in batches) == 8
    for b in batches:
        assert b.latents.shape[0] == len(b.captions) == b.loss_weights.shape[0] and b.latents.dtype == torch.float32
    lazy, counting = ImageDataset(_config(data, batch_size=2)), PoolingHost()
    for epoch in range(3):
        list(lazy.batches(counting, epoch))
    assert counting.encoded == 4  # the first call caches every image; later epochs reuse them
    uncached = ImageDataset(_config(data, batch_size=2, cache_latents=False))
    fresh = PoolingHost()
    list(uncached.batches(fresh, epoch=0))
    assert fresh.encoded == 8  # each sample encoded as it comes


def test_order_is_deterministic_resumable_and_shardable(data):
    config = _config(data, batch_size=1, shuffle_caption=True, flip_aug=True, seed=7)
    one, two = ImageDataset(config), ImageDataset(config)
    assert one.epoch_plan(3) == two.epoch_plan(3)
    assert one.epoch_plan(0) != one.epoch_plan(1)
    assert ImageDataset(_config(data, batch_size=1, seed=8)).epoch_plan(0) != ImageDataset(
        _config(data, batch_size=1, seed=7)).epoch_plan(0)
    host = PoolingHost()
    one.cache_latents(host)
    full = list(one.batches(host, epoch=2))
    resumed = list(one.batches(host, epoch=2, start=3))
    assert len(resumed) == len(full) - 3
    assert all(torch.equal(a.latents, b.latents) and a.captions == b.captions for a, b in zip(full[3:], resumed))
    shards = [list(one.batches(host, epoch=2, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == one.batches_per_epoch(2) == len(full) // 2
    interleaved = [b for pair in zip(*shards) for b in pair]
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(interleaved, full))


@pytest.mark.parametrize("batch_size, bucketed, one", [(4, False, True), (8, False, True), (16, False, True),
                                                       (3, False, False), (1, True, False)])
def test_one_batch_shape_says_what_every_batch_is(data, batch_size, bucketed, one):
    """8 samples: of one bucket without bucketing (full batches of 4 or 8, one short batch of 8 for 16, batches of
    3, 3 and 2 for 3), of three buckets with it. The answer holds for every epoch and for a data-parallel shard."""
    dataset = ImageDataset(_config(data, batch_size=batch_size, enable_bucket=bucketed))
    host = PoolingHost()
    shapes = {tuple(b.latents.shape) for epoch in range(3) for b in dataset.batches(host, epoch=epoch)}
    assert (len(shapes) == 1) is one and dataset.one_batch_shape() is one
    assert ShardedSource(dataset, SimpleNamespace(rank=1, world_size=2)).one_batch_shape() is one


def test_config_checks():
    assert parse_resolution("600,900") == (600, 900) and parse_resolution("512") == (512, 512)
    with pytest.raises(DatasetError):
        DatasetConfig(data_dir=Path("x"), resolution="big")
    with pytest.raises(DatasetError, match="min_bucket_reso"):
        DatasetConfig(data_dir=Path("x"), resolution="64")
    with pytest.raises(DatasetError):
        DatasetConfig(data_dir=Path("x"), bucket_reso_steps=12)
    with pytest.raises(DatasetError):
        DatasetConfig(data_dir=Path("x"), caption_dropout_rate=1.5)
    with pytest.raises(DatasetError):
        DatasetConfig(data_dir=Path("x"), batch_size=0)
    assert DatasetConfig(data_dir=Path("x"), caption_extension="txt").caption_extension == ".txt"
