"""The job registry on the worker (task ids, states, cancel/interrupt/move/pause by id) and the SQLite task
store (order, survival across a reopen, result bounds by count and bytes)."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pipeline.runtime.registry import TaskIdInUse, TaskRegistry
from pipeline.runtime.task_store import DONE, PENDING, RUNNING, TaskStore
from pipeline.runtime.worker import Worker


def _gate_worker() -> tuple[Worker, threading.Event, list[str]]:
    """A worker whose first job blocks until the gate opens; `ran` records each job that ran."""
    worker, gate, started, ran = Worker(max_queue=8), threading.Event(), threading.Event(), []
    worker.submit("block", lambda: (started.set(), gate.wait(30), ran.append("block")), task_id="block")
    assert started.wait(30)
    return worker, gate, ran


def test_jobs_have_ids_states_and_a_cancelled_one_never_runs() -> None:
    worker, gate, ran = _gate_worker()
    try:
        jobs = {t: worker.submit("j", lambda t=t: ran.append(t), task_id=t) for t in ("a", "b", "c")}
        with pytest.raises(TaskIdInUse):
            worker.submit("j", lambda: None, task_id="b")
        assert worker.pending_tasks() == ["a", "b", "c"]
        assert worker.task("c")[1] == 2 and worker.task("block")[0].status == "running"
        assert worker.cancel_task("b") is True and worker.cancel_task("b") is False
        assert worker.move_task("c", "a") is True and worker.pending_tasks() == ["c", "a"]
        assert worker.interrupt_task("a") is False  # waiting, not running
        assert worker.skip_task("a") is False
        worker.state.begin("block", 1)  # the running job's progress has begun: its flags can be set
        assert worker.skip_task("block") is True and worker.state.skipped
        worker.state.clear_skip()
        assert worker.interrupt_task("block") is True and worker.state.interrupted
        gate.set()
        for t in ("a", "c"):
            jobs[t].future.result(30)
        assert ran == ["block", "c", "a"]
        assert jobs["b"].future.cancelled()
        assert worker.task("b")[0].status == "cancelled" and worker.task("a")[0].status == "done"
        assert worker.task("block")[0].status == "interrupted"  # it ended with its interrupt flag set
    finally:
        gate.set()
        worker.stop(10)


def test_pausing_holds_back_only_pausable_jobs() -> None:
    worker, gate, ran = _gate_worker()
    try:
        worker.pause(True)
        held = worker.submit("task", lambda: ran.append("task"), task_id="task", pausable=True)
        sync = worker.submit("sync", lambda: ran.append("sync"), task_id="sync")
        gate.set()
        sync.future.result(30)
        assert ran == ["block", "sync"] and worker.pending_tasks() == ["task"]
        worker.pause(False)
        held.future.result(30)
        assert ran == ["block", "sync", "task"]
    finally:
        gate.set()
        worker.stop(10)


def test_a_failed_job_records_its_error_and_the_registry_keeps_the_last_n() -> None:
    worker = Worker()
    try:
        job = worker.submit("bad", lambda: 1 / 0, task_id="bad")
        with pytest.raises(ZeroDivisionError):
            job.future.result(30)
        info = worker.task("bad")[0]
        assert info.status == "failed" and "division by zero" in info.error
    finally:
        worker.stop(10)
    reg = TaskRegistry(keep=2)
    for t in ("x", "y", "z"):
        reg.add(t, "j")
        reg.finish(t, "done")
    assert reg.get("x") is None and reg.get("z").status == "done"


def test_store_keeps_order_and_survives_a_reopen(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db")
    for t in ("a", "b", "c"):
        store.add(t, "txt2img", {"prompt": t}, None, None)
    store.set_status("a", RUNNING, started=True)
    store.set_order(["c", "b"])
    store.close()
    again = TaskStore(tmp_path / "tasks.db")  # what a restarted process sees
    rows = again.pending()
    assert [r.id for r in rows] == ["a", "c", "b"]
    assert rows[0].status == RUNNING and rows[0].attempts == 1 and rows[2].params == {"prompt": "b"}
    assert rows[1].status == PENDING
    again.close()


def test_results_are_dropped_oldest_first_beyond_the_count_and_byte_bounds(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db", max_results=2, max_result_bytes=250)
    for t in ("a", "b", "c"):
        store.add(t, "txt2img", {}, None, None)
        store.finish(t, DONE, [bytes([1]) * 100], [f"info {t}"], "{}")
    assert store.images("a") == [] and store.get("a").expired  # over the count: the oldest went
    assert store.images("b") == [bytes([1]) * 100] and store.images("c") == [bytes([1]) * 100]
    store.add("d", "txt2img", {}, None, None)
    store.finish("d", DONE, [bytes([2]) * 200], ["info d"], "{}")  # 300 bytes with c: over 250
    assert store.images("c") == [] and store.get("c").expired and store.images("d") == [bytes([2]) * 200]
    assert store.get("d").infotexts == ["info d"] and not store.get("d").expired
    store.close()
