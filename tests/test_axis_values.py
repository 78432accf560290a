import pytest

from lib_copylora.core.axis_values import expand_strengths, split_csv


def test_plain_and_named_values():
    assert expand_strengths("0.5, 1, mylora:-0.25") == ["0.5", "1", "mylora:-0.25"]


def test_step_and_count_ranges_like_the_plot():
    assert expand_strengths("0-1 (+0.25)") == ["0", "0.25", "0.5", "0.75", "1"]
    assert expand_strengths("b:1-0 [3]") == ["b:1", "b:0.5", "b:0"]
    assert expand_strengths("-1--0.5 (+0.25)") == ["-1", "-0.75", "-0.5"]


@pytest.mark.parametrize("bad", ["abc", "0-1 (+0)", "x:0-1 [0]"])
def test_bad_values_say_what_to_type(bad):
    with pytest.raises(ValueError, match="'"):
        expand_strengths(bad)


def test_csv_keeps_quoted_commas():
    assert split_csv('face, "1,0,0", IN05 only') == ["face", "1,0,0", "IN05 only"]
