"""Per-block LoRA strengths applied through the built-in Lora's own math (A1111; docs/architecture.md §7).

Strength enters the built-in math in one place, `NetworkModule.multiplier()`. For a network with block weights we
give each of its module *instances* a multiplier scaled by that module's block weight (no class is patched), and
we make the built-in weight cache re-merge the layers of any network whose weights changed: that cache keys
layers on (name, te, unet, dyn) only, so without help a change of block weights alone would not be seen.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Optional, Sequence

from ..core.block_spec import BlockWeights, parse_block_spec
from ..core.errors import NonFiniteSpec, SpecError
from ..core.family import Family
from . import patching

SIGNATURE_ATTR = "copylora_block_signature"
STALE = ("copylora: block weights changed",)
OWNER = "block weights"
SUPPORTED = "SD1, SD2 or SDXL"


@dataclass
class BlockReport:
    """What one activation did, for the generation's comment, the console and the infotext."""

    problems: list[str] = field(default_factory=list)
    applied: dict[str, BlockWeights] = field(default_factory=dict)


def kohya_name_of(module) -> str:
    """The LoRA file's module name (`lora_unet_..._to_q`) behind a built-in NetworkModule."""
    return module.network_key.split(".", 1)[0]


def _scaled_multiplier(module, weight: float) -> float:
    return type(module).multiplier(module) * weight


def _set_module_weight(module, weight: float) -> None:
    patching.set_attribute(module, "multiplier", functools.partial(_scaled_multiplier, module, weight), OWNER)


def _remerge_key(net) -> tuple:
    return ("block weights re-merge", id(net))


def _set_signature(net, signature: tuple) -> None:
    """Mark the network as ours; undoing that (a script unload) makes the built-in cache re-merge its layers."""
    patching.set_attribute(net, SIGNATURE_ATTR, signature, OWNER)
    patching.add(_remerge_key(net), net, invalidate_merged_weights, OWNER)


def clear_overrides(net) -> bool:
    """Remove our per-instance multipliers; True when there were any."""
    had = getattr(net, SIGNATURE_ATTR, None) is not None
    for module in net.modules.values():
        patching.restore_attribute(module, "multiplier")
    patching.forget(_remerge_key(net))
    patching.restore_attribute(net, SIGNATURE_ATTR)
    return had


def invalidate_merged_weights(net) -> None:
    """Make the built-in cache re-merge every layer this network touches on the next forward. A layer whose
    current set is empty was never merged (or was restored), so it has nothing to redo."""
    for module in net.modules.values():
        layer = module.sd_module
        if getattr(layer, "network_current_names", ()) != ():
            layer.network_current_names = STALE


class Action(enum.Enum):
    APPLY = "apply"  # scale each module by its block's weight
    PLAIN = "plain"  # the LoRA's plain weight: no spec, all ones, a bad spec, or a model without these blocks
    SKIP = "skip"  # weight 0: a nan/inf spec would poison the image, so the LoRA is left out


class Decision(NamedTuple):
    action: Action
    weights: Optional[BlockWeights] = None
    problem: Optional[str] = None  # one line for the generation's comment and the console


def resolve_spec(name: str, spec: str, family: Family, presets: Mapping[str, Sequence[float]]) -> Optional[BlockWeights]:
    """Parse a tag's spec; a bad one raises SpecError (NonFiniteSpec for nan/inf) naming the LoRA."""
    try:
        return parse_block_spec(spec, family, presets)
    except SpecError as exc:
        raise type(exc)(f"<lora:{name}> block weights '{spec}': {exc}") from exc


def decide(name: str, spec: Optional[str], family: Optional[Family],
           presets: Mapping[str, Sequence[float]]) -> Decision:
    """What one LoRA tag's block weights do, on A1111 and on Forge alike. `family` None: the loaded model is
    not one block weights describe (SD3, Flux, ...)."""
    if spec is None:
        return Decision(Action.PLAIN)
    if family is None:
        return Decision(Action.PLAIN, problem=f"<lora:{name}> block weights need an {SUPPORTED} model; "
                                              "using its plain weight")
    try:
        weights = resolve_spec(name, spec, family, presets)
    except NonFiniteSpec as exc:
        return Decision(Action.SKIP, problem=f"{exc}; this LoRA is skipped")
    except SpecError as exc:
        return Decision(Action.PLAIN, problem=f"{exc}; using its plain weight")
    if weights.is_identity:
        return Decision(Action.PLAIN)
    return Decision(Action.APPLY, weights)


def _apply_to_network(net, weights: BlockWeights, report: BlockReport) -> None:
    names = [kohya_name_of(m) for m in net.modules.values()]
    note = weights.uncovered_note(f"<lora:{net.mentioned_name or net.name}>", names)
    if note is not None:
        report.problems.append(note)
    for module, kohya_name in zip(net.modules.values(), names):
        _set_module_weight(module, weights.weight_for(kohya_name))


def _skip_network(net) -> None:
    for module in net.modules.values():
        _set_module_weight(module, 0.0)


def apply_block_weights(loaded_networks, specs: Mapping[str, str], family: Optional[Family],
                        presets: Mapping[str, Sequence[float]]) -> BlockReport:
    """Give every loaded network the block weights its tag asked for (or none), re-merging only what changed.

    `specs` maps the name used in the prompt (`net.mentioned_name`) to its `lbw=` text."""
    report = BlockReport()
    for net in loaded_networks:
        mentioned = net.mentioned_name or net.name
        signature = _configure(net, decide(mentioned, specs.get(mentioned), family, presets), mentioned, report)
        if signature is None:
            changed = clear_overrides(net)
        else:
            changed = getattr(net, SIGNATURE_ATTR, None) != signature
            _set_signature(net, signature)
        if changed:
            invalidate_merged_weights(net)
    return report


def _configure(net, decision: Decision, mentioned: str, report: BlockReport) -> Optional[tuple]:
    """Set the network's per-module multipliers; returns its signature, or None for plain weight."""
    if decision.problem is not None:
        report.problems.append(decision.problem)
    if decision.action is Action.SKIP:
        _skip_network(net)
        return ("skipped",)
    if decision.action is Action.PLAIN:
        return None
    _apply_to_network(net, decision.weights, report)
    report.applied[mentioned] = decision.weights
    return (decision.weights.blocks, decision.weights.values)


def undo_all(networks_module) -> None:
    """Remove every override we set (script unload / reload): the built-in math is as if we were never here."""
    nets = {id(n): n for n in list(networks_module.networks_in_memory.values()) + list(networks_module.loaded_networks)}
    for net in nets.values():
        if clear_overrides(net):
            invalidate_merged_weights(net)
