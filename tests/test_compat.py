"""Host detection (webui/compat.py) on stand-ins: the loaded model's family from the WebUI's and Forge's flags, and
an unknown model refused in one line everywhere that asks, never taken for SD1."""

from types import SimpleNamespace

import pytest

from lib_copylora.core.errors import CopyLoraError
from lib_copylora.core.family import Family
from lib_copylora.webui import compat
from lib_copylora.webui.block_apply import Action, apply_block_weights, decide
from lib_copylora.webui.model_state import refuse_unsupported

from test_block_apply import FACE, Net
from test_webui_model_state import TinyModel, opts


def flags(**on):
    base = {"is_sd1": False, "is_sd2": False, "is_sdxl": False, "is_sd3": False}
    return SimpleNamespace(**{**base, **on})


@pytest.mark.parametrize("model, family", [
    (flags(is_sd1=True), Family.SD1), (flags(is_sd2=True), Family.SD2), (flags(is_sdxl=True), Family.SDXL),
    (SimpleNamespace(is_sdxl=True, is_ssd=True), Family.SDXL),
])
def test_families_from_the_hosts_flags(model, family):
    assert compat.model_family(model) is family


def test_an_old_webui_without_is_sd1_still_knows_sd1():
    LatentDiffusion = type("LatentDiffusion", (), {"is_sd2": False, "is_sdxl": False})
    assert compat.model_family(LatentDiffusion()) is Family.SD1


@pytest.mark.parametrize("model, shown", [(flags(is_sd3=True), "SD3"), (flags(), "SimpleNamespace"),
                                          (SimpleNamespace(is_flux=True), "Flux")])
def test_unknown_models_are_unsupported_not_sd1(model, shown):
    with pytest.raises(compat.UnsupportedModel) as caught:
        compat.model_family(model)
    message = str(caught.value)
    assert message.startswith("unsupported model") and shown in message and "\n" not in message
    assert issubclass(compat.UnsupportedModel, CopyLoraError)


def test_training_refuses_an_unknown_model_in_one_line():
    model = TinyModel()
    model.is_sd1, model.is_sd3 = False, True
    with pytest.raises(compat.UnsupportedModel, match="unsupported model: the loaded checkpoint is SD3"):
        refuse_unsupported(model, opts())


def test_block_weights_on_an_unknown_model_keep_plain_weight_and_say_so():
    assert decide("x", FACE, None, {}).action is Action.PLAIN
    net = Net("x")
    report = apply_block_weights([net], {"x": "1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0"}, None, {})
    assert report.problems == ["<lora:x> block weights need an SD1, SD2 or SDXL model; using its plain weight"]
    assert set(net.strengths().values()) == {1.0} and report.applied == {}


def test_model_kind_checks():
    inpaint = SimpleNamespace(model=SimpleNamespace(conditioning_key="hybrid"))
    assert compat.is_inpainting(inpaint) and not compat.is_inpainting(SimpleNamespace(model=SimpleNamespace()))
    assert compat.is_inpainting(SimpleNamespace(is_sdxl_inpaint=True))
    assert compat.training_alphas_cumprod(SimpleNamespace(alphas_cumprod=1, alphas_cumprod_original=2)) == 2
    assert compat.training_alphas_cumprod(SimpleNamespace(alphas_cumprod=1)) == 1
    assert compat.layer_mapping(SimpleNamespace()) is None
    assert compat.request_values(SimpleNamespace(dict=lambda: {"a": 1})) == {"a": 1}
    assert compat.uploaded_path(SimpleNamespace(name="/tmp/x.png")) == "/tmp/x.png" and compat.uploaded_path("p") == "p"
