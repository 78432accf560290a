"""Our ΔW equals what lycoris-lora's own modules apply, for every kind and layout we read.

Each case builds a lycoris module on a tiny nn.Linear / nn.Conv2d, randomises all its factors (their inits zero
one side), saves it with the module's own state_dict, reads those keys through our reader, and compares our ΔW with
(1) the weight lycoris rebuilds and (2) the change lycoris' forward makes to the layer's output. alpha differs from
the rank everywhere, so a wrong scale, factor order, Tucker contraction or conv reshape fails here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from lycoris.modules import LoConModule, LohaModule, LokrModule

from lib_copylora.core.formats import lora_from_state_dict
from lib_copylora.core.layers import LayerKind

LINEAR_NAME = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
CONV_NAME = "lora_unet_down_blocks_0_resnets_0_conv1"  # a 3×3 conv by name: flattened layouts need it


def _randomise(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.startswith(("lora_", "hada_", "lokr_")):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)


def _lycoris_module(cls, base: nn.Module, seed: int, **kwargs):
    torch.manual_seed(seed)
    module = cls("test", base, multiplier=1.0, **kwargs)
    _randomise(module, seed)
    return module.eval()


def _our_layer(module: nn.Module, name: str):
    state = {f"{name}.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    lora = lora_from_state_dict(state)  # strict: every key lycoris saved must be understood
    assert list(lora.layers) == [name]
    return lora.layers[name]


def _forward_delta(module, base, x) -> torch.Tensor:
    with torch.no_grad():
        return module(x) - base(x)


def _apply(delta: torch.Tensor, base: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(base, nn.Conv2d):
        return F.conv2d(x, delta, stride=base.stride, padding=base.padding)
    return F.linear(x, delta)


CASES = {
    "lora linear": (LoConModule, "linear", dict(lora_dim=4, alpha=2.0), LayerKind.LORA),
    "locon conv 3x3": (LoConModule, "conv", dict(lora_dim=4, alpha=3.0), LayerKind.LORA),
    "locon tucker": (LoConModule, "conv", dict(lora_dim=4, alpha=3.0, use_tucker=True), LayerKind.LORA),
    "loha linear": (LohaModule, "linear", dict(lora_dim=4, alpha=2.0), LayerKind.LOHA),
    "loha conv flattened": (LohaModule, "conv", dict(lora_dim=3, alpha=2.0), LayerKind.LOHA),
    "loha tucker": (LohaModule, "conv", dict(lora_dim=3, alpha=2.0, use_tucker=True), LayerKind.LOHA),
    "lokr whole halves": (LokrModule, "linear", dict(lora_dim=8, alpha=2.0), LayerKind.LOKR),
    "lokr factorised halves": (LokrModule, "wide", dict(lora_dim=2, alpha=3.0, decompose_both=True),
                               LayerKind.LOKR),
    "lokr conv flattened": (LokrModule, "wide_conv", dict(lora_dim=1, alpha=3.0), LayerKind.LOKR),
    "lokr conv tucker": (LokrModule, "wide_conv", dict(lora_dim=1, alpha=3.0, use_tucker=True), LayerKind.LOKR),
}
_BASES = {
    "linear": lambda: (nn.Linear(8, 6, bias=False), LINEAR_NAME, (3, 8)),
    "conv": lambda: (nn.Conv2d(4, 6, 3, padding=1, bias=False), CONV_NAME, (2, 4, 5, 5)),
    # big enough that lycoris factorises the Kronecker halves (it keeps small halves whole)
    "wide": lambda: (nn.Linear(64, 48, bias=False), LINEAR_NAME, (3, 64)),
    "wide_conv": lambda: (nn.Conv2d(16, 12, 3, padding=1, bias=False), CONV_NAME, (2, 16, 5, 5)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_delta_matches_lycoris(case):
    cls, base_kind, kwargs, kind = CASES[case]
    torch.manual_seed(0)
    base, name, x_shape = _BASES[base_kind]()
    module = _lycoris_module(cls, base, seed=1, **kwargs)
    layer = _our_layer(module, name)
    assert layer.kind is kind
    ours = layer.delta()
    assert tuple(ours.shape) == tuple(base.weight.shape)

    with torch.no_grad():
        if cls is LoConModule:
            theirs = module.get_diff_weight(multiplier=1.0)[0]
        else:
            # LoHa/LoKr get_weight already holds the alpha/rank scale (their forward applies it once).
            theirs = module.get_weight(module.shape) * module.scalar
    scale = theirs.abs().max().item()
    assert scale > 1e-3  # a randomised module has a real delta
    torch.testing.assert_close(ours, theirs.reshape(ours.shape), rtol=1e-5, atol=1e-5 * scale)

    x = torch.randn(*x_shape, generator=torch.Generator().manual_seed(2))
    out_scale = _forward_delta(module, base, x).abs().max().item()
    torch.testing.assert_close(_apply(ours, base, x), _forward_delta(module, base, x), rtol=1e-4,
                               atol=1e-5 * out_scale)


def test_factorised_lokr_case_really_factorises_both_halves():
    # guards the test above: if lycoris kept the halves whole, "factorised halves" would test nothing new
    base, name, _ = _BASES["wide"]()
    layer = _our_layer(_lycoris_module(LokrModule, base, 1, lora_dim=2, alpha=3.0, decompose_both=True), name)
    assert layer.w1 is None and layer.w2 is None and layer.rank == 2


def test_flattened_lokr_conv_has_no_kernel_in_its_tensors():
    base, name, _ = _BASES["wide_conv"]()
    layer = _our_layer(_lycoris_module(LokrModule, base, 1, lora_dim=1, alpha=3.0), name)
    assert layer.w2b.dim() == 2 and layer.t2 is None  # the 3×3 came from the module name
    assert layer.shape == (12, 16, 3, 3)
