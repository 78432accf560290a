"""Training inside the real WebUI on an SDXL base model: the same server switches from the SD1 fixture to a random
SDXL checkpoint for this module and back afterwards.

Heavy for the tier: the --no-half server holds SDXL in float32 (~14 GB next to the WebUI's own ~3 GB), so this
module needs a machine with about 20 GB free (measured: 17.7 GB in use on the machine at the peak). Otherwise
tiny: 64×64 images, 2 steps, 2 sampling steps. A random model makes no pictures, but its output depends on every
weight, so a LoRA whose keys match SDXL changes the image.
"""

from __future__ import annotations

import pytest

from .training_support import PROMPT, SEED, TINY_DATA, on_checkpoint, on_forge, train_and_apply

pytestmark = pytest.mark.webui

SUBFOLDER = "copylora-webui-tests-sdxl"
DATASET = "tiny_sdxl"
# live previews would fetch vaeapprox-sdxl.pt from GitHub (the WebUI tree ships only SD1's; the tier is offline);
# the built-in Lora's merging mode backs up every weight a LoRA touches, ~8 GB more for SDXL in float32
# (measured: the server was killed for memory at 24 GB), so it computes LoRAs in the forward instead
SDXL_OPTIONS = {"live_previews_enable": False, "lora_functional": True}
# Forge has no lora_functional, nor any other way to apply a LoRA to float32 weights without merging it (its "online"
# LoRAs are for quantised storage only): there the image is checked with a part of the LoRA (train_and_apply)
FORGE_APPLIED_BLOCKS = "0,1,1,0,0,1,0,0,0,0,0,0"  # SDXL's 12 values: BASE IN04 IN05 IN07 IN08 MID OUT00 ... OUT05


@pytest.fixture(scope="module")
def on_sdxl(webui, sdxl_checkpoint):
    """The server runs the SDXL checkpoint for this module; the checkpoint in use before comes back after."""
    options = {"live_previews_enable": False} if on_forge(webui) else SDXL_OPTIONS
    with on_checkpoint(webui, sdxl_checkpoint.title, DATASET, (170, 40, 150), SUBFOLDER, options) as lora_dir:
        yield {"loras": lora_dir, "checkpoint": sdxl_checkpoint}


def test_the_sdxl_fixture_loads_as_sdxl(webui, on_sdxl):
    webui.txt2img(PROMPT, SEED)  # Forge loads (and hashes) a checkpoint at the first generation after a switch
    loaded = webui.loaded_checkpoint()
    assert loaded["title"].startswith(on_sdxl["checkpoint"].title)
    assert loaded["sha256"] == on_sdxl["checkpoint"].sha256  # the file the fixture wrote
    log = webui.server.log_text()
    if on_forge(webui):
        # Forge recognises SDXL from the keys (huggingface_guess) and logs no config; the trained file's keys
        # below (te1/te2, sgm block names) show the two encoders and the SDXL UNet it built
        assert f"'filename': '{loaded['filename']}'" in log and "K-Model Created" in log
    else:
        assert "sd_xl_base.yaml" in log  # the WebUI recognised SDXL from the keys


def test_a_single_run_on_sdxl_saves_an_sdxl_lora_and_leaves_the_model_as_it_was(webui, on_sdxl):
    body = {"name": "cl-sdxl", "dataset_a": DATASET, "subfolder": SUBFOLDER, "overwrite": True,
            "network": {"rank": 4, "alpha": 4, "train_text_encoder": True}, "optim": {"learning_rate": 5e-3},
            "loop": {"max_steps": 2}, "dataset": TINY_DATA}
    # on Forge the image is checked with IN04, IN05 and MID only (about 1.5 GB of merged weights, not 13 GB)
    metadata, keys = train_and_apply(webui, on_sdxl["loras"], body, steps=2,
                                     applied_blocks=FORGE_APPLIED_BLOCKS if on_forge(webui) else None)
    assert metadata["ss_base_model_version"].startswith("sdxl")
    # kohya's SDXL names: the UNet in sgm (compvis) terms, the two text encoders as te1 (CLIP-L) and te2 (bigG)
    assert any(k.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.") for k in keys)
    assert any(k.startswith("lora_unet_middle_block_1_") for k in keys)
    assert not any(k.startswith("lora_unet_down_blocks_") for k in keys)
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_0_mlp_fc1.") for k in keys)
    assert not any(k.startswith("lora_te_") for k in keys)  # SD1's single-encoder prefix
