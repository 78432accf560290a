"""Whether this machine's torch can run on a device a user named: one check for merging and training alike."""

from __future__ import annotations

from typing import Optional

import torch


def parse_device(text: str) -> Optional[torch.device]:
    """`text` as a torch device (cpu, cuda, cuda:1, mps, ...), or None where torch knows no such device."""
    try:
        return torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        return None


def device_problem(device: torch.device) -> Optional[str]:
    """Why this machine's torch cannot run on `device` (no such backend, no such device number), or None."""
    if device.type == "cpu":
        return None
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    available, count = getattr(backend, "is_available", None), getattr(backend, "device_count", None)
    if not callable(available) or not available():
        return f"this machine's torch has no {device.type} device"
    if device.index is not None and callable(count) and device.index >= count():
        return f"this machine has {count()} {device.type} device(s), {device.type}:0 to {device.type}:{count() - 1}"
    return None
