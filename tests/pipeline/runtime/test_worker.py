"""The device worker's ordering guarantees, without a model: FIFO, and a caller that hears of its result
finds the worker idle (a client polling /progress right after its response sees no job)."""
from __future__ import annotations

import threading

import pytest

from pipeline.runtime.worker import Worker


def _seen_when_resolved(worker: Worker, fn) -> dict:
    seen: dict = {}
    done = threading.Event()

    def job():
        worker.state.begin("txt2img", job_count=3)
        return fn()

    future = worker.submit("txt2img", job).future

    def on_done(_f) -> None:
        seen.update(job_count=worker.state.snapshot()["state"]["job_count"], busy=worker.busy)
        done.set()

    future.add_done_callback(on_done)
    assert done.wait(10)
    seen["future"] = future
    return seen


def test_a_finished_job_is_over_before_its_caller_hears_of_it() -> None:
    worker = Worker()
    try:
        seen = _seen_when_resolved(worker, lambda: "image")
        assert seen["future"].result() == "image"
        assert seen["job_count"] == 0 and seen["busy"] is False
    finally:
        worker.stop()


def test_a_failed_job_is_over_before_its_caller_hears_of_it() -> None:
    worker = Worker()

    def boom():
        raise ValueError("bad prompt")

    try:
        seen = _seen_when_resolved(worker, boom)
        with pytest.raises(ValueError, match="bad prompt"):
            seen["future"].result()
        assert seen["job_count"] == 0 and seen["busy"] is False
    finally:
        worker.stop()


def test_jobs_run_one_at_a_time_in_submission_order() -> None:
    worker = Worker()
    order: list[int] = []
    gate = threading.Event()
    try:
        first = worker.submit("a", lambda: (gate.wait(10), order.append(0)))
        rest = [worker.submit(str(i), lambda i=i: order.append(i)) for i in range(1, 5)]
        gate.set()
        for job in [first, *rest]:
            job.future.result(10)
        assert order == [0, 1, 2, 3, 4]
    finally:
        worker.stop()


def _stepping_job(worker: Worker, started: threading.Event, release: threading.Event, steps: int = 50):
    """A job that signals when it runs, waits for `release`, then begins its progress and checks the
    interrupt flag at every step; returns how many steps it ran and whether it was interrupted."""
    from pipeline.runtime.errors import Interrupted

    def job() -> tuple[int, bool]:
        started.set()
        release.wait(10)
        worker.state.begin("txt2img", job_count=1)
        for i in range(steps):
            try:
                worker.state.check()
            except Interrupted:
                return i, True
        return steps, False

    return job


def test_interrupt_reaches_only_the_running_job_even_before_it_began_its_progress() -> None:
    worker = Worker()
    try:
        started, release = threading.Event(), threading.Event()
        first = worker.submit("txt2img", _stepping_job(worker, started, release))
        go = threading.Event()
        go.set()
        second = worker.submit("txt2img", _stepping_job(worker, threading.Event(), go, steps=5))
        assert started.wait(10)
        assert worker.interrupt(second) is False  # still waiting: untouched (cancel() drops waiting jobs)
        assert worker.interrupt(first) is True  # running, but its progress has not begun yet
        release.set()
        assert first.future.result(10) == (0, True)
        assert second.future.result(20) == (5, False)  # the next job is not hit by the first one's interrupt
        assert worker.interrupt(first) is False  # over
    finally:
        worker.stop()
