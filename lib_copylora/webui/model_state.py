"""The loaded model's state around a training run: checks before, the built-in Lora's merged weights cleared, the
UNet's blocks switched to a trainable forward for the run, and a hash that proves the model came back unchanged.

Nothing here writes a base weight except `clear_builtin_lora`, which copies the built-in Lora's own backups back
(the model then holds its own weights again, as the built-in does whenever a generation asks for no LoRA).
"""

from __future__ import annotations

import functools
import hashlib
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from ..core.family import Family
from ..train.errors import TrainingError
from . import compat, patching

# Blocks of ldm/sgm UNets whose `forward` wraps `_forward` in the repositories' own gradient checkpointing. That
# checkpoint (a custom autograd Function) only differentiates the block's own parameters, so LoRA modules hooked
# inside would get no gradient: during training the forward goes straight to `_forward`, or through torch's
# non-reentrant checkpoint when checkpointing is asked for.
CHECKPOINTED_BLOCKS = ("ResBlock", "BasicTransformerBlock", "AttentionBlock")
# A1111 replaces ldm's SpatialTransformer.forward with one that leaves out `.contiguous()` (sd_hijack_unet.py): its
# output is a channels-last view, the residual stream after the first transformer stays channels-last, and every
# later convolution then copies its (contiguous) weight into that layout, forward and backward, at every call: a
# third of a training step's CPU time. During training the transformers' outputs are made contiguous again (a
# copy of one activation each); a forward that already returns contiguous tensors (Forge's) is unchanged.
LAYOUT_BLOCKS = ("SpatialTransformer",)


class OffloadingRefused(TrainingError):
    """The WebUI was started with --lowvram/--medvram: parts of the model live on the CPU between calls."""


def refuse_unsupported(sd_model, cmd_opts) -> None:
    """Training needs an SD1/SD2/SDXL model, whole on its device, in a dtype gradients can flow through."""
    is_sdxl = compat.model_family(sd_model) is Family.SDXL  # an SD3 or Flux checkpoint: UnsupportedModel
    flags = [flag for flag, on in (("--lowvram", cmd_opts.lowvram), ("--medvram", cmd_opts.medvram),
                                   ("--medvram-sdxl", getattr(cmd_opts, "medvram_sdxl", False) and is_sdxl)) if on]
    if flags or compat.offloads(sd_model):
        shown = ", ".join(flags) or "low-VRAM offloading"
        raise OffloadingRefused(
            f"CopyLoRA cannot train while the WebUI offloads the model ({shown}): parts of it move to the CPU and "
            f"back during every step. Restart the WebUI without {shown}, or train with the command line "
            "(python -m lib_copylora train ...) and load the result here.")
    if compat.is_distilled_sdxl(sd_model):
        raise TrainingError("CopyLoRA trains SD1, SD2 and SDXL models, not distilled SDXL (SSD-1B); load one of "
                            "those to train")
    if compat.is_inpainting(sd_model):
        raise TrainingError("this is an inpainting model; load the ordinary model of its family to train a LoRA")
    unet = sd_model.model.diffusion_model
    if any(p.dtype == getattr(torch, "float8_e4m3fn", None) for p in unet.parameters()):
        raise TrainingError("the model is stored in FP8 (Settings → Optimizations → FP8 weight); turn that off "
                            "and reload the model to train")


def clear_builtin_lora(sd_model, networks) -> int:
    """Put back the weights the built-in Lora merged into the model (from its own backups) and empty its list of
    loaded networks, so no forward re-merges them while we train. Returns how many layers were restored. The next
    generation loads whatever LoRAs its prompt names, as usual."""
    if networks is None:
        return 0
    restored = 0
    for module in sd_model.modules():
        if getattr(module, "network_weights_backup", None) is None and \
                getattr(module, "network_bias_backup", None) is None:
            continue
        with torch.no_grad():  # the built-in copies in place, as in generation, where grad is off
            networks.network_restore_weights_from_backup(module)
        module.network_current_names = ()
        module.network_weights_backup = None
        module.network_bias_backup = None
        restored += 1
    networks.loaded_networks.clear()
    return restored


def model_tensors(sd_model) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and buffer of the loaded model. Forge's model is no torch module: its parts (the UNet with
    its schedule, the text encoders, the VAE) each sit in their own patcher."""
    if not compat.is_forge_model(sd_model):
        yield from sd_model.state_dict(keep_vars=True).items()
        return
    objects = sd_model.forge_objects
    parts = {"unet": objects.unet.model, "clip": objects.clip.cond_stage_model, "vae": objects.vae.first_stage_model}
    for part, module in parts.items():
        for name, tensor in module.state_dict(keep_vars=True).items():
            yield f"{part}.{name}", tensor


def model_hash(sd_model) -> str:
    """sha256 over every parameter and buffer of the loaded model (names, dtypes, shapes and bytes), in name
    order: equal hashes mean a bit-identical model. A diagnostic: it reads the whole model (seconds)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(model_tensors(sd_model), key=lambda item: item[0]):
            if not isinstance(tensor, torch.Tensor):
                continue
            data = tensor.detach()
            digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
            digest.update(data.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _contiguous_output(forward, *args, **kwargs):
    return forward(*args, **kwargs).contiguous()


def _checkpointed(forward, *args, **kwargs):
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


class BlockForwards:
    """Per-instance `forward` overrides of the UNet's blocks (no class is patched); `restore` removes them."""

    def __init__(self, unet: torch.nn.Module):
        self.blocks = [m for m in unet.modules()
                       if type(m).__name__ in CHECKPOINTED_BLOCKS and callable(getattr(m, "_forward", None))]
        self.layout_blocks = [m for m in unet.modules() if type(m).__name__ in LAYOUT_BLOCKS]
        self.checkpointing: Optional[bool] = None

    def trainable_forward(self, block: torch.nn.Module):
        """The forward a block runs during training (its `_forward`, past the repository's checkpoint helper)."""
        return block._forward

    def set(self, checkpointing: bool) -> None:
        for block in self.blocks:
            plain = self.trainable_forward(block)
            forward = functools.partial(_checkpointed, plain) if checkpointing else plain
            patching.set_attribute(block, "forward", forward, "training forwards")
        for block in self.layout_blocks:
            forward = type(block).forward.__get__(block, type(block))  # the class's (maybe the WebUI's) forward
            patching.set_attribute(block, "forward", functools.partial(_contiguous_output, forward),
                                   "training forwards")
        self.checkpointing = checkpointing

    def restore(self) -> None:
        for block in (*self.blocks, *self.layout_blocks):
            patching.restore_attribute(block, "forward")
        self.checkpointing = None


@contextmanager
def prepared_model(sd_model, cmd_opts, networks, shared) -> Iterator[BlockForwards]:
    """Refuse what cannot train, clear merged LoRA weights and hypernetworks, switch the UNet's blocks to a
    trainable forward; put the blocks and hypernetworks back afterwards, whatever happens."""
    refuse_unsupported(sd_model, cmd_opts)
    clear_builtin_lora(sd_model, networks)
    forwards = BlockForwards(sd_model.model.diffusion_model)
    try:
        _set_hypernetworks_aside(shared)  # they act inside attention and would train into the LoRA
        forwards.set(checkpointing=False)
        yield forwards
    finally:
        forwards.restore()
        patching.undo(HYPERNETWORKS_KEY)


HYPERNETWORKS_KEY = ("hypernetworks set aside",)


def _set_hypernetworks_aside(shared) -> None:
    """Empty the WebUI's list of loaded hypernetworks in place (others hold the same list object)."""
    loaded = getattr(shared, "loaded_hypernetworks", None)
    if loaded is None:
        return
    saved = list(loaded)
    patching.add(HYPERNETWORKS_KEY, loaded, lambda hypernetworks: hypernetworks.__setitem__(slice(None), saved),
                 "training without hypernetworks")
    loaded.clear()
