"""The queue against a real server with --queue-size 1: FIFO, a full queue answers 503 with Retry-After,
a client that goes away while its job waits has the job dropped (never run), and SIGTERM mid-job lets
the running job finish and answers the waiting one with 503: every request ends with a result or an
explicit error."""
from __future__ import annotations

import threading
import time
from datetime import date
from typing import Any

import httpx
import pytest

from tests.server.livesrv import LiveServer, wait_for

SLOW = {"prompt": "slowmo fox", "steps": 40, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 1}
QUICK = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    server = LiveServer(tmp_path_factory.mktemp("live-queue"), "--queue-size", "1", "--shutdown-grace", "30")
    server.start().wait_ready()
    yield server
    server.stop()


def _post(srv: LiveServer, payload: dict[str, Any], out: dict[str, Any], key: str, **kw: Any) -> threading.Thread:
    def run() -> None:
        try:
            with httpx.Client(base_url=srv.base, timeout=kw.get("timeout", 120)) as c:
                r = c.post("/sdapi/v1/txt2img", json=payload)
            out[key] = r
        except Exception as exc:  # noqa: BLE001
            out[key] = exc
        out[key + "_at"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _state(srv: LiveServer) -> dict[str, Any]:
    return httpx.get(f"{srv.api}/progress?skip_current_image=true").json()["state"]


def _saved(srv: LiveServer, seed: int) -> list:
    folder = srv.outputs / "txt2img-images" / date.today().isoformat()
    return list(folder.glob(f"*-{seed}.png")) if folder.exists() else []


def test_full_queue_is_503_and_a_gone_client_is_never_run(srv: LiveServer) -> None:
    out: dict[str, Any] = {}
    running = _post(srv, SLOW, out, "running")
    wait_for(lambda: _state(srv)["sampling_step"] >= 1)
    # a waiting client that gives up (read timeout closes its connection) while the slot is taken
    gone = _post(srv, {**QUICK, "seed": 777, "save_images": True}, out, "gone", timeout=httpx.Timeout(30, read=0.6))
    time.sleep(0.2)
    with httpx.Client(base_url=srv.base) as c:
        full = c.post("/sdapi/v1/txt2img", json=QUICK)
    assert full.status_code == 503 and int(full.headers["retry-after"]) > 0
    assert "queue is full" in full.json()["detail"]
    gone.join()
    assert isinstance(out["gone"], httpx.ReadTimeout)
    assert _state(srv)["job_count"] == 1  # the first job still runs; the slot of the gone one is free again
    fifo = _post(srv, {**QUICK, "seed": 778, "save_images": True}, out, "after")
    running.join()
    fifo.join()
    assert out["running"].status_code == 200 and out["after"].status_code == 200
    assert out["running_at"] <= out["after_at"]  # first in, first out
    assert _saved(srv, 778) and not _saved(srv, 777)  # the gone client's job never ran
    assert "dropped" in srv.log()


def test_sigterm_finishes_the_running_job_and_answers_the_waiting_one(srv: LiveServer) -> None:
    out: dict[str, Any] = {}
    running = _post(srv, {**SLOW, "enable_hr": True, "hr_scale": 2, "denoising_strength": 0.5}, out, "running")
    wait_for(lambda: _state(srv)["sampling_step"] >= 1)
    waiting = _post(srv, QUICK, out, "waiting")
    time.sleep(0.5)  # the waiting request has reached the queue
    srv.terminate()
    running.join(90)
    waiting.join(90)
    assert out["waiting"].status_code == 503 and out["waiting"].headers["retry-after"]
    assert "shutting down" in out["waiting"].json()["detail"]
    r = out["running"]
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    assert "Hires upscale: 2" in r.json()["info"]
    assert "hiresd.progress: " in srv.log()  # the console progress line (a log line when not a terminal)
    assert srv.proc is not None and srv.proc.wait(60) is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.api}/progress")
