"""The notes an A1111 run logs where A1111 conditions or predicts otherwise than asked. Clip skip above 1: applied
to SD1's CLIP; to SDXL's CLIP-L only with its *Clip skip SDXL* setting; never to OpenCLIP (SD2, SDXL's second
encoder); the WebUI tier checks the note in a real SD2 run (tests/webui/test_training_sd2.py). An SDXL checkpoint
marked v-prediction (`v_pred`) that A1111 loaded as epsilon."""

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


@pytest.fixture()
def checkpoints(tmp_path):
    import torch
    from safetensors.torch import save_file

    marked, plain = tmp_path / "noob_vpred.safetensors", tmp_path / "base.safetensors"
    save_file({"v_pred": torch.tensor([]), "model.w": torch.zeros(1)}, str(marked))
    save_file({"model.w": torch.zeros(1)}, str(plain))
    return marked, plain


def test_an_sdxl_checkpoint_marked_v_prediction_but_loaded_as_epsilon_gets_a_note(checkpoints):
    from lib_copylora.train.host import Prediction
    from lib_copylora.webui.host import v_prediction_note

    marked, plain = checkpoints
    note = v_prediction_note(Family.SDXL, Prediction.EPSILON, str(marked))
    assert note.startswith("this SDXL checkpoint marks itself v-prediction") and ".yaml" in note
    assert v_prediction_note(Family.SDXL, Prediction.V, str(marked)) is None  # a config beside it made it v
    assert v_prediction_note(Family.SDXL, Prediction.EPSILON, str(plain)) is None
    assert v_prediction_note(Family.SD2, Prediction.EPSILON, str(marked)) is None  # A1111 detects SD2's v itself
    assert v_prediction_note(Family.SDXL, Prediction.EPSILON, None) is None
    broken = marked.with_name("broken.safetensors")
    broken.write_bytes(b"not a safetensors file")
    assert v_prediction_note(Family.SDXL, Prediction.EPSILON, str(broken)) is None
