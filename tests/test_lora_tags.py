"""Prompt-tag rewriting: our block-weight forms become `lbw=`; built-in forms stay byte-identical."""

import pytest

from lib_copylora.core import lora_tags as lt


@pytest.mark.parametrize(
    "prompt",
    [
        "a cat <lora:x:0.8>",
        "<lora:x:0.5:0.7>",
        "<lora:x:1:te=0.5:unet=0.2>",
        "<lora:x>",
        "<lyco:x:1:0.5:8>",
        "<lora:x:1:lbw=face:te=1>",
        "no tags at all <hypernet:foo:1>",
    ],
)
def test_builtin_forms_are_untouched(prompt):
    assert lt.rewrite_prompt(prompt) == (prompt, [])


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("<lora:x:0.8:face>", "<lora:x:0.8:lbw=face>"),
        ("a <lora:x:1:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1> b",
         "a <lora:x:1:lbw=1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1> b"),
        ("<lora:x:0.8:MIDD:te=0.5>", "<lora:x:0.8:lbw=MIDD:te=0.5>"),
        ("<lyco:y:1:ALL0.5>", "<lyco:y:1:lbw=ALL0.5>"),
        ("<lora:a:1:face> and <lora:b:0.5:pose>", "<lora:a:1:lbw=face> and <lora:b:0.5:lbw=pose>"),
    ],
)
def test_block_forms_move_into_lbw(prompt, expected):
    rewritten, warnings = lt.rewrite_prompt(prompt)
    assert rewritten == expected and warnings == []
    # idempotent: the WebUI calls us again for every batch and for hires prompts
    assert lt.rewrite_prompt(rewritten) == (rewritten, [])


def test_positional_spec_and_lbw_together_keeps_lbw_and_warns():
    rewritten, warnings = lt.rewrite_prompt("<lora:x:1:face:lbw=pose>")
    assert rewritten == "<lora:x:1:lbw=pose>"
    assert len(warnings) == 1 and "lbw=" in warnings[0] and "face" in warnings[0]


def test_rewritten_tag_parses_as_numbers_for_the_builtin_parser():
    rewritten, _ = lt.rewrite_prompt("<lora:x:0.8:face>")
    (tag,) = lt.find_tags(rewritten)
    assert [float(v) for v in tag.positional[1:]] == [0.8]
    assert tag.block_spec == "face"


def test_set_strength_targets_first_tag_or_named_one():
    prompt = "<lora:a:1:face> <lora:b:0.5:0.25>"
    assert lt.set_strength(prompt, 0.3) == "<lora:a:0.3:lbw=face> <lora:b:0.5:0.25>"
    assert lt.set_strength(prompt, 0.7, "b") == "<lora:a:1:face> <lora:b:0.7:0.7>"
    assert lt.set_strength("<lora:c>", 2) == "<lora:c:2>"
    with pytest.raises(ValueError, match="no <lora:zzz"):
        lt.set_strength(prompt, 1, "zzz")


def test_set_block_spec_replaces_existing_spec():
    assert lt.set_block_spec("<lora:a:0.8:face>", "pose") == "<lora:a:0.8:lbw=pose>"
    assert lt.set_block_spec("<lora:a:0.8:lbw=face:te=1>", "ALL") == "<lora:a:0.8:lbw=ALL:te=1>"
    assert lt.set_block_spec("<lora:a>", "1,0,0,0,0,0,0,0,0,0,0,0") == "<lora:a:1:lbw=1,0,0,0,0,0,0,0,0,0,0,0>"
    with pytest.raises(ValueError):
        lt.set_block_spec("no tags", "ALL")


@pytest.mark.parametrize(
    "value, expected",
    [("face", (None, "face")), ("mylora:face", ("mylora", "face")), (" b : 0.5 ", ("b", "0.5"))],
)
def test_axis_values_may_name_their_lora(value, expected):
    assert lt.split_axis_value(value) == expected
