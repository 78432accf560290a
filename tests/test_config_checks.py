"""Every numeric, flag and name field of the training configs is checked where the config is made, whoever makes
it (CLI, API, tab): a generated family of bad values for each field (NaN, inf, text, bools, 1e20, negatives,
fractions for counts) is refused with a TrainingError naming the field; JSON's whole floats become ints."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from lib_copylora.train.config import (LoopConfig, LossConfig, NetworkConfig, OptimConfig, OutputConfig, RouteConfig,
                                       SampleConfig)
from lib_copylora.train.data_config import DatasetConfig
from lib_copylora.train.errors import TrainingError

CONFIGS = (NetworkConfig, OptimConfig, LoopConfig, LossConfig, SampleConfig, OutputConfig, RouteConfig, DatasetConfig)
# what a field needs beside it to be checked at all (re-ranks exist only on the difference route)
CONTEXT = {RouteConfig: {"route": "difference"}, DatasetConfig: {"data_dir": "images"}}
# fields where a huge value is a legitimate "no limit" rather than a typo
NO_UPPER_BOUND = {("OptimConfig", "max_grad_norm"), ("LossConfig", "min_snr_gamma")}


def _plain(hint):
    if typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _fields(kind):
    for cls in CONFIGS:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if _plain(hints[field.name]) is kind and (cls, field.name) != (DatasetConfig, "data_dir"):
                yield cls, field.name


def _default(cls, name):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _cases(kind, values):
    """Each field with each value, except None where None means "not set" and 1e20 where there is no limit."""
    return [pytest.param(cls, name, value, id=f"{cls.__name__}.{name}={value!r}")
            for cls, name in _fields(kind) for value in values
            if not (value == 1e20 and (cls.__name__, name) in NO_UPPER_BOUND)
            and not (value is None and _default(cls, name) is None)]


BAD_NUMBERS = [math.nan, math.inf, -math.inf, "0.1", True, None, [1], 1e20]
BAD_COUNTS = [math.nan, math.inf, 2.5, "8", True, None, 1e20, 10**40, -10**40]


def _refused(cls, name, value):
    with pytest.raises(TrainingError) as caught:
        cls(**{**CONTEXT.get(cls, {}), name: value})
    message = str(caught.value)
    assert name in message and "\n" not in message and len(message) < 300, message


@pytest.mark.parametrize("cls, name, value", _cases(float, BAD_NUMBERS))
def test_every_float_field_refuses_non_finite_text_bools_and_typos(cls, name, value):
    _refused(cls, name, value)


@pytest.mark.parametrize("cls, name, value", _cases(int, BAD_COUNTS))
def test_every_int_field_refuses_fractions_text_bools_and_typos(cls, name, value):
    _refused(cls, name, value)


@pytest.mark.parametrize("cls, name", list(_fields(bool)), ids=lambda x: getattr(x, "__name__", x))
@pytest.mark.parametrize("value", ["yes", 1, 0, None])
def test_every_flag_takes_only_true_or_false(cls, name, value):
    _refused(cls, name, value)


def test_whole_floats_from_json_become_ints_and_prompts_a_list():
    network = NetworkConfig(rank=8.0, conv_rank=4.0)
    assert network.rank == 8 and isinstance(network.rank, int) and network.conv_rank == 4
    assert DatasetConfig(data_dir="x", batch_size=2.0).batch_size == 2
    assert SampleConfig(prompts="one prompt").prompts == ("one prompt",)
    with pytest.raises(TrainingError, match="prompts"):
        SampleConfig(prompts=[1, 2])


@pytest.mark.parametrize("resolution", ["60000", "0", "32", "abc", "1e3", "64,64,64", (64, "a"), 64.0, True, None,
                                        "9" * 5000])
@pytest.mark.parametrize("enable_bucket", [True, False])
def test_resolution_is_checked_with_and_without_buckets(resolution, enable_bucket):
    with pytest.raises(TrainingError) as caught:
        DatasetConfig(data_dir="x", resolution=resolution, enable_bucket=enable_bucket, min_bucket_reso=64)
    assert "resolution" in str(caught.value) and len(str(caught.value)) < 200


@pytest.mark.parametrize("name", ["a\x00b", "a/b", "a\\b", "x" * 201, "", ".hidden", "NUL", "sep\u2028", "q?"])
def test_output_names_follow_one_rule_for_training_and_merging(name):
    from lib_copylora.core.errors import MergeError
    from lib_copylora.core.merge import MergeSpec

    with pytest.raises(TrainingError, match="output_name"):
        OutputConfig(output_name=name)
    with pytest.raises(MergeError, match="output name"):
        MergeSpec(ratios=(1.0,), output_name=name)


def test_the_families_cover_the_fields_the_issue_names():
    floats, ints = {n for _, n in _fields(float)}, {n for _, n in _fields(int)}
    assert {"learning_rate", "text_encoder_lr", "alpha", "conv_alpha", "prior_loss_weight", "noise_offset"} <= floats
    assert {"rank", "conv_rank", "max_steps", "batch_size", "seed", "min_bucket_reso", "new_rank"} <= ints
