"""The single device worker: one thread runs jobs one at a time in FIFO order.

Route handlers submit a job and await its future; they never touch the device themselves. The queue is
bounded; a waiting job can be cancelled (its client went away) and is then never run, a running one
interrupted (`interrupt(job)` affects only that job); stopping the worker lets the running job finish and
fails every waiting one with `WorkerStopped`: no job is silently lost.

Every job has a task id (pipeline/runtime/registry.py): the client's `force_task_id` or a new one; the
`*_task` methods find, cancel, interrupt, skip and move a job by its id. Pausing holds back the *pausable*
jobs (async tasks) only: a synchronous request, whose client holds its connection open, still runs, and
runs in its turn: the queue keeps one order for both.

`slots` > 1 runs that many jobs at once, each with its own `JobState`: the scale-out ingress
(server/cluster/) hands each job to a worker replica and mirrors the replica's progress into the slot's
state. Plain `/progress` then reports the oldest running job; `interrupt_all` / `skip_all` act on every
one."""
from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from pipeline.runtime.job_state import JobState
from pipeline.runtime.registry import (
    CANCELLED,
    DONE,
    FAILED,
    INTERRUPTED,
    TaskInfo,
    TaskRegistry,
    new_task_id,
)

log = logging.getLogger("hiresd.worker")


class QueueFull(Exception):
    def __init__(self, size: int):
        super().__init__(f"the job queue is full ({size} waiting); retry later")
        self.size = size


class WorkerStopped(Exception):
    def __init__(self) -> None:
        super().__init__("the server is shutting down and did not run this job")


class WorkerLost(Exception):
    """The process running the job went away mid-job (a scaled-out worker replica died): the job is lost,
    the server is not; the client may retry at once."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the worker running this job died ({detail}); the job is lost, retry it")


@dataclass(eq=False)
class Job:
    name: str
    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)
    task_id: str = field(default_factory=new_task_id)
    pausable: bool = False  # an async task: held back while the queue is paused
    # the same work in a form another process can run (server/cluster/): picklable, `run(services)`
    remote: Any = None
    on_start: Callable[[], None] | None = None  # called where the job is queued, as it starts


class Worker:
    def __init__(self, max_queue: int = 16, slots: int = 1) -> None:
        self.state = JobState()  # the first slot's; the only one of a single-process server
        self.max_queue = max_queue
        self._queue: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._accepting = True
        self._running: dict[Job, JobState] = {}  # the running jobs, oldest first, with their state
        self.registry = TaskRegistry()
        self._paused = False
        states = [self.state] + [JobState() for _ in range(slots - 1)]
        self._threads = [threading.Thread(target=self._loop, args=(st,), name=f"hiresd-worker-{i}",
                                          daemon=True) for i, st in enumerate(states)]
        for thread in self._threads:
            thread.start()

    @property
    def queued(self) -> int:
        with self._cv:
            return len(self._queue)

    @property
    def alive(self) -> bool:
        """Whether the worker's threads still run (a health check)."""
        return all(thread.is_alive() for thread in self._threads)

    @property
    def busy(self) -> bool:
        with self._cv:
            return bool(self._running) or bool(self._queue)

    def submit(self, name: str, fn: Callable[[], Any], task_id: str | None = None, pausable: bool = False,
               force: bool = False, remote: Any = None, on_start: Callable[[], None] | None = None) -> Job:
        """Queue `fn` as task `task_id` (a new id when None). `force` skips the queue bound (tasks restored
        from the store at start-up were accepted before); `remote` is the job's form for another process."""
        job = Job(name, fn, task_id=task_id or new_task_id(), pausable=pausable, remote=remote,
                  on_start=on_start)
        with self._cv:
            if not self._accepting:
                raise WorkerStopped()
            if self._waiting_with(job) > self.max_queue and not force:
                raise QueueFull(len(self._queue))
            self.registry.add(job.task_id, name)
            self._queue.append(job)
            self._cv.notify()
        return job

    def _waiting_with(self, job: Job) -> int:
        """How many jobs would wait with `job` queued. With several slots, an idle slot takes a runnable job
        at once (a job held back by the pause is not runnable), so jobs sent together are not refused while
        slots are idle; the single slot counts every queued job, as it always did."""
        runnable = sum(1 for j in (*self._queue, job) if not (self._paused and j.pausable))
        free = max(len(self._threads) - len(self._running), 0) if len(self._threads) > 1 else 0
        return len(self._queue) + 1 - min(free, runnable)

    def cancel(self, job: Job) -> bool:
        """Drop a job that has not started; True when it was dropped."""
        with self._cv:
            try:
                self._queue.remove(job)
            except ValueError:
                return False
            self.registry.finish(job.task_id, CANCELLED)
        job.future.cancel()
        return True

    # -- by task id ---------------------------------------------------------------------------------
    @property
    def running_task(self) -> str | None:
        """The oldest running job's id."""
        with self._cv:
            return next((job.task_id for job in self._running), None)

    def running_tasks(self) -> list[str]:
        """The running jobs' ids, oldest first."""
        with self._cv:
            return [job.task_id for job in self._running]

    def is_running(self, task_id: str) -> bool:
        with self._cv:
            return any(job.task_id == task_id for job in self._running)

    def progress_state(self) -> JobState:
        """What id-less `/progress` reports: the oldest running job's state (the idle state when none)."""
        with self._cv:
            return next(iter(self._running.values()), self.state)

    def state_of(self, task_id: str) -> JobState | None:
        """The state of the running job `task_id`; None when it is not running."""
        with self._cv:
            return self._running_state(task_id)

    def interrupt_all(self) -> None:
        """Id-less `/interrupt`: every running job stops at its next check (A1111's meaning with one)."""
        with self._cv:
            for st in self._running.values():
                st.interrupt()

    def skip_all(self) -> None:
        with self._cv:
            for st in self._running.values():
                st.skip()

    def _running_state(self, task_id: str) -> JobState | None:
        return next((st for job, st in self._running.items() if job.task_id == task_id), None)

    def pending_tasks(self) -> list[str]:
        """The ids of the waiting jobs, next first."""
        with self._cv:
            return [job.task_id for job in self._queue]

    def task(self, task_id: str) -> tuple[TaskInfo | None, int | None]:
        """The task's record and, while it waits, its place in the queue (0: next)."""
        with self._cv:
            position = next((i for i, job in enumerate(self._queue) if job.task_id == task_id), None)
            return self.registry.get(task_id), position

    def _find(self, task_id: str) -> Job | None:
        return next((job for job in self._queue if job.task_id == task_id), None)

    def cancel_task(self, task_id: str) -> bool:
        """Drop the waiting job `task_id`; it never runs. True when it was waiting."""
        with self._cv:
            job = self._find(task_id)
        return job is not None and self.cancel(job)

    def interrupt_task(self, task_id: str) -> bool:
        """Interrupt the job `task_id` if it is the one running; True when it was."""
        with self._cv:
            st = self._running_state(task_id)
            if st is None:
                return False
            st.interrupt_running()
            return True

    def skip_task(self, task_id: str) -> bool:
        with self._cv:
            st = self._running_state(task_id)
            if st is None:
                return False
            st.skip()
            return True

    def move_task(self, task_id: str, before: str | None) -> bool:
        """Move the waiting job `task_id` to just before the waiting job `before` (None: to the end).
        False when either is not waiting."""
        with self._cv:
            job = self._find(task_id)
            if job is None or (before is not None and self._find(before) is None):
                return False
            self._queue.remove(job)
            if before is None:
                self._queue.append(job)
            else:
                self._queue.insert(self._queue.index(self._find(before)), job)
            self._cv.notify()
            return True

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self, paused: bool) -> None:
        with self._cv:
            self._paused = paused
            self._cv.notify()

    def _next(self) -> Job | None:
        return next((job for job in self._queue if not (self._paused and job.pausable)), None)

    def interrupt(self, job: Job) -> bool:
        """Interrupt `job` if it is the one running (its client went away); True when it was. Never touches
        another job: the check and the interrupt happen under the queue's lock, before the next job starts."""
        with self._cv:
            st = self._running.get(job)
            if st is None:
                return False
            st.interrupt_running()
            return True

    def stop(self, timeout: float = 60.0) -> None:
        """Stop accepting work, fail the waiting jobs, and let the running one finish (bounded wait)."""
        with self._cv:
            self._accepting = False
            waiting = list(self._queue)
            self._queue.clear()
            self._cv.notify_all()
        for job in waiting:
            self.registry.finish(job.task_id, FAILED, str(WorkerStopped()))
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(WorkerStopped())
        for thread in self._threads:
            thread.join(timeout / len(self._threads))

    def _execute(self, job: Job, state: JobState) -> Any:
        """Run the job; `state` is its slot's. Here: in this thread (server/cluster/ runs it elsewhere)."""
        return job.fn()

    def _loop(self, state: JobState) -> None:
        while True:
            with self._cv:
                while self._next() is None and self._accepting:
                    self._cv.wait()
                job = self._next()
                if job is None:
                    return
                self._queue.remove(job)
                self._running[job] = state
                self.registry.start(job.task_id)
            if not job.future.set_running_or_notify_cancel():
                self.registry.finish(job.task_id, CANCELLED)
                self._finish(job, state)
                continue
            ok, outcome = False, None
            try:
                if job.on_start is not None:
                    job.on_start()
                outcome, ok = self._execute(job, state), True
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to its caller
                if not isinstance(exc, Exception):
                    log.exception("job %s raised %r", job.name, exc)
                outcome = exc
            status = (INTERRUPTED if state.interrupted else DONE) if ok else FAILED
            self.registry.finish(job.task_id, status, None if ok else str(outcome) or type(outcome).__name__)
            # The job is over before its caller hears of it: a client that polls /progress right after its
            # response must see the idle state, not the job it just received.
            self._finish(job, state)
            if ok:
                job.future.set_result(outcome)
            else:
                job.future.set_exception(outcome)

    def _finish(self, job: Job, state: JobState) -> None:
        state.end()
        with self._cv:
            self._running.pop(job, None)
