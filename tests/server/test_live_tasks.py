"""Per-job control and the durable async queue against a real `python -m server`: two jobs with their own
`force_task_id` each see their own /internal/progress, interrupting one by id leaves the other's image as
it is alone, a job cancelled while it waits never runs; and a server killed with SIGKILL runs its queued
async tasks after a restart, the one it was running once more, or reports it failed when it was cut twice."""
from __future__ import annotations

import signal
import threading
from datetime import date
from typing import Any

import httpx

from tests.server.livesrv import LiveServer, wait_for

SLOW = {"prompt": "slowmo fox", "steps": 40, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 1}
QUICK = {"prompt": "a fox", "steps": 3, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 5}
AS = "/agent-scheduler/v1"


def _post(srv: LiveServer, payload: dict[str, Any], out: dict[str, Any], key: str) -> threading.Thread:
    def run() -> None:
        try:
            with httpx.Client(base_url=srv.base, timeout=120) as c:
                out[key] = c.post("/sdapi/v1/txt2img", json=payload)
        except Exception as exc:  # noqa: BLE001
            out[key] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _progress(srv: LiveServer, task_id: str) -> dict[str, Any]:
    body = {"id_task": task_id, "live_preview": False}
    return httpx.post(f"{srv.base}/internal/progress", json=body).json()


def test_each_job_has_its_own_progress_and_interrupt(tmp_path) -> None:
    srv = LiveServer(tmp_path, "--queue-size", "4").start().wait_ready()
    try:
        out: dict[str, Any] = {}
        a = _post(srv, {**SLOW, "force_task_id": "job-a"}, out, "a")
        wait_for(lambda: (_progress(srv, "job-a").get("progress") or 0) > 0)

        def preview(seen: int) -> dict[str, Any]:
            body = {"id_task": "job-a", "id_live_preview": seen}
            return httpx.post(f"{srv.base}/internal/progress", json=body).json()

        first = wait_for(lambda: (lambda p: p if p["live_preview"] else None)(preview(-1)))
        assert first["live_preview"].startswith("data:image/png;base64,") and first["id_live_preview"] > 0
        again = preview(first["id_live_preview"])  # the client has it: only a newer one is sent
        assert again["live_preview"] is None or again["id_live_preview"] > first["id_live_preview"]
        b = _post(srv, {**QUICK, "force_task_id": "job-b"}, out, "b")
        wait_for(lambda: _progress(srv, "job-b")["queued"])
        c = _post(srv, {**QUICK, "seed": 778, "save_images": True, "force_task_id": "job-c"}, out, "c")
        wait_for(lambda: _progress(srv, "job-c")["queued"])
        pa, pb, pc = _progress(srv, "job-a"), _progress(srv, "job-b"), _progress(srv, "job-c")
        assert pa["active"] is True and 0 < pa["progress"] < 1 and pa["queued"] is False
        assert pb == {**pb, "active": False, "queued": True, "textinfo": "In queue: 1/2"}
        assert pc["textinfo"] == "In queue: 2/2"
        pending = httpx.get(f"{srv.base}/internal/pending-tasks").json()
        assert pending == {"size": 2, "tasks": ["job-b", "job-c"]}
        # a second job may not take a live job's id
        dup = httpx.post(f"{srv.api}/txt2img", json={**QUICK, "force_task_id": "job-b"}, timeout=30)
        assert dup.status_code == 409 and "force_task_id" in dup.text
        # the waiting job c is cancelled by id: it never runs, its client hears why
        assert httpx.post(f"{srv.api}/interrupt", params={"id_task": "job-c"}).json() == {}
        c.join(30)
        assert out["c"].status_code == 409 and "job-c" in out["c"].text
        # job a is interrupted by id: b, queued behind it, runs as it does alone
        assert httpx.post(f"{srv.api}/interrupt", json={"id_task": "job-a"}).json() == {}
        a.join(60)
        b.join(60)
        assert out["a"].status_code == 200 and out["b"].status_code == 200
        assert _progress(srv, "job-a")["completed"] is True and _progress(srv, "job-c")["completed"] is True
        alone = httpx.post(f"{srv.api}/txt2img", json=QUICK, timeout=60).json()
        assert out["b"].json()["images"] == alone["images"]
        folder = srv.outputs / "txt2img-images" / date.today().isoformat()
        assert not folder.exists() or not list(folder.glob("*-778.png"))  # c never ran
    finally:
        srv.stop()


def _kill(srv: LiveServer) -> None:
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(30)
    srv.stop()  # closes its log


def _task(srv: LiveServer, task_id: str) -> dict[str, Any]:
    return httpx.get(f"{srv.base}{AS}/task/{task_id}").json()["data"]


def test_sigkill_with_queued_tasks_runs_them_after_a_restart(tmp_path) -> None:
    srv = LiveServer(tmp_path).start().wait_ready()
    with srv.client() as c:
        slow = c.post(f"{AS}/queue/txt2img", json={**SLOW, "steps": 60}).json()["task_id"]
        wait_for(lambda: (_progress(srv, slow).get("progress") or 0) > 0)
        queued = [c.post(f"{AS}/queue/txt2img", json={**QUICK, "seed": s}).json()["task_id"]
                  for s in (11, 12)]
        assert _task(srv, queued[1])["position"] == 1
    _kill(srv)

    # restarted on the same data dir: the task that was running runs once more, first, as it was first
    srv = LiveServer(tmp_path).start().wait_ready()
    try:
        wait_for(lambda: (_progress(srv, slow).get("progress") or 0) > 0, timeout=120)
        assert _task(srv, queued[0])["status"] == "pending" and _task(srv, queued[1])["position"] == 1
        _kill(srv)  # cut a second time: it is reported failed, never silently lost, and not run again
        srv = LiveServer(tmp_path).start().wait_ready()
        failed = _task(srv, slow)
        assert failed["status"] == "failed" and "twice" in failed["result"]
        for task_id in queued:
            wait_for(lambda t=task_id: _task(srv, t)["status"] in ("done", "failed"), timeout=120)
            assert _task(srv, task_id)["status"] == "done"
        with srv.client() as c:
            sync = c.post("/sdapi/v1/txt2img", json={**QUICK, "seed": 12}).json()["images"]
            res = c.get(f"{AS}/task/{queued[1]}/results").json()["data"]
        assert [d["image"].split(",", 1)[1] for d in res] == sync
        assert "was running when the server stopped: queued again" in srv.log()
    finally:
        srv.stop()
