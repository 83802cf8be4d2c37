"""The ingress's worker when the server is scaled out: the single process's queue (pipeline/runtime/
worker.py: one FIFO order, bounded, pausable, task ids, cancel / interrupt / skip / move by id, the job
registry) with one slot per worker replica. A slot hands its job's picklable form (`Job.remote`) to the
worker deployment, routed by the job's checkpoint + VAE (`multiplexed_model_id`), and blocks until the
replica answers; meanwhile the replica reports its job's progress every `REPORT_S` (`report`), which the
slot's `JobState` mirrors, and hears back the interrupt / skip asked for here.

A job is only handed out when a slot is free, so a queued job waits here, where /interrupt can drop it
and /internal/progress can place it, never in Ray's router. A replica that dies mid-job fails that job
with `WorkerLost` (503 at once); the queued jobs go to the replicas that are alive (Serve replaces the
dead one). A job without a remote form (a checkpoint rescan) runs here, in the slot's thread."""
from __future__ import annotations

import logging
from typing import Any

import ray.exceptions

from pipeline.runtime.job_state import JobState
from pipeline.runtime.worker import Job, Worker, WorkerLost
from server.cluster.outcome import unpack_error

log = logging.getLogger("hiresd.cluster")

REPORT_S = 0.25  # how often a replica reports its running job's progress


class ClusterWorker(Worker):
    def __init__(self, handle: Any, max_queue: int, slots: int) -> None:
        self.handle = handle  # the worker deployment's DeploymentHandle
        self._on_replica: dict[str, JobState] = {}  # task id -> its slot's state, while a replica runs it
        super().__init__(max_queue, slots)

    def _execute(self, job: Job, state: JobState) -> Any:
        if job.remote is None:
            return job.fn()
        with self._cv:
            self._on_replica[job.task_id] = state
        try:
            call = self.handle.options(multiplexed_model_id=job.remote.model_key or "")
            kind, value = call.run.remote(job.task_id, job.name, job.remote).result()
        except ray.exceptions.RayError as exc:  # the replica died or was lost under the job
            log.warning("%s %s: its worker replica went away: %s", job.name, job.task_id, type(exc).__name__)
            raise WorkerLost(type(exc).__name__) from None
        finally:
            with self._cv:
                self._on_replica.pop(job.task_id, None)
        if kind == "error":
            raise unpack_error(value)
        return value

    def report(self, task_id: str, fields: dict[str, Any], preview: Any,
               preview_id: int) -> tuple[bool, bool]:
        """A replica's progress for its running job `task_id`; the (interrupt, skip) asked for here. A job
        this ingress no longer waits for (its slot gave up on it) is told to stop."""
        with self._cv:
            state = self._on_replica.get(task_id)
        if state is None:
            return True, False
        return state.mirror(fields, preview, preview_id)
