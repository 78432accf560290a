"""The model-state helpers of the WebUI host, on tiny torch modules standing in for the WebUI's model parts."""

from types import SimpleNamespace

import pytest
import torch

from lib_copylora.train.errors import TrainingError
from lib_copylora.train.host import transformer_blocks
from lib_copylora.webui.model_state import (BlockForwards, OffloadingRefused, clear_builtin_lora, model_hash,
                                            prepared_model, refuse_unsupported)


class ResBlock(torch.nn.Module):
    """Shaped like ldm's: forward goes through the repository's checkpoint helper, `_forward` does the work."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Linear(4, 4)
        self.use_checkpoint = True
        self.calls = []

    def forward(self, x):
        self.calls.append("class-forward")
        return self._forward(x)

    def _forward(self, x):
        return self.conv(x) + x


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = torch.nn.Sequential(ResBlock(), ResBlock())
        self.model.conditioning_key = "crossattn"
        self.is_sd1 = True  # the WebUI's family flag (v1.8+)


def opts(**flags):
    return SimpleNamespace(**{"lowvram": False, "medvram": False, "medvram_sdxl": False, **flags})


@pytest.mark.parametrize("flags, shown", [({"lowvram": True}, "--lowvram"), ({"medvram": True}, "--medvram")])
def test_offloading_is_refused_with_what_to_do(flags, shown):
    with pytest.raises(OffloadingRefused, match=f"{shown}.*Restart the WebUI without"):
        refuse_unsupported(TinyModel(), opts(**flags))


def test_medvram_sdxl_only_matters_for_sdxl():
    refuse_unsupported(TinyModel(), opts(medvram_sdxl=True))
    sdxl = TinyModel()
    sdxl.is_sdxl = True
    with pytest.raises(OffloadingRefused, match="--medvram-sdxl"):
        refuse_unsupported(sdxl, opts(medvram_sdxl=True))


def test_inpainting_models_are_refused():
    model = TinyModel()
    model.model.conditioning_key = "hybrid"
    with pytest.raises(TrainingError, match="inpainting"):
        refuse_unsupported(model, opts())


def test_clear_builtin_lora_restores_backups_and_empties_the_loaded_list():
    model = TinyModel()
    layer = model.model.diffusion_model[0].conv
    own = layer.weight.detach().clone()
    layer.network_weights_backup = own.clone()
    layer.network_bias_backup = None
    layer.network_current_names = (("some_lora", 1.0, 1.0, None),)
    with torch.no_grad():
        layer.weight.add_(1.0)  # as the built-in merges a LoRA into the weight

    def restore(module):  # as the built-in: an in-place copy into a parameter that requires grad
        module.weight.copy_(module.network_weights_backup)

    networks = SimpleNamespace(network_restore_weights_from_backup=restore, loaded_networks=["some_lora"])
    assert clear_builtin_lora(model, networks) == 1
    assert torch.equal(layer.weight, own)
    assert layer.network_weights_backup is None and layer.network_current_names == ()
    assert networks.loaded_networks == []
    assert clear_builtin_lora(model, None) == 0


def test_model_hash_sees_one_changed_bit():
    model = TinyModel()
    before = model_hash(model)
    assert model_hash(model) == before
    with torch.no_grad():
        weight = model.model.diffusion_model[1].conv.weight
        weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(1e9))
    assert model_hash(model) != before


def test_block_forwards_bypass_the_checkpoint_helper_and_are_removed():
    model = TinyModel()
    blocks = model.model.diffusion_model
    x = torch.randn(2, 4, requires_grad=True)
    expected = blocks(x)
    calls_before = len(blocks[0].calls)
    forwards = BlockForwards(blocks)
    assert len(forwards.blocks) == 2
    for checkpointing in (False, True):
        forwards.set(checkpointing)
        out = blocks(x)
        assert torch.allclose(out, expected)
        assert len(blocks[0].calls) == calls_before  # the class forward (ldm's checkpoint) is not used
        out.sum().backward()
        assert blocks[0].conv.weight.grad is not None
    forwards.restore()
    assert "forward" not in vars(blocks[0])
    blocks(x)
    assert len(blocks[0].calls) == calls_before + 1


class SpatialTransformer(torch.nn.Module):
    """Shaped like ldm's under A1111's hijack: a 1×1 projection whose output is a channels-last view."""

    def __init__(self, channels: int = 6):
        super().__init__()
        self.proj = torch.nn.Linear(channels, channels)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.proj(x.permute(0, 2, 3, 1).reshape(b, h * w, c))
        return y.view(b, h, w, c).permute(0, 3, 1, 2) + x


def _residual_stream():
    return torch.nn.Sequential(SpatialTransformer(), torch.nn.Conv2d(6, 6, 3, padding=1))


def test_transformer_outputs_are_contiguous_during_training_only():
    unet = _residual_stream()
    x = torch.randn(1, 6, 5, 5)
    assert not unet[0](x).is_contiguous()  # the hijacked forward's channels-last view
    expected = unet(x)
    forwards = BlockForwards(unet)
    assert forwards.layout_blocks == [unet[0]]
    for checkpointing in (False, True):
        forwards.set(checkpointing)
        out = unet[0](x)
        assert out.is_contiguous() and torch.equal(out, unet[0].__class__.forward(unet[0], x))
        assert torch.allclose(unet(x), expected, atol=1e-6)
    forwards.restore()
    assert "forward" not in vars(unet[0]) and not unet[0](x).is_contiguous()


def test_contiguous_transformer_outputs_spare_the_convolutions_a_weight_copy():
    """What the layout fix is for: a channels-last input makes the convolution copy its weight at every call."""
    unet = _residual_stream()
    x = torch.randn(1, 6, 5, 5)

    def weight_copies() -> int:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            unet(x)
        return sum(1 for e in prof.events() if e.name == "aten::copy_" and e.input_shapes
                   and e.input_shapes[0] == list(unet[1].weight.shape))

    assert weight_copies() >= 1
    forwards = BlockForwards(unet)
    forwards.set(False)
    try:
        assert weight_copies() == 0
    finally:
        forwards.restore()


def test_prepared_model_puts_everything_back_after_an_error():
    model = TinyModel()
    shared = SimpleNamespace(loaded_hypernetworks=["hn"])
    with pytest.raises(RuntimeError, match="boom"):
        with prepared_model(model, opts(), None, shared) as forwards:
            assert shared.loaded_hypernetworks == [] and forwards.checkpointing is False
            raise RuntimeError("boom")
    assert shared.loaded_hypernetworks == ["hn"]
    assert all("forward" not in vars(block) for block in model.model.diffusion_model)


def test_the_transformer_blocks_are_the_compile_units_with_their_training_forward():
    class BasicTransformerBlock(ResBlock):
        pass

    unet = torch.nn.Sequential(ResBlock(), torch.nn.Sequential(BasicTransformerBlock()))
    assert [(path, type(m).__name__) for path, m in transformer_blocks(unet)] == [("1.0", "BasicTransformerBlock")]
    forwards = BlockForwards(unet)
    forwards.set(False)
    try:  # what speedups compiles is the block's training forward, past ldm's checkpoint helper
        assert vars(unet[1][0])["forward"] == unet[1][0]._forward
    finally:
        forwards.restore()
