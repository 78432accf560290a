"""The diffusers host on the tiny models: kohya names that resolve to blocks and WebUI layers, shapes, clip skip,
eps/v schedules, frozen base tensors, SDXL conditioning, loading from a folder, and clear loading errors."""

from __future__ import annotations

import pytest
import torch

from lib_copylora.core.blocks import block_of
from lib_copylora.core.family import Family
from lib_copylora.core.naming import split_kohya_name, webui_layer_name
from lib_copylora.hosts.diffusers_host import DiffusersHost
from lib_copylora.hosts.tiny import build_tiny_pipeline, save_tiny_model
from lib_copylora.train.errors import TrainingError
from lib_copylora.train.host import Component, Prediction, TrainingHost

ALL = {Component.UNET, Component.TEXT_ENCODER}


@pytest.fixture(scope="module")
def sd1() -> DiffusersHost:
    return DiffusersHost.from_pipeline(build_tiny_pipeline(Family.SD1, seed=0))


@pytest.fixture(scope="module")
def sdxl() -> DiffusersHost:
    return DiffusersHost.from_pipeline(build_tiny_pipeline(Family.SDXL, seed=0))


def _images(n: int, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_sd1_targets_are_kohyas_modules(sd1):
    assert isinstance(sd1, TrainingHost) and sd1.family is Family.SD1
    targets = sd1.target_modules(ALL)
    names = [t.kohya_name for t in targets]
    assert len(set(names)) == len(names)
    plain_unet = [t for t in targets if t.component is Component.UNET and not t.conv_block]
    # kohya's plain LoRA on SD1: 16 transformer blocks × (8 attention + 2 feed-forward + proj_in/proj_out) = 192
    assert len(plain_unet) == 192
    text = [t for t in targets if t.component is Component.TEXT_ENCODER]
    assert len(text) == 3 * 6  # q, k, v, out, fc1, fc2 per layer; the tiny encoder has 3 layers
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj" in names
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in names and "lora_unet_up_blocks_0_upsamplers_0_conv" in names
    for t in targets:
        assert isinstance(t.module, (torch.nn.Linear, torch.nn.Conv2d))
        prefix, _ = split_kohya_name(t.kohya_name)
        assert block_of(t.kohya_name, Family.SD1) is not None, t.kohya_name
        assert webui_layer_name(t.kohya_name, Family.SD1) is not None, t.kohya_name
        assert t.conv_block == any(k in t.kohya_name for k in ("resnets", "samplers"))
    only_te = sd1.target_modules({Component.TEXT_ENCODER})
    assert {t.kohya_name for t in only_te} == {t.kohya_name for t in text}


def test_sd1_shapes_and_clip_skip(sd1):
    cond = sd1.encode_prompts(["a red shirt", ""])
    assert cond.shape == (2, 77, 32)
    latents = sd1.encode_images(_images(2))
    assert latents.shape == (2, 4, 8, 8)
    assert torch.equal(latents, sd1.encode_images(_images(2)))  # the mean: a cached latent is the latent
    out = sd1.predict_noise(latents, torch.tensor([10, 900]), cond)
    assert out.shape == latents.shape and torch.isfinite(out).all()
    assert sd1.decode_latents(latents).shape == (2, 3, 64, 64)
    wide = sd1.encode_images(torch.zeros(1, 3, 64, 128))
    assert wide.shape == (1, 4, 8, 16) and sd1.predict_noise(wide, torch.tensor([5]), cond[:1]).shape == wide.shape
    skipped = sd1.encode_prompts(["a red shirt"], clip_skip=2)
    encoder = sd1.text_encoders[0]
    ids = sd1.tokenizers[0](["a red shirt"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    hidden = encoder(ids, output_hidden_states=True).hidden_states
    norm = getattr(encoder, "text_model", encoder).final_layer_norm
    assert torch.allclose(skipped, norm(hidden[-2]), atol=1e-6)
    assert not torch.allclose(skipped, cond[:1], atol=1e-3)
    with pytest.raises(TrainingError):
        sd1.encode_prompts(["x"], clip_skip=0)


def test_schedules_and_prediction_types(sd1):
    schedule = sd1.noise_schedule()
    assert schedule.prediction is Prediction.EPSILON
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(schedule.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), atol=1e-6)
    v_host = DiffusersHost.from_pipeline(build_tiny_pipeline(Family.SD2, seed=0, prediction="v_prediction"))
    assert v_host.family is Family.SD2 and v_host.noise_schedule().prediction is Prediction.V
    forced = DiffusersHost.from_pipeline(build_tiny_pipeline(Family.SD1), prediction=Prediction.V)
    assert forced.noise_schedule().prediction is Prediction.V


def test_base_tensors_are_every_frozen_tensor(sd1):
    named = dict(sd1.base_tensors())
    expected = sum(sum(1 for _ in m.state_dict()) for m in (sd1.unet, sd1.vae, *sd1.text_encoders))
    assert len(named) == expected
    assert all(not t.requires_grad for t in named.values())
    params = {id(p) for m in (sd1.unet, sd1.vae, *sd1.text_encoders) for p in m.parameters()}
    assert params <= {id(t) for t in named.values()}  # the live tensors, so a restore check sees any change


def test_gradient_checkpointing_changes_memory_not_results(sd1):
    latents = sd1.encode_images(_images(1))
    cond = sd1.encode_prompts(["a"])
    reference = sd1.predict_noise(latents, torch.tensor([100]), cond)
    assert sd1.set_gradient_checkpointing(True) and sd1.unet.is_gradient_checkpointing
    try:
        # a frozen text encoder stays out of the backward pass (transformers' input-grad hook is removed)
        assert not sd1.encode_prompts(["a"]).requires_grad
        x = latents.clone().requires_grad_(True)
        out = sd1.predict_noise(x, torch.tensor([100]), cond)
        out.square().mean().backward()
        assert torch.allclose(out.detach(), reference, atol=1e-5) and x.grad is not None
    finally:
        sd1.set_gradient_checkpointing(False)
    assert not sd1.unet.is_gradient_checkpointing


def test_interrupt_flag(sd1):
    host = DiffusersHost.from_pipeline(build_tiny_pipeline(Family.SD1))
    assert not host.interrupted()
    host.request_stop()
    assert host.interrupted()


def test_sdxl_conditioning_and_compvis_names(sdxl):
    assert sdxl.family is Family.SDXL
    names = [t.kohya_name for t in sdxl.target_modules(ALL)]
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_middle_block_1_proj_in" in names and "lora_unet_output_blocks_0_0_in_layers_2" in names
    assert any(n.startswith("lora_te1_text_model_") for n in names)
    assert any(n.startswith("lora_te2_text_model_") for n in names)
    assert not any("down_blocks" in n or "lora_te_" in n for n in names)
    assert all(webui_layer_name(n, Family.SDXL) is not None and block_of(n, Family.SDXL) for n in names)
    cond = sdxl.encode_prompts(["a red shirt", "text"])
    assert cond["hidden"].shape == (2, 77, 64) and cond["pooled"].shape == (2, 32)
    latents = sdxl.encode_images(_images(2))
    out = sdxl.predict_noise(latents, torch.tensor([1, 999]), cond)
    assert out.shape == latents.shape and torch.isfinite(out).all()
    assert sdxl._time_ids(latents).tolist()[0] == [64, 64, 0, 0, 64, 64]


def test_load_from_a_saved_folder_matches_the_pipeline(tmp_path, sd1):
    folder = save_tiny_model(tmp_path / "tiny", Family.SD1, seed=0)
    loaded = DiffusersHost.load(folder)
    assert loaded.family is Family.SD1 and loaded.dtype == torch.float32
    latents = sd1.encode_images(_images(1))
    t = torch.tensor([321])
    a = sd1.predict_noise(latents, t, sd1.encode_prompts(["a shirt"]))
    b = loaded.predict_noise(latents, t, loaded.encode_prompts(["a shirt"]))
    assert torch.allclose(a, b, atol=1e-5)
    assert (folder / "tokenizer" / "vocab.json").is_file() and (folder / "tokenizer" / "merges.txt").is_file()


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(TrainingError, match="does not exist"):
        DiffusersHost.load(tmp_path / "missing")
    (tmp_path / "folder").mkdir()
    with pytest.raises(TrainingError, match="model_index.json"):
        DiffusersHost.load(tmp_path / "folder")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TrainingError, match="neither"):
        DiffusersHost.load(tmp_path / "notes.txt")
    (tmp_path / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="model_index.json"):
        DiffusersHost.load(tmp_path / "model.safetensors", config_dir=tmp_path / "folder")
