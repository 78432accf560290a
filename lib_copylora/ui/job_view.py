"""How the queue's `JobStatus` snapshots read in the tab: the queue table, the status line, previews, the result.
Pure: no gradio, no WebUI."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..service.jobs import JobState, JobStatus

QUEUE_HEADERS = ["Run", "State", "Phase", "Step", "Last loss", "Result"]
QUEUE_ROWS = 30
SAMPLE_ITEMS = 4


def running_job(statuses: Sequence[JobStatus]) -> Optional[JobStatus]:
    return next((s for s in statuses if s.state is JobState.RUNNING), None)


def current_job(statuses: Sequence[JobStatus]) -> Optional[JobStatus]:
    """The run the tab shows: the running one, else the one that started last, else the one queued last."""
    running = running_job(statuses)
    if running is not None:
        return running
    started = [s for s in statuses if s.started_at is not None]
    if started:
        return max(started, key=lambda s: s.started_at)
    return statuses[-1] if statuses else None


def _step(status: JobStatus) -> str:
    return f"{status.step}/{status.total_steps}" if status.total_steps else ""


def queue_rows(statuses: Sequence[JobStatus]) -> list[list[str]]:
    """The newest QUEUE_ROWS runs, oldest first, one row each."""
    return [[s.name, s.state.value, s.phase, _step(s), f"{s.losses[-1]:.4f}" if s.losses else "", s.tag or ""]
            for s in list(statuses)[-QUEUE_ROWS:]]


def _speed(status: JobStatus) -> str:
    rate = status.steps_per_s
    if not rate:
        return ""
    # the WebUI's own progress bar switches to seconds per step below one step a second; so do we
    return f", {rate:.2f} steps/s" if rate >= 1 else f", {1 / rate:.2f} s/step"


def status_text(status: Optional[JobStatus]) -> str:
    if status is None:
        return "No runs yet."
    where = f", phase {status.phase}" if status.phase and status.phase != "single" else ""
    loss = f", loss {status.losses[-1]:.4f}" if status.losses else ""
    text = f"{status.name}: {status.state.value}{where}"
    if status.state is JobState.RUNNING or (status.step and status.state is not JobState.DONE):
        text += f", step {_step(status)}{loss}{_speed(status)}"
    if status.state is JobState.DONE and status.tag:
        text += f" — {status.tag}"
    if status.error:
        text += f" — {status.error}"
    if status.state is JobState.STOPPED and status.written:
        text += f" — saved: {', '.join(status.written)}"
    return text


def sample_items(status: Optional[JobStatus], limit: int = SAMPLE_ITEMS) -> list[tuple[str, str]]:
    """The newest previews as (path, caption), newest first; each image holds the LoRA's row above the plain one."""
    if status is None:
        return []
    return [(path, f"{Path(path).stem}: top with the LoRA, bottom without (same seed)")
            for path in reversed(status.samples[-limit:])]


def result_tag(status: Optional[JobStatus]) -> str:
    if status is None or status.state is not JobState.DONE:
        return ""
    return status.tag or ""


def log_text(status: Optional[JobStatus]) -> str:
    return "\n".join(status.log) if status is not None else ""


def poll_signature(statuses: Sequence[JobStatus]) -> tuple:
    """Changes whenever something the tab shows changes; equal signatures mean nothing to redraw."""
    return tuple((s.id, s.state.value, s.phase, s.step, len(s.samples), len(s.log), s.tag) for s in statuses)


def finished_results(statuses: Sequence[JobStatus]) -> int:
    """How many runs have written a result (the tab's LoRA lists are refreshed when this grows)."""
    return sum(1 for s in statuses if s.state is JobState.DONE and s.result)
