"""Block weights on Forge's LoRA patches (lib_copylora/webui/forge_blocks.py), without Forge.

The stand-ins below follow lllyasviel/stable-diffusion-webui-forge at commit
dfdcbab685e57677014f05a3309b48cc87383167: `ModelPatcher.add_patches` / `clone` (backend/patcher/base.py), `CLIP`
holding its patcher (backend/patcher/clip.py), `ForgeObjects.shallow_copy` (backend/diffusion_engine/base.py),
`LoraLoader.refresh`, which re-merges only when the list of patch identifiers changed, with the "lora" branch of
`merge_lora_to_weight` (backend/patcher/lora.py), `load_networks`, which does nothing when its targets' hash is
unchanged (extensions-builtin/sd_forge_lora/networks.py), and the order in modules/processing.py: forge_objects from
the original, activate (our hook last), then forge_objects from forge_objects_after_applying_lora.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lib_copylora.core.block_spec import parse_block_spec
from lib_copylora.core.blocks import block_of, format_for
from lib_copylora.core.family import Family
from lib_copylora.webui.block_apply import BlockReport
from lib_copylora.webui.forge_blocks import (STATE_ATTR, Component, FileScale, apply_forge_block_weights,
                                             kohya_name_of_patch, scale_patches, undo_forge_block_weights)

SD1_SHORT = format_for(Family.SD1, 17).blocks
PRESETS = {"ALL": (1.0,) * 17, "NONE": (0.0,) * 17}
UNET_KEYS = {  # model key -> its block
    "diffusion_model.input_blocks.1.1.proj_in.weight": "IN01",
    "diffusion_model.middle_block.1.proj_out.weight": "MID",
    "diffusion_model.output_blocks.3.1.transformer_blocks.0.attn1.to_q.weight": "OUT03",
    "diffusion_model.input_blocks.3.0.op.weight": "IN03",  # not in the 17-value format
    "diffusion_model.time_embed.0.weight": None,
}
CLIP_KEY = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"


def spec17(**values: float) -> str:
    return ",".join(str(values.get(block, 1.0)) for block in SD1_SHORT)


class Loader:
    """LoraLoader: merges all patches into the shared parameters, only when the identifier list changed."""

    def __init__(self, params):
        self.params, self.original = params, {k: v.clone() for k, v in params.items()}
        self.loaded_hash, self.merges = str([]), 0

    def refresh(self, lora_patches):
        if str(list(lora_patches.keys())) == self.loaded_hash:
            return
        self.merges += 1
        for key in self.params:
            self.params[key] = self.original[key].clone()
        for patches in lora_patches.values():
            for key, plist in patches.items():
                for strength, (kind, (up, down, alpha, _mid, _dora)), strength_model, _off, _fn in plist:
                    assert kind == "lora" and strength_model == 1.0
                    self.params[key] += (strength * alpha / down.shape[0]) * (up @ down)
        self.loaded_hash = str(list(lora_patches.keys()))


class Patcher:
    def __init__(self, loader):
        self.loader, self.lora_patches = loader, {}

    def clone(self):
        n = type(self)(self.loader)
        n.lora_patches = self.lora_patches.copy()
        return n

    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        self.lora_patches[(filename, strength_patch, strength_model, online_mode)] = {
            key: [[strength_patch, v, strength_model, None, None]] for key, v in patches.items()}

    def refresh_loras(self):
        self.loader.refresh(self.lora_patches)


class Clip:
    def __init__(self, patcher):
        self.patcher = patcher

    def clone(self):
        return Clip(self.patcher.clone())

    def add_patches(self, **kwargs):
        return self.patcher.add_patches(**kwargs)


class Objects(SimpleNamespace):
    def shallow_copy(self):
        return Objects(unet=self.unet, clip=self.clip)


def make_lora(seed: int, keys) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: ("lora", (torch.randn(2, 1, generator=gen), torch.randn(1, 2, generator=gen), 1.0, None, None))
            for k in keys}


class ForgeModel:
    """A Forge engine for SD1 with two LoRA files, driven the way processing.py drives it."""

    def __init__(self):
        self.is_sd1 = True
        self.unet_loader = Loader({k: torch.eye(2) for k in UNET_KEYS})
        self.clip_loader = Loader({CLIP_KEY: torch.eye(2)})
        self.forge_objects = Objects(unet=Patcher(self.unet_loader), clip=Clip(Patcher(self.clip_loader)))
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.current_lora_hash = str([])
        self.files = {"a": ("a.safetensors", make_lora(1, UNET_KEYS), make_lora(2, [CLIP_KEY])),
                      "b": ("b.safetensors", make_lora(3, list(UNET_KEYS)[:2]), {})}

    def load_networks(self, targets):
        nets = [SimpleNamespace(name=n, mentioned_name=n, network_on_disk=SimpleNamespace(filename=self.files[n][0]))
                for n, _ in targets]
        compiled = str([[self.files[n][0], s, s, False] for n, s in targets])
        if compiled != self.current_lora_hash:
            self.current_lora_hash = compiled
            self.forge_objects.unet, self.forge_objects.clip = (self.forge_objects_original.unet,
                                                                self.forge_objects_original.clip)
            for name, strength in targets:
                filename, unet_patches, clip_patches = self.files[name]
                self.forge_objects.unet = self.forge_objects.unet.clone()
                self.forge_objects.unet.add_patches(filename=filename, patches=unet_patches, strength_patch=strength)
                if clip_patches:
                    self.forge_objects.clip = self.forge_objects.clip.clone()
                    self.forge_objects.clip.add_patches(filename=filename, patches=clip_patches,
                                                        strength_patch=strength)
            self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        return nets

    def generate(self, targets, specs=None) -> tuple[dict, BlockReport]:
        """One batch: the merged weights the sampler and text encoder would use, and our report."""
        self.forge_objects = self.forge_objects_original.shallow_copy()
        nets = self.load_networks(targets)
        report = apply_forge_block_weights(self, nets, specs or {}, Family.SD1, PRESETS)
        self.forge_objects = self.forge_objects_after_applying_lora.shallow_copy()
        self.forge_objects.unet.refresh_loras()
        self.forge_objects.clip.patcher.refresh_loras()
        merged = {**self.unet_loader.params, **self.clip_loader.params}
        return {k: v.clone() for k, v in merged.items()}, report


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("key, block", list(UNET_KEYS.items()))
def test_unet_patch_keys_name_the_module_in_its_block(key, block):
    assert block_of(kohya_name_of_patch(key, Component.UNET), Family.SD1) == block
    assert kohya_name_of_patch((key, (0, 0, 2)), Component.UNET) == kohya_name_of_patch(key, Component.UNET)
    bias = key.removesuffix(".weight") + ".bias"  # diff_b patches land on the bias of the same module
    assert kohya_name_of_patch(bias, Component.UNET) == kohya_name_of_patch(key, Component.UNET)


def test_text_encoder_keys_are_base_and_foreign_unet_keys_have_no_block():
    assert block_of(kohya_name_of_patch(CLIP_KEY, Component.TEXT_ENCODER), Family.SD1) == "BASE"
    assert block_of(kohya_name_of_patch("clip_g.transformer.text_projection.weight", Component.TEXT_ENCODER),
                    Family.SDXL) == "BASE"
    assert kohya_name_of_patch("model_sampling.sigmas", Component.UNET) is None


def test_scale_patches_scales_only_that_file_renames_it_and_keeps_order():
    model = ForgeModel()
    nets = model.load_networks([("a", 0.5), ("b", 1.0)])
    patches = model.forge_objects.unet.lora_patches
    weights = parse_block_spec(spec17(IN01=0.25, MID=0.0), Family.SD1, PRESETS)
    scaled = scale_patches(patches, {nets[0].network_on_disk.filename: FileScale(weights)}, Component.UNET)
    (old_a, old_b), (new_a, new_b) = list(patches), list(scaled)
    assert new_b == old_b and scaled[new_b] is patches[old_b]
    assert new_a != old_a and new_a[1:] == old_a[1:] and new_a[0].startswith("a.safetensors [")
    expected = {"IN01": 0.125, "MID": 0.0, "OUT03": 0.5, "IN03": 0.0, None: 0.5}  # strength 0.5 × block weight
    for key, block in UNET_KEYS.items():
        (patch,) = scaled[new_a][key]
        assert patch[0] == expected[block] and patch[1] is patches[old_a][key][0][1]
        assert patches[old_a][key][0][0] == 0.5  # Forge's own patches are untouched
    skipped = scale_patches(patches, {"a.safetensors": FileScale(None)}, Component.UNET)
    assert all(p[0] == 0.0 for plist in skipped[list(skipped)[0]].values() for p in plist)


def test_all_ones_equals_plain_and_zeros_equal_no_lora():
    model = ForgeModel()
    none, _ = model.generate([])
    plain, _ = model.generate([("a", 1.0)])
    assert not same(plain, none)
    assert same(model.generate([("a", 1.0)], {"a": ",".join(["1"] * 26)})[0], plain)
    only_b, _ = model.generate([("b", 1.0)])
    assert same(model.generate([("b", 1.0)], {"b": "ALL"})[0], only_b)  # b has modules only in IN01 and MID
    zeroed, _ = model.generate([("a", 1.0)], {"a": ",".join(["0"] * 26)})
    # every block at 0 is no LoRA, except in modules that are in no block: they keep the plain strength
    outside = "diffusion_model.time_embed.0.weight"
    assert torch.equal(zeroed.pop(outside), plain[outside]) and not torch.equal(plain[outside], none.pop(outside))
    assert same(zeroed, none)


def test_changing_only_block_weights_reapplies_and_round_trips():
    model = ForgeModel()
    plain, _ = model.generate([("a", 1.0)])
    merges = model.unet_loader.merges
    lora_hash = model.current_lora_hash
    first, report = model.generate([("a", 1.0)], {"a": spec17(MID=0.0, BASE=0.5)})
    assert model.current_lora_hash == lora_hash  # load_networks did nothing: only our hook changed the weights
    assert model.unet_loader.merges == merges + 1 and not same(first, plain)
    assert "a" in report.applied
    second, _ = model.generate([("a", 1.0)], {"a": spec17(OUT03=0.0)})
    assert not same(second, first)
    assert same(model.generate([("a", 1.0)], {"a": spec17(MID=0.0, BASE=0.5)})[0], first)
    merges = model.unet_loader.merges
    assert same(model.generate([("a", 1.0)], {"a": spec17(MID=0.0, BASE=0.5)})[0], first)
    assert model.unet_loader.merges == merges  # the same weights again: nothing re-merged
    assert same(model.generate([("a", 1.0)])[0], plain)
    assert not hasattr(model, STATE_ATTR)


def test_block_weights_reach_each_module_and_the_text_encoder():
    model = ForgeModel()
    none, _ = model.generate([])
    plain, _ = model.generate([("a", 1.0)])
    only_mid, _ = model.generate([("a", 1.0)], {"a": spec17(**{b: 0.0 for b in SD1_SHORT if b != "MID"})})
    for key, block in UNET_KEYS.items():
        # modules in no block keep the plain strength, as the LoRA Block Weight extension does
        expected = plain if block in ("MID", None) else none
        assert torch.equal(only_mid[key], expected[key]), key
    assert torch.equal(only_mid[CLIP_KEY], none[CLIP_KEY])


def test_without_block_weights_nothing_of_forge_changes():
    model = ForgeModel()
    model.generate([("a", 0.7), ("b", 1.0)])
    made = (model.forge_objects_after_applying_lora.unet, model.forge_objects_after_applying_lora.clip)
    model.generate([("a", 0.7), ("b", 1.0)])
    assert (model.forge_objects.unet, model.forge_objects.clip) == made
    assert not hasattr(model, STATE_ATTR)


def test_two_loras_and_a_new_lora_list_rebuild_from_forges_patchers():
    model = ForgeModel()
    only_a, _ = model.generate([("a", 1.0)])
    a_alone, _ = model.generate([("a", 1.0), ("b", 1.0)], {"b": ",".join(["0"] * 26)})
    assert same(a_alone, only_a)
    # a new strength makes load_networks rebuild; our state must follow its new patchers
    half, _ = model.generate([("a", 1.0), ("b", 0.5)], {"b": ",".join(["0"] * 26)})
    assert same(half, only_a)
    scaled = [k for k in model.forge_objects.unet.lora_patches if "[CopyLoRA" in k[0]]
    assert [k[1] for k in scaled] == [0.5]


def test_problems_fall_back_or_skip_like_a1111():
    model = ForgeModel()
    none, _ = model.generate([])
    plain, _ = model.generate([("a", 1.0)])
    merged, report = model.generate([("a", 1.0)], {"a": "1,1,1"})
    assert same(merged, plain) and "17 or 26" in report.problems[0] and "plain weight" in report.problems[0]
    merged, report = model.generate([("a", 1.0)], {"a": "nan," + spec17().split(",", 1)[1]})
    assert same(merged, none) and "skipped" in report.problems[0]
    _, report = model.generate([("a", 1.0)], {"a": "ALL0"})
    assert "unknown" in report.problems[0]
    _, report = model.generate([("a", 1.0)], {"a": "ALL"})  # all ones in the short format zeroes IN03: say so
    assert any("IN03" in p and "does not name" in p for p in report.problems)


def test_a_model_without_sd_blocks_keeps_plain_weight():
    model = ForgeModel()
    nets = model.load_networks([("a", 1.0)])
    report = apply_forge_block_weights(model, nets, {"a": "NONE"}, None, PRESETS)
    assert "SD1, SD2 or SDXL" in report.problems[0] and not hasattr(model, STATE_ATTR)


def test_undo_puts_forges_patchers_back():
    model = ForgeModel()
    model.generate([("a", 1.0)])
    made = (model.forge_objects_after_applying_lora.unet, model.forge_objects_after_applying_lora.clip)
    model.generate([("a", 1.0)], {"a": "NONE"})
    assert model.forge_objects_after_applying_lora.unet is not made[0]
    undo_forge_block_weights(model)
    assert (model.forge_objects_after_applying_lora.unet, model.forge_objects_after_applying_lora.clip) == made
    assert not hasattr(model, STATE_ATTR)
    undo_forge_block_weights(model)  # a second undo is a no-op
