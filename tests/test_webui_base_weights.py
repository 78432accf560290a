"""The loaded model as a merge base: unmodified weights (the built-in Lora's backup where it merged), q/k/v thirds of
OpenCLIP's fused projection, the checkpoint's hash in the recipe; a model without a layer map is refused."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from lib_copylora.core.errors import BaseModelError
from lib_copylora.core.family import Family
from lib_copylora.core.merge import MergeSpec, merge_loras
from lib_copylora.webui.base_weights import LoadedModelBase
from lora_factory import NAMES, make_lora

pytestmark = pytest.mark.filterwarnings("ignore::lib_copylora.core.merge.MergeWarning")


def _sd1_model(seed=0):
    torch.manual_seed(seed)
    names = NAMES[Family.SD1]
    mapping = {
        "transformer_text_model_encoder_layers_0_self_attn_q_proj": nn.Linear(8, 6, bias=False),
        "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn1_to_q": nn.Linear(8, 6, bias=False),
        "diffusion_model_input_blocks_1_0_in_layers_2": nn.Conv2d(4, 6, 3, bias=False),
    }
    info = SimpleNamespace(title="tiny.safetensors [abcdef0123]", sha256="ab" * 32, shorthash="abcdef0123")
    return SimpleNamespace(network_layer_mapping=mapping, is_sdxl=False, is_sd2=False, is_sd1=True,
                           sd_checkpoint_info=info), names


def test_merge_against_the_loaded_model_uses_the_backup_where_lora_merged():
    model, names = _sd1_model()
    layer = model.network_layer_mapping["diffusion_model_input_blocks_1_1_transformer_blocks_0_attn1_to_q"]
    original = layer.weight.detach().clone()
    layer.network_weights_backup = original.clone()  # what the built-in Lora keeps before merging
    with torch.no_grad():
        layer.weight.add_(1.0)  # a merged network changed the live weight
    lora = make_lora("dora")
    merged = merge_loras([lora], MergeSpec(ratios=(1.0,)), LoadedModelBase(model))
    expected = lora.layers[names["linear"]].delta(original)
    torch.testing.assert_close(merged.layers[names["linear"]].delta(), expected)
    conv = model.network_layer_mapping["diffusion_model_input_blocks_1_0_in_layers_2"].weight.detach()
    torch.testing.assert_close(merged.layers[names["conv"]].delta(), lora.layers[names["conv"]].delta(conv))
    recipe = json.loads(merged.metadata["copylora"])
    assert recipe["base"]["sha256"] == "ab" * 32 and recipe["base"]["source"] == "the WebUI's loaded model"


def test_openclip_q_is_the_first_third_of_the_fused_projection():
    attention = nn.MultiheadAttention(6, 2, bias=False)
    model = SimpleNamespace(network_layer_mapping={"model_transformer_resblocks_0_attn": attention},
                            is_sd2=True, is_sdxl=False, sd_checkpoint_info=None)
    base = LoadedModelBase(model)
    torch.testing.assert_close(base.weight("lora_te_text_model_encoder_layers_0_self_attn_k_proj"),
                               attention.in_proj_weight.detach()[6:12])
    assert base.family is Family.SD2 and base.describe()["name"] == "loaded model"


def test_a_model_without_a_layer_map_or_a_layer_is_refused():
    with pytest.raises(BaseModelError, match="--base CHECKPOINT"):
        LoadedModelBase(SimpleNamespace(is_sdxl=False))
    model, names = _sd1_model()
    with pytest.raises(BaseModelError, match=f"module {names['linear2']}: the loaded SD1 model has no layer"):
        LoadedModelBase(model).weight(names["linear2"])


def test_webui_merge_takes_the_provider_and_calls_it_only_when_needed(tmp_path):
    from lib_copylora.core.formats import read_lora, write_lora
    from lib_copylora.service.merge_run import MergeRequest, run_merge

    model, names = _sd1_model()
    write_lora(make_lora("dora", seed=1), tmp_path / "B.safetensors")
    write_lora(make_lora("lora", seed=2), tmp_path / "plain.safetensors")
    calls = []

    def provider():
        calls.append(1)
        return LoadedModelBase(model)

    result = run_merge(MergeRequest(models=("B",), ratios=(1.0,), output="out", save_precision="fp32"), tmp_path, {},
                       base_weights=provider)
    assert calls == [1] and read_lora(result.path).layers[names["linear"]].kind.value == "full"
    run_merge(MergeRequest(models=("plain",), ratios=(1.0,), output="out2"), tmp_path, {}, base_weights=provider)
    assert calls == [1]
    with pytest.raises(BaseModelError, match="LoRA\\+DoRA"):
        run_merge(MergeRequest(models=("B",), ratios=(1.0,), output="out3"), tmp_path, {})
    assert not (tmp_path / "out3.safetensors").exists()
