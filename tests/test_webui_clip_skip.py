"""What A1111 does with a clip skip above 1, said in one note per run: applied to SD1's CLIP; to SDXL's CLIP-L only
with its *Clip skip SDXL* setting; never to OpenCLIP (SD2, SDXL's second encoder). The WebUI tier checks the note
in a real SD2 run (tests/webui/test_training_sd2.py)."""

from __future__ import annotations

import pytest

from lib_copylora.core.family import Family
from lib_copylora.webui.host import clip_skip_note


@pytest.mark.parametrize("family", list(Family))
def test_no_note_without_a_clip_skip(family):
    assert clip_skip_note(family, 1, sdxl_clip_l_skip=True) is None


def test_sd1_applies_it():
    assert clip_skip_note(Family.SD1, 2, sdxl_clip_l_skip=False) is None


def test_sd2_never_applies_it():
    note = clip_skip_note(Family.SD2, 2, sdxl_clip_l_skip=True)
    assert note.startswith("clip skip 2: A1111 applies clip skip to SD1 models only") and "\n" not in note


@pytest.mark.parametrize("setting, says", [(False, "both text encoders give their usual output"),
                                           (True, "applied to SDXL's CLIP-L only")])
def test_sdxl_follows_its_setting(setting, says):
    assert says in clip_skip_note(Family.SDXL, 3, sdxl_clip_l_skip=setting)
