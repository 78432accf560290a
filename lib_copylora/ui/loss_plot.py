"""The live loss plot's data: every step's loss, gathered from the queue's snapshots as the tab polls them.

A `JobStatus` carries only the most recent losses (a window) and the current phase's step, so the tab keeps what
it has seen in a `LossHistory` (job id → phase → step → loss) and merges each new snapshot into it: the window's
last loss belongs to the current step, the one before to the step before, and so on back to step 1 of the phase.
Losses older than the phase's first step belong to the phase before, already gathered by an earlier poll.
Pure: no gradio, no WebUI.
"""

from __future__ import annotations

from typing import Sequence

from ..service.jobs import JobStatus

LossHistory = dict[str, dict[str, dict[int, float]]]
COLUMNS = ("step", "loss", "run")
MAX_POINTS_PER_SERIES = 2000  # thinned beyond this: a browser plots a few thousand points smoothly


def merge_losses(history: LossHistory, status: JobStatus) -> LossHistory:
    """A new history with the snapshot's losses added (the old one is not changed)."""
    merged = {job: {phase: dict(points) for phase, points in phases.items()} for job, phases in history.items()}
    if not status.losses or status.step <= 0:
        return merged
    points = merged.setdefault(status.id, {}).setdefault(status.phase, {})
    count = len(status.losses)
    for offset, loss in enumerate(status.losses):
        step = status.step - (count - 1 - offset)
        if step >= 1:
            points[step] = loss
    return merged


def _series_name(status: JobStatus, phase: str) -> str:
    return status.name if phase in ("", "single") else f"{status.name} ({phase})"


def _thinned(steps: list[int]) -> list[int]:
    if len(steps) <= MAX_POINTS_PER_SERIES:
        return steps
    stride = -(-len(steps) // MAX_POINTS_PER_SERIES)
    return steps[::stride] + ([steps[-1]] if (len(steps) - 1) % stride else [])


def loss_rows(history: LossHistory, statuses: Sequence[JobStatus]) -> list[dict]:
    """Rows {step, loss, run} for the runs given (e.g. one submission's sweep), a series per run and phase."""
    rows = []
    for status in statuses:
        for phase, points in history.get(status.id, {}).items():
            name = _series_name(status, phase)
            rows += [{"step": step, "loss": points[step], "run": name} for step in _thinned(sorted(points))]
    return rows
