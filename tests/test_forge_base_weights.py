"""Forge's loaded model as a merge base, without Forge: a stand-in engine whose layers sit where Forge keeps them
(the UNet under its patcher's model as `diffusion_model.<compvis path>`, Hugging Face CLIP text encoders under
`clip_l` / `clip_h` / `clip_g`), holding the weights of a tiny checkpoint. Merging every base-aware kind against it
must equal merging against that checkpoint file (`--base`), also while a LoRA is merged into the weights the way
Forge's LoRA loader merges one (originals kept in its `backup`, live Parameters replaced), and nothing is written.
The real Forge is the tier's job (tests/webui/test_formats_oracle.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from lib_copylora.core.base_weights import open_checkpoint_base
from lib_copylora.core.checkpoint_keys import checkpoint_key
from lib_copylora.core.errors import BaseModelError
from lib_copylora.core.family import Family
from lib_copylora.core.merge import MergeSpec, merge_loras
from lib_copylora.core.naming import split_kohya_name
from lib_copylora.webui.base_weights import ForgeModelBase
from lib_copylora.webui.model_state import model_hash
from lora_factory import BASE_KINDS, NAMES, base_checkpoint, make_lora

pytestmark = pytest.mark.filterwarnings("ignore::lib_copylora.core.merge.MergeWarning")

ENCODER_KEYS = {(Family.SD1, "lora_te"): "clip_l", (Family.SD2, "lora_te"): "clip_h",
                (Family.SDXL, "lora_te1"): "clip_l", (Family.SDXL, "lora_te2"): "clip_g"}


class LoraLoader:
    """Forge's LoRA loader as far as a merge sees it: `refresh` keeps each patched weight's original Parameter in
    `backup`, keyed by the weight's name in the model, and puts a new Parameter with the merged weight in its place."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.backup: dict[str, torch.nn.Parameter] = {}

    def patch(self, key: str, delta: torch.Tensor) -> None:
        parent, _, leaf = key.rpartition(".")
        owner = self.model.get_submodule(parent)
        original = owner._parameters[leaf]
        self.backup.setdefault(key, original)
        with torch.inference_mode():
            merged = (original.float() + delta).to(original.dtype)
        owner._parameters[leaf] = torch.nn.Parameter(merged, requires_grad=False)


def _place(root: torch.nn.Module, key: str, tensor: torch.Tensor) -> None:
    """Put `tensor` at `key` (`a.b.weight`) in `root`, making the modules on the way."""
    module = root
    *path, leaf = key.split(".")
    for part in path:
        if part not in module._modules:
            module.add_module(part, torch.nn.Module())
        module = module._modules[part]
    module.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=False))


def forge_key(module: str, family: Family) -> tuple[str, str]:
    """(part, key inside that part's model) of a kohya module, from the checkpoint's key: Forge keeps the UNet's
    compvis paths and holds every text encoder in the Hugging Face layout."""
    prefix, path = split_kohya_name(module)
    if prefix == "lora_unet":
        return "unet", checkpoint_key(module, family).key[len("model."):]
    return "clip", f"{ENCODER_KEYS[family, prefix]}.transformer.{path}.weight"


def forge_engine(family: Family, dtype=torch.float32, storage=None):
    """An engine holding `base_checkpoint(family)`'s weights where Forge would, made under inference mode as Forge's
    loader makes them; q/k/v of SD2's and SDXL's second encoder are separate layers, thirds of the fused tensor."""
    checkpoint = base_checkpoint(family)
    kmodel, clip = torch.nn.Module(), torch.nn.Module()
    with torch.inference_mode():
        for role, module in NAMES[family].items():
            where = checkpoint_key(module, family)
            tensor = checkpoint[where.key]
            if where.third is not None:
                rows = tensor.shape[0] // 3
                tensor = tensor[where.third * rows:(where.third + 1) * rows]
            part, key = forge_key(module, family)
            _place(kmodel if part == "unet" else clip, key, tensor.clone().to(dtype))
    kmodel.storage_dtype = storage or dtype
    kmodel.lora_loader, clip.lora_loader = LoraLoader(kmodel), LoraLoader(clip)
    objects = SimpleNamespace(unet=SimpleNamespace(model=kmodel), clip=SimpleNamespace(cond_stage_model=clip),
                              vae=SimpleNamespace(first_stage_model=torch.nn.Module()))
    info = SimpleNamespace(title="tiny.safetensors [abcdef0123]", sha256="cd" * 32, shorthash="abcdef0123")
    flags = {"is_sd1": family is Family.SD1, "is_sd2": family is Family.SD2, "is_sdxl": family is Family.SDXL}
    return SimpleNamespace(forge_objects=objects, forge_objects_original=objects, sd_checkpoint_info=info, **flags)


@pytest.fixture(scope="module", params=[Family.SD1, Family.SD2, Family.SDXL], ids=lambda f: f.value)
def checkpoint_file(request, tmp_path_factory):
    family = request.param
    path = tmp_path_factory.mktemp(family.value) / "base.safetensors"
    save_file({k: v.contiguous() for k, v in base_checkpoint(family).items()}, str(path))
    return family, open_checkpoint_base(path)


def _deltas(lora, base) -> dict[str, torch.Tensor]:
    return {name: layer.delta() for name, layer in merge_loras([lora], MergeSpec(ratios=(1.0,)), base).layers.items()}


@pytest.mark.parametrize("kind", BASE_KINDS)
def test_every_base_aware_kind_merges_as_against_the_checkpoint_file(checkpoint_file, kind):
    family, from_file = checkpoint_file
    lora = make_lora(kind, family)
    ours = _deltas(lora, ForgeModelBase(forge_engine(family)))
    expected = _deltas(lora, from_file)
    assert set(ours) == set(expected)
    for name, delta in ours.items():
        assert torch.equal(delta, expected[name]), name  # the same float32 weights, the same math


def test_the_originals_are_read_while_a_lora_is_merged_in_and_nothing_is_written(checkpoint_file):
    family, from_file = checkpoint_file
    engine = forge_engine(family)
    objects = engine.forge_objects_original
    unpatched = model_hash(engine)
    for role, module in NAMES[family].items():  # a LoRA on every layer, as Forge's loader merges it
        part, key = forge_key(module, family)
        root = objects.unet.model if part == "unet" else objects.clip.cond_stage_model
        root.lora_loader.patch(key, torch.full_like(root.get_parameter(key), 0.25, dtype=torch.float32))
    patched = model_hash(engine)
    assert patched != unpatched
    parameters = {name: p for root in (objects.unet.model, objects.clip.cond_stage_model)
                  for name, p in root.named_parameters()}
    lora = make_lora("dora", family, seed=3)
    ours, expected = _deltas(lora, ForgeModelBase(engine)), _deltas(lora, from_file)
    assert set(ours) == set(expected) and all(torch.equal(ours[n], expected[n]) for n in ours)
    assert model_hash(engine) == patched
    assert all(p is parameters[name] for root in (objects.unet.model, objects.clip.cond_stage_model)
               for name, p in root.named_parameters())


def test_half_precision_weights_are_read_as_float32_copies():
    engine = forge_engine(Family.SD1, dtype=torch.float16)
    base = ForgeModelBase(engine)
    name = NAMES[Family.SD1]["conv"]
    weight = base.weight(name)
    live = engine.forge_objects.unet.model.get_parameter(forge_key(name, Family.SD1)[1])
    assert weight.dtype is torch.float32 and weight.shape == live.shape
    assert torch.equal(weight, live.float()) and weight.data_ptr() != live.data_ptr()
    weight.add_(1)  # a copy: the model's weight stays as it was
    assert not torch.equal(weight, live.float())


def test_names_in_the_other_style_find_the_same_layer():
    base = ForgeModelBase(forge_engine(Family.SD1))
    diffusers = NAMES[Family.SD1]["linear"]  # lora_unet_down_blocks_0_attentions_0_..., as kohya writes SD1
    compvis = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    assert torch.equal(base.weight(diffusers), base.weight(compvis))
    te1 = NAMES[Family.SD1]["te"].replace("lora_te_", "lora_te1_")  # Forge's key map takes te1 for SD1 too
    assert torch.equal(base.weight(te1), base.weight(NAMES[Family.SD1]["te"]))


def test_the_recipe_names_forges_model():
    merged = merge_loras([make_lora("ia3")], MergeSpec(ratios=(1.0,)), ForgeModelBase(forge_engine(Family.SD1)))
    recipe = json.loads(merged.metadata["copylora"])["base"]
    assert recipe["sha256"] == "cd" * 32 and recipe["source"] == "Forge's loaded model"
    assert recipe["name"] == "tiny.safetensors [abcdef0123]" and recipe["family"] == "sd1"


def _flux():
    engine = forge_engine(Family.SD1)
    engine.is_sd1, engine.is_flux = False, True
    return engine


@pytest.mark.parametrize("engine, message", [
    (lambda: None, "Forge has no model loaded"),
    (lambda: SimpleNamespace(forge_objects=None, forge_objects_original=None), "Forge has no model loaded"),
    (_flux, "the loaded checkpoint is Flux"),
    (lambda: forge_engine(Family.SDXL, storage="nf4"), "stored as nf4 \\(quantised\\)"),
    (lambda: forge_engine(Family.SDXL, storage="gguf"), "stored as gguf \\(quantised\\)"),
    (lambda: forge_engine(Family.SDXL, storage=torch.float8_e4m3fn), "stored as torch.float8_e4m3fn"),
], ids=["none", "no parts", "flux", "nf4", "gguf", "fp8"])
def test_models_forge_cannot_serve_are_refused_in_one_line_pointing_to_base(engine, message):
    with pytest.raises(BaseModelError, match=message) as error:
        ForgeModelBase(engine())
    assert "--base CHECKPOINT" in str(error.value) and "\n" not in str(error.value)


def test_a_quantised_layer_or_a_missing_layer_is_refused_naming_the_module():
    engine = forge_engine(Family.SD1)
    name = NAMES[Family.SD1]["linear"]
    live = engine.forge_objects.unet.model.get_parameter(forge_key(name, Family.SD1)[1])
    live.gguf_cls = object()  # Forge's GGUF parameters carry their quantisation class
    base = ForgeModelBase(engine)
    with pytest.raises(BaseModelError, match=f"module {name}: .*quantised.*--base CHECKPOINT"):
        base.weight(name)
    with pytest.raises(BaseModelError, match="module lora_unet_conv_in: the loaded SD1 model has no such layer"):
        base.weight("lora_unet_conv_in")
    with pytest.raises(BaseModelError, match="module lora_te2_.*: the loaded SD1 model has no such layer"):
        base.weight(NAMES[Family.SDXL]["te2"])


def test_a_lora_of_another_family_is_refused_before_any_weight_is_read():
    with pytest.raises(BaseModelError, match="the base is a SD1 model but the LoRAs are SDXL"):
        merge_loras([make_lora("dora", Family.SDXL)], MergeSpec(ratios=(1.0,)),
                    ForgeModelBase(forge_engine(Family.SD1)))
