"""A run's speed in its status: steps per second over the phase's last steps, end of step to end of step, shown in
the tab's status line and answered by the API. The clock is the job module's monotonic clock, stepped by hand."""

from __future__ import annotations

import pytest

from lib_copylora.service import jobs
from lib_copylora.service.jobs import RATE_WINDOW, Job, JobState, JobStatus
from lib_copylora.service.train_request import request_from_dict
from lib_copylora.ui.job_view import status_text


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(jobs.time, "monotonic", clock)
    return clock


@pytest.fixture
def job() -> Job:
    job = Job("g", request_from_dict({"name": "shirt", "dataset_a": "a"}), None)
    job._set_state(JobState.RUNNING)
    job.set_phase("single", 100)
    return job


def steps(job: Job, clock: Clock, first: int, last: int, seconds: float) -> None:
    for step in range(first, last + 1):
        clock.now += seconds
        job.set_step(step, 0.5)


def test_no_speed_until_two_steps_have_ended(job, clock):
    assert job.snapshot().steps_per_s is None
    steps(job, clock, 1, 1, 30.0)  # the first step carries set-up and warm-up
    assert job.snapshot().steps_per_s is None
    steps(job, clock, 2, 3, 0.25)
    assert job.snapshot().steps_per_s == pytest.approx(4.0)


def test_speed_is_measured_over_the_last_steps_only(job, clock):
    steps(job, clock, 1, 5, 2.0)
    steps(job, clock, 6, 5 + RATE_WINDOW, 0.5)
    assert job.snapshot().steps_per_s == pytest.approx(2.0)


def test_a_new_phase_starts_its_own_measurement(job, clock):
    steps(job, clock, 1, 4, 0.5)
    job.set_phase("B", 100)
    assert job.snapshot().steps_per_s is None
    steps(job, clock, 1, 3, 4.0)
    assert job.snapshot().steps_per_s == pytest.approx(0.25)


def test_a_stalled_clock_gives_no_speed_rather_than_infinity(job, clock):
    job.set_step(1, 0.5)
    job.set_step(2, 0.5)  # same instant
    assert job.snapshot().steps_per_s is None


def test_the_status_line_shows_steps_per_second_or_seconds_per_step(job, clock):
    steps(job, clock, 1, 3, 0.25)
    assert "step 3/100, loss 0.5000, 4.00 steps/s" in status_text(job.snapshot())
    steps(job, clock, 4, 5 + RATE_WINDOW, 2.5)
    assert ", 2.50 s/step" in status_text(job.snapshot())


def test_statuses_made_without_a_speed_still_read():
    status = JobStatus(id="j", group="g", name="n", state=JobState.RUNNING, phase="single", step=2,
                       total_steps=4, losses=[0.1], samples=[], result=None, tag=None, written=[], error=None,
                       log=[], submitted_at=0.0, started_at=1.0, finished_at=None)
    assert status.steps_per_s is None and "steps/s" not in status_text(status)
