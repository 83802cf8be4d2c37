"""The single device worker: one thread runs jobs one at a time in FIFO order.

Route handlers submit a job and await its future; they never touch the device themselves. The queue is
bounded; a waiting job can be cancelled (its client went away) and is then never run, a running one
interrupted (`interrupt(job)` affects only that job); stopping the worker lets the running job finish and
fails every waiting one with `WorkerStopped`: no job is silently lost."""
from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from pipeline.runtime.job_state import JobState

log = logging.getLogger("hiresd.worker")


class QueueFull(Exception):
    def __init__(self, size: int):
        super().__init__(f"the job queue is full ({size} waiting); retry later")
        self.size = size


class WorkerStopped(Exception):
    def __init__(self) -> None:
        super().__init__("the server is shutting down and did not run this job")


@dataclass(eq=False)
class Job:
    name: str
    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)


class Worker:
    def __init__(self, max_queue: int = 16) -> None:
        self.state = JobState()
        self.max_queue = max_queue
        self._queue: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._accepting = True
        self._running: Job | None = None
        self._thread = threading.Thread(target=self._loop, name="hiresd-worker", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        with self._cv:
            return len(self._queue)

    @property
    def busy(self) -> bool:
        with self._cv:
            return self._running is not None or bool(self._queue)

    def submit(self, name: str, fn: Callable[[], Any]) -> Job:
        job = Job(name, fn)
        with self._cv:
            if not self._accepting:
                raise WorkerStopped()
            if len(self._queue) >= self.max_queue:
                raise QueueFull(len(self._queue))
            self._queue.append(job)
            self._cv.notify()
        return job

    def cancel(self, job: Job) -> bool:
        """Drop a job that has not started; True when it was dropped."""
        with self._cv:
            try:
                self._queue.remove(job)
            except ValueError:
                return False
        job.future.cancel()
        return True

    def interrupt(self, job: Job) -> bool:
        """Interrupt `job` if it is the one running (its client went away); True when it was. Never touches
        another job: the check and the interrupt happen under the queue's lock, before the next job starts."""
        with self._cv:
            if self._running is not job:
                return False
            self.state.interrupt_running()
            return True

    def stop(self, timeout: float = 60.0) -> None:
        """Stop accepting work, fail the waiting jobs, and let the running one finish (bounded wait)."""
        with self._cv:
            self._accepting = False
            waiting = list(self._queue)
            self._queue.clear()
            self._cv.notify_all()
        for job in waiting:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(WorkerStopped())
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and self._accepting:
                    self._cv.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                self._running = job
            if not job.future.set_running_or_notify_cancel():
                self._finish()
                continue
            ok, outcome = False, None
            try:
                outcome, ok = job.fn(), True
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to its caller
                if not isinstance(exc, Exception):
                    log.exception("job %s raised %r", job.name, exc)
                outcome = exc
            # The job is over before its caller hears of it: a client that polls /progress right after its
            # response must see the idle state, not the job it just received.
            self._finish()
            if ok:
                job.future.set_result(outcome)
            else:
                job.future.set_exception(outcome)

    def _finish(self) -> None:
        self.state.end()
        with self._cv:
            self._running = None
