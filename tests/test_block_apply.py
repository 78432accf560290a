"""Block weights through the built-in Lora's own strength hook, on objects shaped like its NetworkModule.

The real thing is tested on the WebUI (tests/webui); this pins our logic: per-instance multipliers, the weight
cache invalidated only when a network's weights change, bad specs reported with a fallback."""

import pytest

from lib_copylora.core.family import Family
from lib_copylora.core.presets import default_presets
from lib_copylora.webui.block_apply import STALE, apply_block_weights, undo_all

TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
IN01 = "lora_unet_down_blocks_0_attentions_0_proj_in"
MID = "lora_unet_mid_block_attentions_0_proj_in"
OUT11 = "lora_unet_up_blocks_3_attentions_2_proj_out"
TIME = "lora_unet_time_embedding_linear_1"


class Layer:
    def __init__(self):
        self.network_current_names = (("x", 1.0, 1.0, None),)  # as after a merge by the built-in cache


class Module:
    """Like the built-in NetworkModule: strength comes from the class method `multiplier()`."""

    def __init__(self, net, kohya_name):
        self.network = net
        self.network_key = f"{kohya_name}.lora_down.weight"
        self.sd_key = "transformer_x" if kohya_name.startswith("lora_te") else "diffusion_model_x"
        self.sd_module = Layer()

    def multiplier(self):
        return self.network.te_multiplier if "transformer" in self.sd_key[:20] else self.network.unet_multiplier


class Net:
    def __init__(self, name, te=1.0, unet=1.0):
        self.name = self.mentioned_name = name
        self.te_multiplier, self.unet_multiplier = te, unet
        self.modules = {k: Module(self, k) for k in (TE, IN01, MID, OUT11, TIME)}

    def strengths(self):
        return {k.split("_")[2]: m.multiplier() for k, m in self.modules.items()}

    def stale(self):
        return [m.sd_module.network_current_names == STALE for m in self.modules.values()]


FACE = "face"  # 1,0,0,0,0,0,0,0,0.8,1,1,0.2,0,0,0,0,0


def apply(nets, specs):
    return apply_block_weights(nets, specs, Family.SD1, default_presets())


def test_spec_scales_each_module_by_its_block_and_invalidates_once():
    net = Net("x", te=0.5, unet=0.8)
    report = apply([net], {"x": "1,1,0,0,0,0,0,0.5,0,0,0,0,0,0,0,0,0.25"})
    m = net.modules
    assert m[TE].multiplier() == 0.5 and m[IN01].multiplier() == 0.8
    assert m[MID].multiplier() == pytest.approx(0.4) and m[OUT11].multiplier() == pytest.approx(0.2)
    assert m[TIME].multiplier() == 0.8  # in no block: plain strength, as the LoRA Block Weight extension does
    assert all(net.stale()) and report.problems == [] and "x" in report.applied
    for module in m.values():  # a second activation with the same weights must not force a re-merge
        module.sd_module.network_current_names = ("merged",)
    apply([net], {"x": "1,1,0,0,0,0,0,0.5,0,0,0,0,0,0,0,0,0.25"})
    assert not any(net.stale())


def test_changing_or_removing_weights_re_merges_and_restores_plain_strength():
    net = Net("x")
    apply([net], {"x": FACE})
    for module in net.modules.values():
        module.sd_module.network_current_names = ("merged",)
    apply([net], {"x": "pose"})
    assert all(net.stale())
    for module in net.modules.values():
        module.sd_module.network_current_names = ("merged",)
    apply([net], {})
    assert all(net.stale())
    assert all("multiplier" not in vars(mod) for mod in net.modules.values())
    assert set(net.strengths().values()) == {1.0}


def test_all_ones_leaves_the_strength_exact():
    net = Net("x", te=0.7, unet=0.3)
    apply([net], {"x": "ALL"})  # the 17-value ALL: exact plain strengths for modules in the blocks it names
    assert net.modules[TE].multiplier() == 0.7
    assert {net.modules[k].multiplier() for k in (IN01, MID, OUT11, TIME)} == {0.3}
    apply([net], {"x": ",".join(["1"] * 26)})  # all ones in the full format: no override at all
    assert all("multiplier" not in vars(mod) for mod in net.modules.values())


def test_two_loras_get_their_own_weights():
    a, b = Net("a"), Net("b")
    apply([a, b], {"a": "NONE", "b": "OUTALL"})
    assert a.modules[MID].multiplier() == 0.0 and b.modules[MID].multiplier() == 0.0
    assert a.modules[OUT11].multiplier() == 0.0 and b.modules[OUT11].multiplier() == 1.0


@pytest.mark.parametrize("spec, words", [("1,2,3", "17 or 26"), ("nosuchpreset", "unknown"), ("1,,1", "empty"),
                                         ("SDXL-ALL", "SDXL"), ("1e9," * 16 + "1", "range")])
def test_bad_spec_is_reported_and_falls_back_to_plain_weight(spec, words):
    net, other = Net("x"), Net("y")
    report = apply([net, other], {"x": spec, "y": FACE})
    assert len(report.problems) == 1 and "<lora:x>" in report.problems[0] and words in report.problems[0]
    assert "plain weight" in report.problems[0]
    assert set(net.strengths().values()) == {1.0}
    assert other.modules[MID].multiplier() == 0.0  # the other LoRA still gets its weights


def test_non_finite_weights_skip_the_lora():
    net = Net("x")
    report = apply([net], {"x": "nan," * 16 + "1"})
    assert "skipped" in report.problems[0]
    assert set(net.strengths().values()) == {0.0}


def test_short_format_warns_about_blocks_it_leaves_at_zero():
    net = Net("x")
    net.modules["lora_unet_down_blocks_0_downsamplers_0_conv"] = Module(net, "lora_unet_down_blocks_0_downsamplers_0_conv")
    report = apply([net], {"x": FACE})
    assert any("IN03" in p for p in report.problems)


def test_undo_all_removes_every_override():
    net = Net("x")
    apply([net], {"x": FACE})

    class Networks:
        networks_in_memory = {"x": net}
        loaded_networks = [net]

    undo_all(Networks)
    assert set(net.strengths().values()) == {1.0}
