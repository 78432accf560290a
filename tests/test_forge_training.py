"""Training on Forge's model objects without Forge: tiny stand-ins shaped like its parts (a KModel around the UNet,
Hugging Face CLIP layouts under `clip_l` / `clip_h` / `clip_g`, weights loaded under inference mode, layers of its
own classes), checking names, refusals, the model hash and that the weights come back as the very same objects."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lib_copylora.core.errors import CopyLoraError
from lib_copylora.core.family import Family
from lib_copylora.train.errors import TrainingError
from lib_copylora.train.host import Component
from lib_copylora.webui import forge_training, patching
from lib_copylora.webui.forge_training import ForgeHost, ordinary_parameters, refuse_unsupported_forge
from lib_copylora.webui.model_state import BlockForwards, model_hash


class Linear(torch.nn.Module):
    """Forge's Linear: an nn.Module with nn.Linear's attributes, not an nn.Linear."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.weight = torch.nn.Parameter(torch.randn(n_out, n_in) / n_in ** 0.5)
        self.bias = torch.nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class SpatialTransformer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj_in = Linear(4, 4)
        self.transformer_blocks = torch.nn.ModuleList([torch.nn.Module()])
        self.transformer_blocks[0].attn1 = torch.nn.Module()
        self.transformer_blocks[0].attn1.to_q = Linear(4, 4)


class ResBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.in_layers = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Identity(), torch.nn.Conv2d(4, 4, 3))


class Unet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.input_blocks = torch.nn.ModuleList([torch.nn.Module() for _ in range(4)])
        self.input_blocks.append(torch.nn.Sequential(ResBlock(), SpatialTransformer()))  # level 1 in every family

    def forward(self, x, t, context=None, y=None, transformer_options=None):
        block = self.input_blocks[4][1]
        return block.transformer_blocks[0].attn1.to_q(block.proj_in(x))


def _encoder(layers: int) -> torch.nn.Module:
    encoder = torch.nn.Module()
    encoder.transformer = torch.nn.Module()
    encoder.transformer.text_model = torch.nn.Module()
    encoder.transformer.text_model.encoder = torch.nn.Module()
    stack = torch.nn.ModuleList()
    for _ in range(layers):
        layer = torch.nn.Module()
        layer.self_attn = torch.nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(layer.self_attn, name, Linear(4, 4))
        layer.mlp = torch.nn.Module()
        layer.mlp.fc1, layer.mlp.fc2 = Linear(4, 8), Linear(8, 4)
        layer.layer_norm1 = torch.nn.LayerNorm(4)
        stack.append(layer)
    encoder.transformer.text_model.encoder.layers = stack
    return encoder


def _engine(family: Family, storage=torch.float32, inpaint=False):
    """A ForgeDiffusionEngine stand-in, its weights made under inference mode as Forge's loader makes them."""
    with torch.inference_mode():
        torch.manual_seed(0)
        kmodel = torch.nn.Module()
        kmodel.diffusion_model = Unet()
        kmodel.storage_dtype = kmodel.computation_dtype = storage
        kmodel.predictor = torch.nn.Module()
        kmodel.predictor.register_buffer("alphas_cumprod", torch.linspace(0.99, 0.01, 10))
        kmodel.predictor.prediction_type = "epsilon"
        keys = {Family.SD1: ["clip_l"], Family.SD2: ["clip_h"], Family.SDXL: ["clip_l", "clip_g"]}[family]
        clip = torch.nn.ModuleDict({key: _encoder(2) for key in keys})
        vae = torch.nn.Conv2d(3, 8, 1)
    patcher = SimpleNamespace(model=kmodel, load_device=torch.device("cpu"))
    objects = SimpleNamespace(unet=patcher, clip=SimpleNamespace(cond_stage_model=clip),
                              vae=SimpleNamespace(first_stage_model=vae))
    flags = {"is_sd1": family is Family.SD1, "is_sd2": family is Family.SD2, "is_sdxl": family is Family.SDXL}
    return SimpleNamespace(forge_objects=objects, forge_objects_original=objects, is_inpaint=inpaint, **flags)


@pytest.mark.parametrize("family, prefixes", [(Family.SD1, {"lora_te"}), (Family.SD2, {"lora_te"}),
                                              (Family.SDXL, {"lora_te1", "lora_te2"})])
def test_names_are_the_ones_forges_lora_key_map_reads(family, prefixes):
    engine = _engine(family)
    host = ForgeHost(engine, BlockForwards(engine.forge_objects.unet.model.diffusion_model), lambda: False)
    text = [t.kohya_name for t in host.target_modules({Component.TEXT_ENCODER})]
    assert {name.split("_text_model_")[0] for name in text} == prefixes
    assert len(text) == 6 * 2 * len(prefixes)  # q, k, v, out, fc1, fc2 per layer; no layer norms
    first = sorted(prefixes)[0]
    assert f"{first}_text_model_encoder_layers_1_self_attn_q_proj" in text
    assert f"{first}_text_model_encoder_layers_0_mlp_fc2" in text
    unet = {t.kohya_name: t for t in host.target_modules({Component.UNET})}
    if family is Family.SDXL:  # kohya writes SDXL in compvis style, SD1/SD2 in diffusers style
        assert set(unet) == {"lora_unet_input_blocks_4_1_proj_in", "lora_unet_input_blocks_4_0_in_layers_2",
                             "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"}
    else:
        assert set(unet) == {"lora_unet_down_blocks_1_attentions_0_proj_in",
                             "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
                             "lora_unet_down_blocks_1_resnets_0_conv1"}
    assert [t.conv_block for t in unet.values() if "proj_in" in t.kohya_name] == [False]


@pytest.mark.parametrize("change, message", [
    (dict(is_sd1=False, is_flux=True), "unsupported model: the loaded checkpoint is Flux"),
    (dict(is_inpaint=True), "inpainting model"),
])
def test_models_that_cannot_train_are_refused_in_one_line(change, message):
    engine = _engine(Family.SD1)
    for key, value in change.items():
        setattr(engine, key, value)
    with pytest.raises(CopyLoraError, match=message) as error:
        refuse_unsupported_forge(engine)
    assert "\n" not in str(error.value)


def test_a_quantised_model_is_refused():
    engine = _engine(Family.SDXL, storage=torch.float8_e4m3fn)
    with pytest.raises(TrainingError, match="quantised"):
        refuse_unsupported_forge(engine)


def test_inference_weights_train_through_aliases_and_the_same_parameters_come_back():
    engine = _engine(Family.SD1)
    unet = engine.forge_objects.unet.model
    originals = {name: p for name, p in unet.named_parameters()}
    before = model_hash(engine)
    x = torch.randn(3, 4)
    delta = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        (unet.diffusion_model(x + delta, None) ** 2).sum().backward()
    with ordinary_parameters([unet]) as swapped:
        assert swapped == len(originals)
        aliases = dict(unet.named_parameters())
        assert all(aliases[n] is not p and aliases[n].data_ptr() == p.data_ptr() for n, p in originals.items())
        (unet.diffusion_model(x + delta, None) ** 2).sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0
    assert all(p is originals[n] for n, p in unet.named_parameters())
    assert model_hash(engine) == before
    assert [p for p in patching.active() if p.owner == forge_training.OWNER] == []


def test_the_parameters_come_back_after_an_error():
    engine = _engine(Family.SD1)
    unet = engine.forge_objects.unet.model
    originals = list(unet.parameters())
    with pytest.raises(KeyError):
        with ordinary_parameters([unet]):
            raise KeyError("stop")
    assert all(a is b for a, b in zip(unet.parameters(), originals))


def test_the_model_hash_covers_every_part_of_a_forge_model():
    engine = _engine(Family.SDXL)
    before = model_hash(engine)
    for part in (engine.forge_objects.unet.model.predictor.alphas_cumprod,
                 engine.forge_objects.clip.cond_stage_model["clip_g"].transformer.text_model.encoder.layers[1]
                 .mlp.fc2.bias, engine.forge_objects.vae.first_stage_model.weight):
        with torch.inference_mode():
            kept = part.view(-1)[0].clone()
            part.view(-1)[0] = kept + 1
        assert model_hash(engine) != before
        with torch.inference_mode():
            part.view(-1)[0] = kept
    assert model_hash(engine) == before


def test_the_schedule_and_prediction_come_from_forges_predictor():
    engine = _engine(Family.SD2)
    engine.forge_objects.unet.model.predictor.prediction_type = "v_prediction"
    host = ForgeHost(engine, BlockForwards(torch.nn.Module()), lambda: False)
    schedule = host.noise_schedule()
    assert schedule.prediction.value == "v_prediction"
    assert not schedule.alphas_cumprod.is_inference()
    assert torch.equal(schedule.alphas_cumprod, torch.linspace(0.99, 0.01, 10))


def test_forge_is_only_imported_inside_forge():
    assert "backend" not in forge_training.__dict__


class CrossAttention(torch.nn.Module):
    def __init__(self, width=8, heads=2):
        super().__init__()
        self.heads, self.dim_head = heads, width // heads
        self.to_q, self.to_k, self.to_v = Linear(width, width), Linear(width, width), Linear(width, width)
        self.to_out = torch.nn.Sequential(Linear(width, width), torch.nn.Dropout(0.0))

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = (t.reshape(t.shape[0], -1, self.heads, self.dim_head).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        weights = torch.softmax(q @ k.transpose(-1, -2) / self.dim_head ** 0.5, dim=-1)
        return self.to_out((weights @ v).transpose(1, 2).reshape(x.shape[0], -1, self.heads * self.dim_head))


class BasicTransformerBlock(torch.nn.Module):
    """Shaped like Forge's: its `_forward` adds the attention outputs into `x` in place."""

    def __init__(self, width=8):
        super().__init__()
        self.ff_in, self.is_res, self.disable_self_attn = False, True, False
        self.norm1, self.norm2, self.norm3 = (torch.nn.LayerNorm(width) for _ in range(3))
        self.attn1, self.attn2 = CrossAttention(width), CrossAttention(width)
        self.ff = torch.nn.Sequential(Linear(width, 16), torch.nn.GELU(), Linear(16, width))

    def forward(self, x, context=None, transformer_options=None):
        return self._forward(x, context, transformer_options)

    def _forward(self, x, context=None, transformer_options=None):
        x += self.attn1(self.norm1(x))
        x += self.attn2(self.norm2(x), context)
        skip = x
        x = self.ff(self.norm3(x))
        x += skip
        return x


@pytest.mark.parametrize("checkpointing", [False, True])
def test_transformer_blocks_train_out_of_place_and_compute_what_forge_computes(checkpointing):
    torch.manual_seed(1)
    blocks = torch.nn.Sequential(BasicTransformerBlock(), BasicTransformerBlock())
    x, context = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    with torch.no_grad():
        reference = blocks[1](blocks[0](x.clone(), context), context)
    delta = torch.nn.Parameter(torch.zeros(8))
    with pytest.raises(RuntimeError, match="inplace operation"):
        blocks[1](blocks[0](x + delta, context), context).sum().backward()
    forwards = forge_training.ForgeBlockForwards(blocks)
    assert len(forwards.blocks) == 2
    forwards.set(checkpointing=checkpointing)
    try:
        out = blocks[1](blocks[0](x + delta, context), context)
        out.pow(2).sum().backward()
    finally:
        forwards.restore()
    assert torch.allclose(out, reference, atol=1e-5)
    assert delta.grad is not None and delta.grad.abs().sum() > 0
    assert all("forward" not in vars(block) for block in blocks)


def test_the_trainers_requires_grad_round_trip_works_on_the_aliases():
    """The trainer freezes every base weight and restores each flag after; Forge's inference-mode weights refuse
    `requires_grad_(True)` outside inference mode, their aliases take it."""
    with torch.inference_mode():
        vae = torch.nn.Conv2d(3, 8, 1)
    assert vae.weight.requires_grad and vae.weight.is_inference()
    with pytest.raises(RuntimeError, match="inference tensor"):
        vae.weight.requires_grad_(False)
        vae.weight.requires_grad_(True)
    with ordinary_parameters([vae]):
        flags = [(t, t.requires_grad) for t in vae.parameters()]
        for tensor, _ in flags:
            tensor.requires_grad_(False)
        for tensor, flag in flags:
            tensor.requires_grad_(flag)
