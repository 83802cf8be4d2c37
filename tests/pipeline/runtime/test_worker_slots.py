"""A worker with several slots (the scaled-out ingress's queue, server/cluster/), without a model or Ray:
jobs run at once, each with its own state; id-less progress reports the oldest running job; interrupt by
id reaches only its job, id-less interrupt every one; the queue bound counts waiting jobs, not jobs handed
to idle slots; and a job's state mirrors another process's state, relaying interrupt and skip."""
from __future__ import annotations

import threading

import pytest

from pipeline.runtime.job_state import JobState
from pipeline.runtime.worker import QueueFull, Worker


class Slotted(Worker):
    """Runs each job as `fn(state)` in its slot, as the ingress runs a job on a replica and mirrors it."""

    def _execute(self, job, state: JobState):
        return job.fn(state)


def _sampling(started: threading.Event, release: threading.Event, steps: int):
    def job(state: JobState) -> str:
        state.begin("txt2img", job_count=1)
        state.set_job(0, sampling_steps=steps)
        started.set()
        while not release.wait(0.01):
            if state.interrupted:
                return "interrupted"
        return "done"

    return job


def test_two_slots_run_two_jobs_at_once_each_with_its_own_state() -> None:
    worker = Slotted(max_queue=1, slots=2)
    started = [threading.Event(), threading.Event()]
    release = threading.Event()
    try:
        a = worker.submit("txt2img", _sampling(started[0], release, 10), task_id="a")
        assert started[0].wait(10)
        b = worker.submit("txt2img", _sampling(started[1], release, 20), task_id="b")
        assert started[1].wait(10)
        assert worker.running_tasks() == ["a", "b"]
        assert worker.progress_state().snapshot()["state"]["sampling_steps"] == 10  # the oldest
        assert worker.state_of("b").snapshot()["state"]["sampling_steps"] == 20
        c = worker.submit("txt2img", _sampling(threading.Event(), release, 5), task_id="c")
        with pytest.raises(QueueFull):  # two running, one waiting: the bound of 1 is reached
            worker.submit("txt2img", lambda state: None)
        assert worker.interrupt_task("a") and a.future.result(10) == "interrupted"
        assert worker.registry.get("a").status == "interrupted"
        assert worker.is_running("b")  # the other slot's job runs on
        wait_c = threading.Event()
        while not worker.is_running("c") and not wait_c.wait(0.01):  # c takes a's slot
            pass
        worker.interrupt_all()  # id-less: every running job
        assert b.future.result(10) == c.future.result(10) == "interrupted"
        d = worker.submit("txt2img", _sampling(threading.Event(), release, 5), task_id="d")
        release.set()
        assert d.future.result(10) == "done"
    finally:
        release.set()
        worker.stop()


def test_idle_slots_take_jobs_sent_at_once_within_the_bound() -> None:
    worker = Slotted(max_queue=1, slots=2)
    release = threading.Event()
    try:
        jobs = [worker.submit("txt2img", _sampling(threading.Event(), release, 1)) for _ in range(3)]
        release.set()
        assert [j.future.result(10) for j in jobs] == ["done"] * 3
    finally:
        release.set()
        worker.stop()


def test_a_mirrored_state_shows_the_remote_job_and_relays_interrupt_and_skip() -> None:
    remote, here = JobState(), JobState()
    remote.begin("txt2img", job_count=2)
    remote.set_job(1, sampling_steps=8)
    remote.set_step(3, preview=lambda: "preview-image")
    fields, preview, preview_id = remote.export()
    assert preview == "preview-image"
    assert here.mirror(fields, preview, preview_id) == (False, False)
    snap = here.snapshot()
    assert snap["state"]["job_no"] == 1 and snap["state"]["sampling_step"] == 3
    assert snap["preview"]() == "preview-image" and snap["preview_id"] == preview_id
    assert remote.export(preview_id)[1] is None  # an unchanged preview is not sent again
    here.skip()
    interrupt, skip = here.mirror(*remote.export(preview_id))
    assert (interrupt, skip) == (False, True)
    remote.skip()
    assert here.mirror(*remote.export(preview_id)) == (False, False)  # relayed once
    here.interrupt()
    assert here.mirror(*remote.export(preview_id)) == (True, False)
    assert here.snapshot()["state"]["interrupted"]  # kept while the remote job has not seen it yet
