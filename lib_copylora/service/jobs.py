"""The training queue: submissions become runs (one per sweep combination), run one after another on one worker
thread, each watched through a `JobStatus` snapshot and stoppable with `stop(job_id, save)`.

The queue knows nothing of the WebUI: a `Runner` prepares a request into configs (at submit time, so a bad request
fails before anything is queued) and runs one job (in the WebUI: under its queue lock, see `webui/training_run.py`).
The tab and the HTTP API both use this class:

    queue = JobQueue(runner)
    ids = queue.submit(request)          # list of job ids, one per run
    queue.status(ids[0])                 # JobStatus snapshot
    queue.stop(ids[0], save=True)        # stop-and-save (queued jobs are cancelled)
    queue.list()                         # every job, oldest first
"""

from __future__ import annotations

import enum
import queue as queue_module
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from ..core.errors import CopyLoraError
from ..train.callbacks import TrainControl
from .train_request import TrainRequest, expand_sweeps

RECENT_LOSSES = 100
RECENT_LOG_LINES = 50
RATE_WINDOW = 10  # steps the reported speed is measured over


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"  # stopped by the user (Stop, Stop-and-save, the WebUI's Interrupt)
    FAILED = "failed"
    CANCELLED = "cancelled"  # stopped before it started

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class UnknownJob(CopyLoraError):
    """No job has this id (the API answers 404)."""


class OutputTaken(CopyLoraError):
    """A queued or running job already writes this output (the API answers 409)."""


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of one run, safe to hand to another thread or serialise."""

    id: str
    group: str  # the submission it came from: runs of one sweep share it
    name: str  # output name of this run
    state: JobState
    phase: str  # "single", "A", "B" or "" before training starts
    step: int
    total_steps: int
    losses: list[float]  # recent losses, oldest first
    samples: list[str]  # preview image paths, oldest first
    result: Optional[str]  # the result's path relative to the Lora folder
    tag: Optional[str]  # `<lora:name:1>` for the result
    written: list[str]  # every LoRA file written (intermediate saves, parts)
    error: Optional[str]
    log: list[str]
    submitted_at: float
    started_at: Optional[float]
    finished_at: Optional[float]
    # over the phase's last RATE_WINDOW steps, end to end of a step: set-up and the first step's warm-up stay out
    steps_per_s: Optional[float] = None


class Job:
    """One run. The runner reports into it from the worker thread; readers take `snapshot()`s."""

    def __init__(self, group: str, request: TrainRequest, config: Any):
        self.id = uuid.uuid4().hex[:12]
        self.group, self.request, self.config = group, request, config
        self.claim: frozenset[str] = frozenset()  # set by the queue: the outputs this job reserves
        self.control = TrainControl()
        self._lock = threading.Lock()
        self._state = JobState.QUEUED
        self._phase, self._step, self._total = "", 0, 0
        self._losses: deque[float] = deque(maxlen=RECENT_LOSSES)
        self._log: deque[str] = deque(maxlen=RECENT_LOG_LINES)
        self._samples: list[str] = []
        self._written: list[str] = []
        self._result: Optional[str] = None
        self._tag: Optional[str] = None
        self._error: Optional[str] = None
        self._times = [time.time(), None, None]
        self._step_ends: deque[tuple[int, float]] = deque(maxlen=RATE_WINDOW + 1)

    # ---- reports from the runner -------------------------------------------------------------------------------

    def set_phase(self, phase: str, total_steps: int) -> None:
        with self._lock:
            self._phase, self._step, self._total = phase, 0, total_steps
            self._step_ends.clear()

    def set_step(self, step: int, loss: float) -> None:
        with self._lock:
            self._step = step
            self._losses.append(float(loss))
            self._step_ends.append((step, time.monotonic()))

    def add_sample(self, path: str) -> None:
        with self._lock:
            self._samples.append(path)

    def add_written(self, path: str) -> None:
        with self._lock:
            self._written.append(path)

    def log(self, line: str) -> None:
        with self._lock:
            self._log.append(line)

    def set_result(self, path: Optional[str], tag: Optional[str]) -> None:
        with self._lock:
            self._result, self._tag = path, tag

    def _set_state(self, state: JobState, error: Optional[str] = None) -> None:
        with self._lock:
            self._state = state
            if error is not None:
                self._error = error
            if state is JobState.RUNNING:
                self._times[1] = time.time()
            elif state.finished:
                self._times[2] = time.time()

    @property
    def state(self) -> JobState:
        with self._lock:
            return self._state

    def snapshot(self) -> JobStatus:
        with self._lock:
            return JobStatus(self.id, self.group, self.request.name, self._state, self._phase, self._step,
                             self._total, list(self._losses), list(self._samples), self._result, self._tag,
                             list(self._written), self._error, list(self._log), *self._times, self._rate())

    def _rate(self) -> Optional[float]:  # under self._lock
        if len(self._step_ends) < 2:
            return None
        (first, began), (last, ended) = self._step_ends[0], self._step_ends[-1]
        return (last - first) / (ended - began) if ended > began else None


class Runner(Protocol):
    def prepare(self, request: TrainRequest) -> Any:
        """The run's configs (e.g. a TrainConfig); raises CopyLoraError for a request that cannot run."""
        ...

    def run(self, job: Job) -> JobState:
        """Run one job to the end; returns DONE or STOPPED (raising means FAILED)."""
        ...

    def claim(self, config: Any) -> frozenset[str]:
        """The outputs a prepared run writes (their paths: the result, kept parts): no two unfinished jobs may
        hold the same one."""
        ...


class JobQueue:
    """Runs submitted jobs one after another on one worker thread (started on the first submission)."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pending: "queue_module.Queue[Optional[Job]]" = queue_module.Queue()
        self._worker: Optional[threading.Thread] = None

    def submit(self, request: TrainRequest) -> list[str]:
        """Expand the sweeps, prepare every run (all or nothing), queue them; returns their ids in run order.
        An output a queued or running job will write is refused here, not after training for hours."""
        group = uuid.uuid4().hex[:8]
        runs = [Job(group, run, self.runner.prepare(run)) for run in expand_sweeps(request)]
        names = [job.request.name for job in runs]
        if len(set(names)) != len(names):
            raise CopyLoraError(f"the sweep gives two runs the same name ({names}); make the swept values differ")
        with self._lock:
            for index, job in enumerate(runs):
                job.claim = self.runner.claim(job.config)
                holder = self._holder(job.claim, runs[:index])
                if holder is not None:
                    raise OutputTaken(f"{job.request.name}: job {holder.id} ({holder.state.value}) already writes "
                                      "this output; wait for it to end or choose another name")
            for job in runs:
                self._jobs[job.id] = job
                self._pending.put(job)
            self._start_worker()
        return [job.id for job in runs]

    def _holder(self, claim: frozenset[str], submitted: list[Job]) -> Optional[Job]:
        """The unfinished job (queued before, or earlier in this submission) holding an output of `claim`: a job
        releases its outputs by ending, however it ends."""
        return next((j for j in [*self._jobs.values(), *submitted] if j.claim & claim and not j.state.finished),
                    None)

    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="copylora-train", daemon=True)
            self._worker.start()

    def _job(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"no training job with id {job_id!r}")
        return job

    def status(self, job_id: str) -> JobStatus:
        return self._job(job_id).snapshot()

    def list(self) -> list[JobStatus]:
        with self._lock:
            jobs = list(self._jobs.values())
        return [job.snapshot() for job in jobs]

    def stop(self, job_id: str, save: bool = False) -> JobStatus:
        """Stop a run (with save: write the LoRA trained so far and a resume state first); a queued run is
        cancelled. Stopping a finished run changes nothing."""
        job = self._job(job_id)
        with self._lock:
            if job.state is JobState.QUEUED:
                job._set_state(JobState.CANCELLED)
        job.control.stop(save=save)
        return job.snapshot()

    def cancel_group(self, group: str) -> None:
        with self._lock:
            for job in self._jobs.values():
                if job.group == group and job.state is JobState.QUEUED:
                    job._set_state(JobState.CANCELLED)

    def shutdown(self, save: bool = False, timeout: float = 5.0) -> list[JobStatus]:
        """Stop the running job (with `save`: write what it learned and a resume state first), cancel the queued
        ones and end the worker, waiting up to `timeout` seconds for it. Returns the runs that were stopped."""
        with self._lock:
            jobs = list(self._jobs.values())
        stopped = [self.stop(job.id, save=save) for job in jobs if not job.state.finished]
        self._pending.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
        return stopped

    def _work(self) -> None:
        while True:
            job = self._pending.get()
            if job is None:
                return
            with self._lock:
                if job.state is not JobState.QUEUED:
                    continue
                job._set_state(JobState.RUNNING)
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            final = self.runner.run(job)
        except CopyLoraError as exc:
            job.log(f"error: {exc}")
            job._set_state(JobState.FAILED, str(exc))
            return
        except Exception as exc:  # the worker must survive any failure of one run and say what it was
            job.log("".join(traceback.format_exception_only(type(exc), exc)).strip())
            job._set_state(JobState.FAILED, f"{type(exc).__name__}: {exc}")
            return
        job._set_state(final)
        if final is JobState.STOPPED and not job.control.stop_requested:
            self.cancel_group(job.group)  # the WebUI's Interrupt stops the whole submission
