"""A1111's attention kernel while training: PyTorch SDPA in place of a sliced one, and the WebUI's own put back.

A1111's "Cross attention optimization" set to Automatic picks a kernel for generating within memory, not for
training speed: Doggettx's split attention on a CUDA card without --xformers, InvokeAI's sliced attention on a CPU.
For a training run with `speed.host_attention` on, those (and no optimization at all) give way to the WebUI's own
"sdp" optimization, the kernel the CLI trains with; xformers, sdp and sdp-no-mem stay, and so does a kernel an
extension added. Afterwards the WebUI applies its setting again, as it does after loading a model. (Forge's
training forward calls PyTorch SDPA itself: nothing to switch there.)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

# A1111's own kernels that slice or split attention to save memory, and "no optimization" (None)
SLICED = frozenset({"Doggettx", "InvokeAI", "sub-quadratic", "V1", None})
TRAINING_KERNEL = "sdp"


def _in_effect(sd_hijack) -> Optional[str]:
    current = sd_hijack.current_optimizer
    return None if current is None else current.name


@contextmanager
def training_attention() -> Iterator[Optional[str]]:
    """SDPA for the duration when the kernel in effect is a sliced one; yields a line saying so, or None."""
    from modules import sd_hijack

    before = _in_effect(sd_hijack)
    if before not in SLICED:
        yield None
        return
    sdp = next((o for o in sd_hijack.optimizers if o.name == TRAINING_KERNEL), None)
    shown = before or "no attention optimization"
    if sdp is None:
        yield f"attention: this WebUI offers no PyTorch SDPA kernel; training with its {shown}"
        return
    sd_hijack.model_hijack.apply_optimizations(sdp.title())
    if _in_effect(sd_hijack) != TRAINING_KERNEL:  # the WebUI has shown why; its own kernel goes back at once
        sd_hijack.model_hijack.apply_optimizations()
        yield f"attention: the WebUI could not apply its {TRAINING_KERNEL} kernel; training with its {shown}"
        return
    try:
        yield (f"attention: training with PyTorch SDPA ({TRAINING_KERNEL}) in place of the WebUI's {shown}, "
               "which is put back afterwards (turn off Fastest attention to train with it)")
    finally:
        sd_hijack.model_hijack.apply_optimizations()  # the setting in force now, as after loading a model
