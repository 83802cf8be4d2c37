"""The job registry: every job the worker takes has a task id and a state.

A task is queued (with its position), running (its progress is the worker's `JobState`: one job runs at a
time), or finished: done, failed (with the error), interrupted or cancelled (dropped before it ran). The
last `keep` finished tasks are remembered, like A1111's `finished_tasks`, so that a client polling by id
after its job ended hears `completed` rather than "unknown"."""
from __future__ import annotations

import collections
import threading
import time
import uuid
from dataclasses import dataclass

QUEUED, RUNNING, DONE, FAILED, INTERRUPTED, CANCELLED = (
    "queued", "running", "done", "failed", "interrupted", "cancelled")
FINISHED = (DONE, FAILED, INTERRUPTED, CANCELLED)


class TaskIdInUse(Exception):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"force_task_id {task_id!r} names a job that is still queued or running; "
                         "send another id, or none for a new one")
        self.task_id = task_id


def new_task_id() -> str:
    return str(uuid.uuid4())


@dataclass
class TaskInfo:
    """One task's record. `error` is set for failed tasks; times are `time.time()` seconds."""
    id: str
    name: str
    status: str = QUEUED
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    error: str | None = None


class TaskRegistry:
    """Task id -> `TaskInfo` for live tasks and the last `keep` finished ones. Thread-safe."""

    def __init__(self, keep: int = 64) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, TaskInfo] = {}
        self._finished: collections.OrderedDict[str, TaskInfo] = collections.OrderedDict()
        self.keep = keep

    def add(self, task_id: str, name: str) -> TaskInfo:
        with self._lock:
            if task_id in self._live:
                raise TaskIdInUse(task_id)
            self._finished.pop(task_id, None)  # an id may be reused once its job is over
            info = TaskInfo(task_id, name, created=time.time())
            self._live[task_id] = info
            return info

    def start(self, task_id: str) -> None:
        with self._lock:
            info = self._live.get(task_id)
            if info is not None:
                info.status, info.started = RUNNING, time.time()

    def finish(self, task_id: str, status: str, error: str | None = None) -> None:
        with self._lock:
            info = self._live.pop(task_id, None)
            if info is None:
                return
            info.status, info.finished, info.error = status, time.time(), error
            self._finished[task_id] = info
            while len(self._finished) > self.keep:
                self._finished.popitem(last=False)

    def get(self, task_id: str) -> TaskInfo | None:
        with self._lock:
            info = self._live.get(task_id) or self._finished.get(task_id)
            return None if info is None else TaskInfo(**vars(info))
