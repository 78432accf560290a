"""Base-aware kinds (DoRA, OFT, BOFT, IA3, GLoRA) and norm layers: our ΔW equals lycoris-lora's own modules.

As in test_layers_vs_lycoris.py: build the lycoris module on a tiny seeded layer, randomise what its init zeroes,
save its state_dict, read it through our strict reader, and compare our `delta(W)` with the weight lycoris builds
(get_merged_weight − W, or get_diff_weight) and with the change its forward makes. Where the WebUI and lycoris
differ (DoRA's per-output magnitudes, GLoRA's scale in the WebUI's layout), the WebUI is the reference: those
cases are pinned by small worked examples here and by the real WebUI in tests/webui/test_formats_oracle.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from lycoris.functional.general import apply_dora_scale
from lycoris.modules import (ButterflyOFTModule, DiagOFTModule, GLoRAModule, IA3Module, LoConModule, LohaModule,
                             NormModule)

from lib_copylora.core.base_layers import DoraLayer
from lib_copylora.core.formats import lora_from_state_dict, lora_to_state_dict
from lib_copylora.core.layers import LayerKind

LINEAR = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"
NORM = "lora_unet_down_blocks_0_resnets_0_norm1"


def _seeded_base(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Linear(16, 8, bias=False)
    if kind == "conv":
        return nn.Conv2d(4, 8, 3, padding=1, bias=False)
    return nn.LayerNorm(8)


def _randomise(module: nn.Module, seed: int, scale: float = 0.3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.split(".")[0] in {"lora_up", "lora_down", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b",
                                      "oft_blocks", "weight", "a1", "a2", "b1", "b2", "w_norm", "b_norm",
                                      "dora_scale", "rescale"}:
                param.copy_(param + torch.randn(param.shape, generator=gen) * scale)


def _read(module: nn.Module, name: str):
    state = {f"{name}.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    lora = lora_from_state_dict(state)  # strict: every key lycoris saved must be understood
    assert list(lora.layers) == [name]
    return lora.layers[name], state


def _forward_change(module, base, x):
    with torch.no_grad():
        before = base(x)
        module.apply_to()  # the base's forward now runs through the module
        return module(x) - before


def _apply(delta, base, x):
    if isinstance(base, nn.Conv2d):
        return F.conv2d(x, delta, padding=base.padding)
    return F.linear(x, delta)


CASES = {
    # name: (lycoris class, base kind, kwargs, our kind, DoRA?)
    "dora locon linear": (LoConModule, "linear", dict(lora_dim=4, alpha=2.0, weight_decompose=True,
                                                      wd_on_out=False), LayerKind.LORA, True),
    "dora locon conv": (LoConModule, "conv", dict(lora_dim=4, alpha=3.0, weight_decompose=True, wd_on_out=False),
                        LayerKind.LORA, True),
    "oft": (DiagOFTModule, "linear", dict(lora_dim=4), LayerKind.OFT, False),
    "oft rescaled conv": (DiagOFTModule, "conv", dict(lora_dim=4, rescaled=True), LayerKind.OFT, False),
    "boft": (ButterflyOFTModule, "linear", dict(lora_dim=2), LayerKind.BOFT, False),
    "boft rescaled conv": (ButterflyOFTModule, "conv", dict(lora_dim=2, rescaled=True), LayerKind.BOFT, False),
    "ia3 out": (IA3Module, "linear", dict(), LayerKind.IA3, False),
    "ia3 on input": (IA3Module, "linear", dict(train_on_input=True), LayerKind.IA3, False),
    "ia3 conv": (IA3Module, "conv", dict(), LayerKind.IA3, False),
    "glora lycoris layout": (GLoRAModule, "linear", dict(lora_dim=3, alpha=1.5), LayerKind.GLORA, False),
}
_INPUTS = {"linear": (3, 16), "conv": (2, 4, 5, 5)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_delta_matches_lycoris(case):
    cls, base_kind, kwargs, kind, dora = CASES[case]
    seed = sorted(CASES).index(case) + 11
    base = _seeded_base(base_kind, seed)
    torch.manual_seed(seed)
    module = cls("test", base, multiplier=1.0, **kwargs)
    _randomise(module, seed)
    module.eval()
    name = CONV if base_kind == "conv" else LINEAR
    layer, _ = _read(module, name)
    assert layer.kind is kind and layer.needs_base and isinstance(layer, DoraLayer) is dora
    weight = base.weight.detach().clone()
    ours = layer.delta(weight)
    with torch.no_grad():
        theirs = module.get_merged_weight(multiplier=1.0)[0].reshape(weight.shape) - weight
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    x = torch.randn(*_INPUTS[base_kind], generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(_apply(ours, base, x), _forward_change(module, base, x), rtol=1e-4, atol=1e-4)


def test_dora_scale_follows_the_webui_formula():
    """ΔW = (W + s·ΔW₀)·(m / ‖W + s·ΔW₀‖_column) − W, as lycoris' apply_dora_scale and the WebUI compute it."""
    gen = torch.Generator().manual_seed(3)
    weight, up, down = (torch.randn(*shape, generator=gen) for shape in ((6, 5), (6, 2), (2, 5)))
    magnitude = torch.rand(1, 5, generator=gen) + 0.5
    state = {f"{LINEAR}.lora_up.weight": up, f"{LINEAR}.lora_down.weight": down,
             f"{LINEAR}.alpha": torch.tensor(1.0), f"{LINEAR}.dora_scale": magnitude}
    layer = lora_from_state_dict(state).layers[LINEAR]
    expected = apply_dora_scale(weight, up @ down * 0.5, magnitude, 1.0) - weight
    torch.testing.assert_close(layer.delta(weight), expected)
    merged = weight + layer.delta(weight)
    torch.testing.assert_close(merged.norm(dim=0, keepdim=True), magnitude)  # each column has its magnitude


def test_dora_around_loha_uses_the_loha_delta():
    """DoRA beside a LoHa: the same decomposition around the LoHa's ΔW (lycoris' apply_dora_scale). Not compared
    with LohaModule.get_merged_weight: lycoris 4.1.3 applies LoHa's alpha/rank twice on that path."""
    base = _seeded_base("linear", 12)
    module = LohaModule("test", base, multiplier=1.0, lora_dim=4, alpha=2.0, weight_decompose=True, wd_on_out=False)
    _randomise(module, 12)
    layer, state = _read(module, LINEAR)
    assert layer.kind is LayerKind.LOHA and isinstance(layer, DoraLayer)
    weight = base.weight.detach()
    expected = apply_dora_scale(weight, layer.inner.delta(), state[f"{LINEAR}.dora_scale"], 1.0) - weight
    torch.testing.assert_close(layer.delta(weight), expected)


def test_dora_per_output_magnitudes_broadcast_as_the_webui_does():
    """LyCORIS' default `(out, 1)` dora_scale: the WebUI divides it by per-column norms, broadcasting to (out, in)."""
    gen = torch.Generator().manual_seed(4)
    weight, up, down = (torch.randn(*shape, generator=gen) for shape in ((6, 5), (6, 2), (2, 5)))
    magnitude = torch.rand(6, 1, generator=gen) + 0.5
    state = {f"{LINEAR}.lora_up.weight": up, f"{LINEAR}.lora_down.weight": down, f"{LINEAR}.dora_scale": magnitude}
    merged = weight + up @ down
    expected = merged * (magnitude / merged.norm(dim=0, keepdim=True)) - weight
    torch.testing.assert_close(lora_from_state_dict(state).layers[LINEAR].delta(weight), expected)


def test_oft_constraint_clamps_like_lycoris():
    base = _seeded_base("linear", 5)
    module = DiagOFTModule("test", base, multiplier=1.0, lora_dim=4, constraint=1e-3)
    _randomise(module, 5, scale=1.0)  # far past the constraint, so the clamp is active
    layer, _ = _read(module.eval(), LINEAR)
    assert layer.alpha == pytest.approx(1e-3)
    with torch.no_grad():
        theirs = module.get_diff_weight(multiplier=1.0)[0]
    torch.testing.assert_close(layer.delta(base.weight.detach()), theirs, rtol=1e-4, atol=1e-6)


def test_oft_diag_is_the_rotation_itself():
    """Old LyCORIS `oft_diag`: the WebUI uses the stored blocks as R (no Cayley transform): W' = Rᵀ·W per block."""
    gen = torch.Generator().manual_seed(6)
    weight, rotation = torch.randn(4, 3, generator=gen), torch.randn(2, 2, 2, generator=gen)
    layer = lora_from_state_dict({f"{LINEAR}.oft_diag": rotation}).layers[LINEAR]
    expected = torch.cat([rotation[k].T @ weight[2 * k:2 * k + 2] for k in range(2)]) - weight
    torch.testing.assert_close(layer.delta(weight), expected)


def test_kohya_oft_names_and_alpha():
    """kohya sd-scripts' OFT: `oft_unet_` modules (compvis names), alpha the constraint; read as `lora_unet_`."""
    name = "oft_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    lora = lora_from_state_dict({f"{name}.oft_blocks": torch.zeros(4, 2, 2), f"{name}.alpha": torch.tensor(1e-3)})
    layer = lora.layers["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"]
    assert layer.kind is LayerKind.OFT and layer.out_dim == 8
    assert torch.count_nonzero(layer.delta(torch.randn(8, 5))) == 0  # zero blocks: R = I


def test_glora_webui_layout_has_scale_one():
    """The WebUI's layout (a1 (r, in), a2 (in, r), b1 (r, in), b2 (out, r)): ΔW = b2·b1 + W·a2·a1, alpha unused."""
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(6, 5, generator=gen)
    a1, a2, b1, b2 = (torch.randn(*s, generator=gen) for s in ((2, 5), (5, 2), (2, 5), (6, 2)))
    state = {f"{LINEAR}.{k}.weight": v for k, v in zip(("a1", "a2", "b1", "b2"), (a1, a2, b1, b2))}
    state[f"{LINEAR}.alpha"] = torch.tensor(1.0)
    layer = lora_from_state_dict(state).layers[LINEAR]
    assert layer.webui_layout and layer.rank == 2
    torch.testing.assert_close(layer.delta(weight), b2 @ b1 + weight @ a2 @ a1)


def test_norm_layers_are_their_difference():
    base = _seeded_base("norm", 8)
    module = NormModule("test", base, multiplier=1.0)
    _randomise(module, 8)
    layer, _ = _read(module, NORM)
    assert layer.kind is LayerKind.NORM and not layer.needs_base
    with torch.no_grad():
        weight, bias = module.get_diff_weight(multiplier=1.0)
    torch.testing.assert_close(layer.delta(), weight)
    torch.testing.assert_close(layer.diff_b, bias)


@pytest.mark.parametrize("case", ["dora locon conv", "oft rescaled conv", "boft", "ia3 on input",
                                  "glora lycoris layout"])
def test_written_back_reads_the_same(case):
    cls, base_kind, kwargs, _, _ = CASES[case]
    base = _seeded_base(base_kind, 9)
    module = cls("test", base, multiplier=1.0, **kwargs)
    _randomise(module, 9)
    name = CONV if base_kind == "conv" else LINEAR
    lora = lora_from_state_dict({f"{name}.{k}": v.detach().clone() for k, v in module.state_dict().items()})
    again = lora_from_state_dict(lora_to_state_dict(lora, torch.float32))
    weight = base.weight.detach()
    torch.testing.assert_close(again.layers[name].delta(weight), lora.layers[name].delta(weight))


def test_loha_conv_factor_stored_4d_is_read_flattened():
    gen = torch.Generator().manual_seed(10)
    w1a, w2a = torch.randn(8, 2, 1, 1, generator=gen), torch.randn(8, 2, 1, 1, generator=gen)
    w1b, w2b = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    state = {f"{CONV}.hada_w1_a": w1a, f"{CONV}.hada_w1_b": w1b, f"{CONV}.hada_w2_a": w2a,
             f"{CONV}.hada_w2_b": w2b, f"{CONV}.alpha": torch.tensor(1.0)}
    lora = lora_from_state_dict(state)
    layer = lora.layers[CONV]
    assert layer.shape == (8, 4, 3, 3) and layer.stored_4d
    assert lora.notes and "4-D" in lora.notes[0]
    flat = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731
    expected = ((flat(w1a) @ flat(w1b)) * (flat(w2a) @ flat(w2b)) * 0.5).reshape(8, 4, 3, 3)
    torch.testing.assert_close(layer.delta(), expected)
