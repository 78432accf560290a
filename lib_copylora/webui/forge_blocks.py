"""Per-block LoRA strengths on Forge (docs/architecture.md §7), read against lllyasviel/stable-diffusion-webui-forge
at commit dfdcbab685e57677014f05a3309b48cc87383167.

Forge builds no NetworkModule objects. Its Lora extension's `load_networks()` turns each LoRA into *patches* on two
ModelPatcher objects, the UNet's (`forge_objects.unet`) and the text encoder's (`forge_objects.clip.patcher`):
`lora_patches[(filename, strength_patch, strength_model, online_mode)][model_key]` is a list of
`[strength, weights, strength_model, offset, function]`, and `LoraLoader.refresh()` merges them into the shared
model's weights when the patcher is loaded, re-merging only when the list of those identifiers changed.
Strength enters that math once per patch, as its first item. So for a LoRA with block weights we give each patch a
strength multiplied by its module's block weight, in a clone of the patcher (the patchers Forge made stay as they
were), under an identifier that names the weights, so the loader sees the change.

`load_networks()` does nothing when the LoRA files and strengths are the ones it already applied, and then leaves
in place whatever patchers were installed, ours included. We therefore keep the unscaled patchers it made on the
model object (per model, gone with it) and always scale from those; a change of block weights alone re-applies.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Optional, Sequence

from ..core.block_spec import BlockWeights, format_values
from ..core.family import Family
from ..core.naming import UNET_PREFIX
from . import patching
from .block_apply import Action, BlockReport, decide

STATE_ATTR = "copylora_forge_blocks"
OWNER = "block weights (Forge)"
UNET_KEY_PREFIX = "diffusion_model."
PARAMETER_SUFFIXES = (".weight", ".bias")
# Every text-encoder module is in BASE whatever its encoder, so one kohya prefix is enough to mark them.
TEXT_ENCODER_NAME_PREFIX = "lora_te"


class Component(enum.Enum):
    UNET = "unet"
    TEXT_ENCODER = "clip"


class FileScale(NamedTuple):
    """How to scale one LoRA file's patches: by `weights`, or all to 0 when `weights` is None (a skipped LoRA)."""

    weights: Optional[BlockWeights]

    @property
    def tag(self) -> str:
        if self.weights is None:
            return "CopyLoRA skipped"
        return f"CopyLoRA lbw={format_values(self.weights.values)}"

    def factor(self, kohya_name: Optional[str]) -> float:
        if self.weights is None:
            return 0.0
        return 1.0 if kohya_name is None else self.weights.weight_for(kohya_name)


def _module_path(model_key: str) -> str:
    for suffix in PARAMETER_SUFFIXES:
        if model_key.endswith(suffix):
            return model_key[: -len(suffix)]
    return model_key


def kohya_name_of_patch(patch_key, component: Component) -> Optional[str]:
    """The kohya module name of the model parameter a patch changes; None for a UNet key outside the UNet.

    A patch key is the model key (`diffusion_model.input_blocks.1.1.proj_in.weight`) or a tuple that starts with
    it. For the UNet we use the rule Forge's own key map (`model_lora_keys_unet`) uses for compvis names, so a
    file's diffusers-style module and the model key it was loaded into land in the same block."""
    key = patch_key if isinstance(patch_key, str) else patch_key[0]
    path = _module_path(key)
    if component is Component.TEXT_ENCODER:
        inner = path.split(".transformer.", 1)[-1]
        return f"{TEXT_ENCODER_NAME_PREFIX}_{inner.replace('.', '_')}"
    if not path.startswith(UNET_KEY_PREFIX):
        return None
    return f"{UNET_PREFIX}_{path[len(UNET_KEY_PREFIX):].replace('.', '_')}"


def _scaled_list(patch_list: Sequence, factor: float) -> list:
    return [[patch[0] * factor, *patch[1:]] for patch in patch_list]


def scale_patches(lora_patches: Mapping, scales: Mapping[str, FileScale], component: Component) -> dict:
    """A new `lora_patches` dict, in the same order: entries of files in `scales` scaled per module and renamed
    (identifier `(filename + tag, strength, strength_model, online_mode)`); all others as they were."""
    result = {}
    for identifier, patches in lora_patches.items():
        scale = scales.get(identifier[0])
        if scale is None:
            result[identifier] = patches
            continue
        renamed = (f"{identifier[0]} [{scale.tag}]", *identifier[1:])
        result[renamed] = {key: _scaled_list(plist, scale.factor(kohya_name_of_patch(key, component)))
                           for key, plist in patches.items()}
    return result


def module_names(lora_patches: Mapping, filename: str, component: Component) -> list[str]:
    """The kohya names of every module a file patches in one patcher (for the uncovered-blocks warning)."""
    names = []
    for identifier, patches in lora_patches.items():
        if identifier[0] == filename:
            names.extend(n for n in (kohya_name_of_patch(k, component) for k in patches) if n is not None)
    return names


def plan_scales(loaded_networks, specs: Mapping[str, str], family: Optional[Family],
                presets: Mapping[str, Sequence[float]], report: BlockReport) -> dict[str, FileScale]:
    """The scale of every loaded LoRA file with usable block weights, by filename; problems go to `report`."""
    scales: dict[str, FileScale] = {}
    for net in loaded_networks:
        mentioned = net.mentioned_name or net.name
        decision = decide(mentioned, specs.get(mentioned), family, presets)
        if decision.problem is not None:
            report.problems.append(decision.problem)
        if decision.action is Action.PLAIN:
            continue
        filename = net.network_on_disk.filename
        if filename in scales:
            report.problems.append(f"<lora:{mentioned}> uses a file already given block weights in this prompt; "
                                   "Forge patches a file once, so the first tag's weights apply")
            continue
        scales[filename] = FileScale(decision.weights)  # weights None: skipped
        if decision.action is Action.APPLY:
            report.applied[mentioned] = decision.weights
    return scales


def warn_uncovered(loaded_networks, scales: Mapping[str, FileScale], unet, clip, report: BlockReport) -> None:
    for net in loaded_networks:
        scale = scales.get(net.network_on_disk.filename)
        if scale is None or scale.weights is None:
            continue
        filename = net.network_on_disk.filename
        names = (module_names(unet.lora_patches, filename, Component.UNET)
                 + module_names(clip.patcher.lora_patches, filename, Component.TEXT_ENCODER))
        note = scale.weights.uncovered_note(f"<lora:{net.mentioned_name or net.name}>", names)
        if note is not None:
            report.problems.append(note)


@dataclass
class ForgeBlockState:
    """What we installed on one model: Forge's own patchers (base) and our scaled clones of them."""

    base_unet: object
    base_clip: object
    scaled_unet: object
    scaled_clip: object
    signature: tuple


def _signature(scales: Mapping[str, FileScale]) -> tuple:
    return tuple(sorted((name, scale.tag) for name, scale in scales.items()))


def _scaled_patchers(base_unet, base_clip, scales: Mapping[str, FileScale]):
    unet = base_unet.clone()
    unet.lora_patches = scale_patches(base_unet.lora_patches, scales, Component.UNET)
    clip = base_clip.clone()
    clip.patcher.lora_patches = scale_patches(base_clip.patcher.lora_patches, scales, Component.TEXT_ENCODER)
    return unet, clip


def _install(sd_model, old_unet, old_clip, new_unet, new_clip) -> None:
    """Put the new patchers where processing takes them from (`forge_objects_after_applying_lora`, copied into
    `forge_objects` after activation) and into `forge_objects` where it holds the old ones or Forge's unscaled ones
    it just made (the text encoder may be used from there before that copy)."""
    for objects in (sd_model.forge_objects_after_applying_lora, sd_model.forge_objects):
        if objects is None:
            continue
        if objects.unet is old_unet:
            objects.unet = new_unet
        if objects.clip is old_clip:
            objects.clip = new_clip


def _base_patchers(sd_model, state: Optional[ForgeBlockState]):
    """Forge's unscaled patchers: ours from last time when load_networks left ours in place, else the new ones."""
    after = sd_model.forge_objects_after_applying_lora
    if state is not None and after.unet is state.scaled_unet and after.clip is state.scaled_clip:
        return state.base_unet, state.base_clip
    return after.unet, after.clip


def apply_forge_block_weights(sd_model, loaded_networks, specs: Mapping[str, str], family: Optional[Family],
                              presets: Mapping[str, Sequence[float]]) -> BlockReport:
    """Scale the patches of every loaded LoRA that has block weights; leave Forge's patchers alone otherwise."""
    report = BlockReport()
    state: Optional[ForgeBlockState] = getattr(sd_model, STATE_ATTR, None)
    if sd_model.forge_objects_after_applying_lora is None:
        return report
    base_unet, base_clip = _base_patchers(sd_model, state)
    scales = plan_scales(loaded_networks, specs, family, presets, report)
    if not scales:
        undo_forge_block_weights(sd_model)
        return report
    warn_uncovered(loaded_networks, scales, base_unet, base_clip, report)
    signature = _signature(scales)
    if state is not None and state.base_unet is base_unet and state.base_clip is base_clip \
            and state.signature == signature:
        _install(sd_model, base_unet, base_clip, state.scaled_unet, state.scaled_clip)
        return report
    unet, clip = _scaled_patchers(base_unet, base_clip, scales)
    old_unet, old_clip = (state.scaled_unet, state.scaled_clip) if state is not None else (None, None)
    _install(sd_model, old_unet, old_clip, unet, clip)
    _install(sd_model, base_unet, base_clip, unet, clip)
    patching.set_attribute(sd_model, STATE_ATTR, ForgeBlockState(base_unet, base_clip, unet, clip, signature), OWNER)
    patching.add(("forge patchers", id(sd_model)), sd_model, undo_forge_block_weights, OWNER)
    return report


def undo_forge_block_weights(sd_model) -> None:
    """Put Forge's own patchers back wherever ours are installed and forget ours (also on script unload); the
    loader re-merges the unscaled weights the next time the model is loaded, since the identifiers change back."""
    state: Optional[ForgeBlockState] = getattr(sd_model, STATE_ATTR, None)
    if state is None:
        return
    _install(sd_model, state.scaled_unet, state.scaled_clip, state.base_unet, state.base_clip)
    patching.forget(("forge patchers", id(sd_model)))
    patching.restore_attribute(sd_model, STATE_ATTR)
