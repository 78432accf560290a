"""DoRA in training: the change a LoRA/LoCon module with lycoris' weight decomposition makes to its target's output,
and its export with `dora_scale`.

lycoris' bypass path (what our hooks use for plain modules) leaves the decomposition out, so the hook computes
W' − W from the host's current weight W, with lycoris' own `weight_decompose` (per-input magnitudes, as configured
in network.py), and applies it with the target's own op. W is the hooked layer's weight at each call, not the one
lycoris was built from: a host may replace a layer's Parameter (Forge does when it moves a model between devices),
and a host's own layer classes reach lycoris only as weightless stand-ins. The base weight is read, never written.
"""

from __future__ import annotations

import torch

from lycoris.functional.general import weight_decompose

from ..core.base_layers import DoraLayer


def dora_delta_output(module: torch.nn.Module, weight: torch.Tensor, x: torch.Tensor,
                      multiplier: float) -> torch.Tensor:
    """What a DoRA `module` adds to the output of the layer whose weight is `weight`, for input `x`."""
    weight = weight.detach().to(torch.float32)
    change = module.make_weight(weight.device).to(torch.float32) * module.scale
    decomposed = weight_decompose(weight + change, module.dora_scale.to(torch.float32), multiplier,
                                  module.wd_on_out)
    delta = (decomposed - weight).to(x.dtype)
    return module.op(x, delta, None, **module.kw_dict)


def with_magnitude(layer, module: torch.nn.Module):
    """The exported layer, wrapped with its `dora_scale` when the module decomposes its weight."""
    if not getattr(module, "wd", False):
        return layer
    return DoraLayer(layer, module.dora_scale.detach().to(device="cpu", dtype=torch.float32).clone())


class TrainingBase:
    """The host's own weights as the base of the difference route's B − A (core/base_weights.py protocol): the
    modules a network trained on, read (as float32 copies on the CPU), never written."""

    def __init__(self, network, family, label: str = "the training host's model"):
        self.placements = network.placements
        self.family = family
        self.label = label

    def weight(self, module: str) -> torch.Tensor:
        from ..core.errors import BaseModelError

        placement = self.placements.get(module)
        if placement is None:
            raise BaseModelError(f"module {module}: the training host has no such module")
        return placement.target.module.weight.detach().to("cpu", torch.float32, copy=True)

    def describe(self) -> dict:
        return {"name": self.label, "family": self.family.value, "sha256": None}
