"""Resume states: everything a phase needs to go on exactly where it stopped, in one file beside the output.

A state holds the network's tensors, the optimizer's and gradient scaler's states, the noise generator's state,
the step, the epoch and how many of its batches were used, and the losses so far. Learning rates are a function
of the step and need nothing. The file is written atomically (core/atomic.py) and loaded with
`weights_only=True`: plain tensors, numbers and strings only. Its extension is not `.pt`, so the WebUI's Lora
list, which scans the output folder, never shows it as a LoRA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..core.atomic import write_atomic
from .config import OutputConfig
from .errors import TrainingError

STATE_VERSION = 1
SUFFIX = ".trainstate"


def state_path(output: OutputConfig, phase: str) -> Path:
    return output.output_dir / f"{output.output_name}.{phase}{SUFFIX}"


def save_state(path: Path, state: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda handle: torch.save({"version": STATE_VERSION, **state}, handle), overwrite=True)


def load_state(path: Path, fingerprint: str) -> Optional[dict]:
    """The state at `path`, or None when there is none; a state from other settings is an error, not a guess."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file; all mean the same to the user
        raise TrainingError(f"cannot read the resume state {path.name} ({error}); delete it to start over") \
            from None
    if state.get("version") != STATE_VERSION:
        raise TrainingError(f"{path.name} was written by another version of the trainer; delete it to start over")
    if state.get("fingerprint") != fingerprint:
        raise TrainingError(f"{path.name} was saved with other training settings; resume with the same settings "
                            "or delete it to start over")
    return state
