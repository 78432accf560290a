"""Per-block LoRA strengths applied through the built-in Lora's own math (A1111; DESIGN §5).

Strength enters the built-in math in one place, `NetworkModule.multiplier()`. For a network with block weights we
give each of its module *instances* a multiplier scaled by that module's block weight (no class is patched), and
we make the built-in weight cache re-merge the layers of any network whose weights changed: that cache keys
layers on (name, te, unet, dyn) only, so without help a change of block weights alone would not be seen.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from ..core.block_spec import BlockWeights, parse_block_spec
from ..core.errors import SpecError
from ..core.family import Family
from . import patching

SIGNATURE_ATTR = "copylora_block_signature"
STALE = ("copylora: block weights changed",)
OWNER = "block weights"


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


def resolve_spec(name: str, spec: str, family: Family, presets: Mapping[str, Sequence[float]]) -> Optional[BlockWeights]:
    """Parse a tag's spec; a bad one raises SpecError naming the LoRA."""
    try:
        return parse_block_spec(spec, family, presets)
    except SpecError as exc:
        raise SpecError(f"<lora:{name}> block weights '{spec}': {exc}") from exc


def _apply_to_network(net, weights: BlockWeights, report: BlockReport) -> None:
    names = [kohya_name_of(m) for m in net.modules.values()]
    uncovered = weights.uncovered_blocks(names)
    if uncovered:
        report.problems.append(
            f"<lora:{net.mentioned_name or net.name}> has modules in {', '.join(sorted(uncovered))}, which the "
            f"{len(weights.values)}-value format does not name; they get weight 0 (use the long format to set them)"
        )
    for module, kohya_name in zip(net.modules.values(), names):
        _set_module_weight(module, weights.weight_for(kohya_name))


def _skip_network(net) -> None:
    for module in net.modules.values():
        _set_module_weight(module, 0.0)


def apply_block_weights(loaded_networks, specs: Mapping[str, str], family: Family,
                        presets: Mapping[str, Sequence[float]]) -> BlockReport:
    """Give every loaded network the block weights its tag asked for (or none), re-merging only what changed.

    `specs` maps the name used in the prompt (`net.mentioned_name`) to its `lbw=` text."""
    report = BlockReport()
    for net in loaded_networks:
        mentioned = net.mentioned_name or net.name
        spec = specs.get(mentioned)
        signature = None
        if spec is not None:
            signature = _configure(net, mentioned, spec, family, presets, report)
        if signature is None:
            changed = clear_overrides(net)
        else:
            changed = getattr(net, SIGNATURE_ATTR, None) != signature
            _set_signature(net, signature)
        if changed:
            invalidate_merged_weights(net)
    return report


def _configure(net, mentioned, spec, family, presets, report) -> Optional[tuple]:
    """Set the network's per-module multipliers for `spec`; returns its signature, or None for plain weight."""
    try:
        weights = resolve_spec(mentioned, spec, family, presets)
    except SpecError as exc:
        if _is_non_finite(spec):
            _skip_network(net)
            report.problems.append(f"{exc}; this LoRA is skipped")
            return ("skipped",)
        report.problems.append(f"{exc}; using its plain weight")
        return None
    if weights.is_identity:
        return None
    _apply_to_network(net, weights, report)
    report.applied[mentioned] = weights
    return (weights.blocks, weights.values)


def _is_non_finite(spec: str) -> bool:
    for item in spec.removeprefix("lbw=").split(","):
        try:
            if not math.isfinite(float(item)):
                return True
        except ValueError:
            continue
    return False


def undo_all(networks_module) -> None:
    """Remove every override we set (script unload / reload): the built-in math is as if we were never here."""
    nets = {id(n): n for n in list(networks_module.networks_in_memory.values()) + list(networks_module.loaded_networks)}
    for net in nets.values():
        if clear_overrides(net):
            invalidate_merged_weights(net)
