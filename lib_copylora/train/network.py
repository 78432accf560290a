"""LyCORIS modules (LoRA, LoCon, LoHa, LoKr) on the host's target modules, and their export to a `LoraFile`.

The modules come from lycoris-lora; we never let them patch the host. lycoris' own `apply_to` replaces
`module.forward` and leaves attributes behind on the host's module, so instead each target gets a forward hook
that adds the module's ΔW·x (`bypass_forward_diff`) to the output. Removing the hook handles restores the host's
modules exactly, and the base weights are never written: a base model ends bit-identical however training ends.
Several networks may hook one module (the copier's frozen A under a trained B): their ΔW·x add up.
DoRA modules (LoRA/LoCon with weight decomposition) have no bypass form in lycoris, so their hook applies the
decomposed weight's change, computed from the host's current weight (dora.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple, Optional

import torch
from lycoris.modules.locon import LoConModule
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule

from ..core.family import Family
from ..core.layers import Layer, LohaLayer, LokrLayer, LowRankLayer
from ..core.lorafile import LoraFile
from .config import NetworkConfig, NetworkKind
from .dora import dora_delta_output, with_magnitude
from .errors import TrainingError
from .host import Component, TargetModule
from .lowrank import fusable, lowrank_hook

_MODULE_CLASS = {NetworkKind.LORA: LoConModule, NetworkKind.LOCON: LoConModule,
                 NetworkKind.LOHA: LohaModule, NetworkKind.LOKR: LokrModule}


class Placement(NamedTuple):
    """A target the network trains, with the rank and alpha its module gets."""

    target: TargetModule
    rank: int
    alpha: float


def select_targets(targets: list[TargetModule], config: NetworkConfig) -> list[Placement]:
    """kohya's rules: Linear and 1×1 convs get `rank`/`alpha`; k×k convs and everything in ResNet/sampler blocks
    only for LoCon-style kinds, k×k ones with the conv rank/alpha; text-encoder modules only when asked."""
    chosen, seen = [], set()
    for target in targets:
        if target.kohya_name in seen:
            raise TrainingError(f"the host offers two modules named {target.kohya_name}")
        seen.add(target.kohya_name)
        if target.component is Component.TEXT_ENCODER and not config.train_text_encoder:
            continue
        if target.conv_block and not config.kind.trains_conv_blocks:
            continue
        module = target.module
        if is_linear_like(module) or (isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) == (1, 1)):
            chosen.append(Placement(target, config.rank, config.alpha))
        elif isinstance(module, torch.nn.Conv2d):
            if config.kind.trains_conv_blocks:
                chosen.append(Placement(target, config.effective_conv_rank, config.effective_conv_alpha))
        else:
            raise TrainingError(f"{target.kohya_name} is a {type(module).__name__}; LoRA modules go on Linear "
                                "and Conv2d layers only")
    if not chosen:
        raise TrainingError(f"the host offers no module a {config.kind.value} network can train")
    return chosen


def is_linear_like(module: torch.nn.Module) -> bool:
    """A torch Linear, or a host's own linear layer (Forge builds its models from layer classes of its own that
    derive from nn.Module, not nn.Linear, but keep nn.Linear's attributes and weight layout)."""
    if isinstance(module, torch.nn.Linear):
        return True
    weight = getattr(module, "weight", None)
    return (isinstance(getattr(module, "in_features", None), int) and isinstance(weight, torch.Tensor)
            and tuple(weight.shape) == (getattr(module, "out_features", None), module.in_features))


def shape_stand_in(module: torch.nn.Module) -> torch.nn.Module:
    """What lycoris builds its module from. lycoris only reads the layer's class and geometry, and it builds its own
    factors with the layer's class: a host's subclass (Forge's Conv2d skips initialisation, its Linear is no
    nn.Linear) gets a weightless torch layer of the same geometry instead. The hook still goes on the real layer."""
    if type(module) in (torch.nn.Linear, torch.nn.Conv2d):
        return module
    if is_linear_like(module):
        return torch.nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
    if isinstance(module, torch.nn.Conv2d):
        return torch.nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                               padding=module.padding, dilation=module.dilation, groups=module.groups, bias=False,
                               device="meta")
    return module


def _make_module(placement: Placement, config: NetworkConfig) -> torch.nn.Module:
    cls = _MODULE_CLASS[config.kind]
    kwargs = dict(multiplier=1.0, lora_dim=placement.rank, alpha=placement.alpha, use_tucker=config.use_tucker)
    if config.kind is NetworkKind.LOKR:
        kwargs.update(factor=config.lokr_factor, decompose_both=False)
    stand_in = shape_stand_in(placement.target.module)
    if config.dora:  # per-input magnitudes: the layout the WebUI's built-in Lora applies
        kwargs.update(weight_decompose=True, wd_on_out=False)
        if stand_in is not placement.target.module:
            return _dora_from_stand_in(cls, placement, stand_in, kwargs)
    return cls(placement.target.kohya_name, stand_in, **kwargs)


def _dora_from_stand_in(cls, placement: Placement, stand_in: torch.nn.Module, kwargs: dict) -> torch.nn.Module:
    """lycoris measures DoRA's initial magnitudes from its source layer's weight, and keeps that layer. A host's own
    layer lends its weight (shared, not copied) to the weightless stand-in for the measurement and takes it back, so
    the module holds no reference to the model's memory; its hook reads the live layer's weight (dora.py)."""
    weight = getattr(placement.target.module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TrainingError(f"{placement.target.kohya_name}: DoRA needs the layer's weight and this "
                            f"{type(placement.target.module).__name__} holds none; train without dora")
    empty = stand_in.weight
    stand_in.weight = torch.nn.Parameter(weight.detach(), requires_grad=False)
    try:
        return cls(placement.target.kohya_name, stand_in, **kwargs)
    finally:
        stand_in.weight = empty


class LoraNetwork(torch.nn.Module):
    """The trainable (or frozen) LyCORIS modules of one LoRA, keyed by kohya module name.

    `multiplier` scales every module's ΔW while attached (0 turns the network off for previews). `fused` sends
    plain LoRA/LoCon modules through `lowrank.lowrank_hook` instead of lycoris' per-call dispatch (same results)."""

    def __init__(self, targets: list[TargetModule], config: NetworkConfig, seed: int, device=None,
                 fused: bool = True):
        super().__init__()
        self.config, self.fused = config, fused
        self.placements = {p.target.kohya_name: p for p in select_targets(targets, config)}
        self.modules_by_name = torch.nn.ModuleDict()
        self.multiplier = 1.0
        # lycoris initialises from torch's global generator; fork it so the caller's stream is untouched and
        # the initial weights depend on `seed` alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for name, placement in self.placements.items():
                self.modules_by_name[name] = _make_module(placement, config)
        self.to(device=device, dtype=torch.float32)

    def parameter_groups(self, unet_lr: float, text_encoder_lr: float) -> list[dict]:
        """One optimizer group per component that has modules, each with its own learning rate."""
        groups = []
        for component, lr in ((Component.UNET, unet_lr), (Component.TEXT_ENCODER, text_encoder_lr)):
            params = [p for name, module in self.modules_by_name.items()
                      if self.placements[name].target.component is component for p in module.parameters()]
            if params:
                groups.append({"params": params, "lr": lr, "initial_lr": lr, "name": component.value})
        return groups

    def freeze(self) -> "LoraNetwork":
        self.requires_grad_(False)
        self.eval()
        return self

    @contextmanager
    def attached(self) -> Iterator["LoraNetwork"]:
        """Hook every module onto its target for the duration; the hooks are gone afterwards, whatever happens."""
        handles = []
        try:
            for name, module in self.modules_by_name.items():
                target = self.placements[name].target.module
                handles.append(target.register_forward_hook(self._hook(module)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, module: torch.nn.Module):
        if self.fused and fusable(module):
            return lowrank_hook(module, lambda: self.multiplier)
        return _delta_hook(self, module)

    def weights(self) -> dict[str, torch.Tensor]:
        """Copies of every trained tensor, for resume states."""
        return {name: p.detach().clone() for name, p in self.named_parameters()}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        if set(params) != set(weights):
            missing, extra = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
            raise TrainingError(f"the saved network does not fit this one (missing {missing[:3]}, extra {extra[:3]}):"
                                " resume with the settings it was trained with")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name])

    def export(self, family: Family, metadata: Optional[dict[str, str]] = None) -> LoraFile:
        """The modules as core layer records (float32, CPU) keyed by kohya name, ready for `write_lora`."""
        with torch.no_grad():
            layers = {name: module_to_layer(module) for name, module in self.modules_by_name.items()}
        return LoraFile(layers=layers, family=family, metadata=dict(metadata or {}))


def _delta_hook(network: LoraNetwork, module: torch.nn.Module):
    def hook(target, args, output):
        if network.multiplier == 0.0:
            return output
        if getattr(module, "wd", False):
            return output + dora_delta_output(module, target.weight, args[0], network.multiplier)
        return output + module.bypass_forward_diff(args[0], scale=network.multiplier)
    return hook


def _t(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if tensor is None else tensor.detach().to(device="cpu", dtype=torch.float32).clone()


def module_to_layer(module: torch.nn.Module) -> Layer:
    """A lycoris module as the record that stores it; lycoris' `scalar` (1 unless use_scalar) folds into the
    first factor as lycoris' own state dict does."""
    alpha = float(module.alpha)
    scalar = module.scalar
    if isinstance(module, LoConModule):
        layer = LowRankLayer(down=_t(module.lora_down.weight), up=_t(module.lora_up.weight * scalar), alpha=alpha,
                             mid=_t(module.lora_mid.weight) if module.tucker else None)
        return with_magnitude(layer, module)
    if isinstance(module, LohaModule):
        return LohaLayer(w1a=_t(module.hada_w1_a * scalar), w1b=_t(module.hada_w1_b), w2a=_t(module.hada_w2_a),
                         w2b=_t(module.hada_w2_b), shape=tuple(int(s) for s in module.shape), alpha=alpha,
                         t1=_t(module.hada_t1) if module.tucker else None,
                         t2=_t(module.hada_t2) if module.tucker else None)
    if isinstance(module, LokrModule):
        whole1, whole2 = module.use_w1, module.use_w2
        return LokrLayer(
            shape=tuple(int(s) for s in module.shape),
            w1=_t(module.lokr_w1 * scalar) if whole1 else None,
            w1a=None if whole1 else _t(module.lokr_w1_a * scalar), w1b=None if whole1 else _t(module.lokr_w1_b),
            w2=_t(module.lokr_w2) if whole2 else None,
            w2a=None if whole2 else _t(module.lokr_w2_a), w2b=None if whole2 else _t(module.lokr_w2_b),
            t2=_t(module.lokr_t2) if (module.tucker and not whole2) else None, alpha=alpha)
    raise TrainingError(f"cannot export a {type(module).__name__}")
