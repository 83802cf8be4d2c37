"""The server scaled out on Ray Serve: one real `python -m server --workers 2 --queue-size 1` (a local Ray
cluster, the FastAPI ingress and two CPU worker replicas; ~15-40 s to start on 2 cores) shared by the
tests of this module. Each job kind runs through the replicas; two jobs run at once with their own progress,
interrupt reaches the right replica's job, the queue and its 503 stay the ingress's, async tasks run there
too; a replica killed mid-job fails its job with a clear 503 at once and the jobs after it succeed."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
from typing import Any

import httpx
import psutil
import pytest
from PIL import Image

from tests.server.livesrv import ROOT, LiveServer, wait_for

pytestmark = pytest.mark.slow

SLOW = {"prompt": "slowmo fox", "steps": 150, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 3}
QUICK = {"prompt": "a fox", "steps": 3, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 7}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("ray.serve", reason="the 'cluster' extra (scripts/setup.sh installs it)")
    from tests.fixtures.tinymodels import build_tiny_sd1

    server = LiveServer(tmp_path_factory.mktemp("cluster"), "--workers", "2", "--queue-size", "1",
                        "--shutdown-grace", "5", env={"RAY_AUTH_MODE": "disabled"})
    build_tiny_sd1(tmp_path_factory.mktemp("tiny"), seed=7).write_safetensors(
        server.models / "Stable-diffusion" / "tiny-sd1.safetensors")
    server.start().wait_ready(timeout=300)
    yield server
    server.stop()


def _post(srv: LiveServer, path: str, payload: dict[str, Any], out: dict[str, Any],
          key: str) -> threading.Thread:
    def run() -> None:
        try:
            out[key] = httpx.post(f"{srv.api}/{path}", json=payload, timeout=300)
        except Exception as exc:  # noqa: BLE001 - the test reads it
            out[key] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _progress(c: httpx.Client, task_id: str) -> dict[str, Any]:
    return c.post("/internal/progress", json={"id_task": task_id, "live_preview": False}).json()


def _sampling(c: httpx.Client, task_id: str) -> bool:
    """The job runs and its replica has reported steps."""
    progress = _progress(c, task_id)
    return progress["active"] and (progress["progress"] or 0) > 0


def _infotext(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return json.loads(r.json()["info"])["infotexts"][0]


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_every_job_kind_runs_on_the_replicas_with_the_single_process_answers(srv: LiveServer) -> None:
    with srv.client() as c:
        first = c.post("/sdapi/v1/txt2img", json=QUICK)
        again = c.post("/sdapi/v1/txt2img", json=QUICK)
        assert first.status_code == again.status_code == 200, first.text
        assert first.json()["images"] == again.json()["images"]  # same bytes whichever replica ran it
        assert json.loads(first.json()["info"])["seed"] == 7
        hires = c.post("/sdapi/v1/txt2img", json={**QUICK, "enable_hr": True, "hr_scale": 2,
                                                  "hr_upscaler": "Latent", "denoising_strength": 0.5})
        assert hires.status_code == 200, hires.text
        assert _image(hires.json()["images"][0]).size == (128, 128)
        init = first.json()["images"][0]
        i2i = c.post("/sdapi/v1/img2img", json={**QUICK, "init_images": [init], "denoising_strength": 0.5})
        assert i2i.status_code == 200, i2i.text
        extras = c.post("/sdapi/v1/extra-single-image", json={"image": init, "upscaling_resize": 2,
                                                               "upscaler_1": "Lanczos"})
        assert extras.status_code == 200, extras.text
        assert _image(extras.json()["image"]).size == (128, 128)
        # validation stays the ingress's, in the single process's shapes
        bad = c.post("/sdapi/v1/txt2img", json={**QUICK, "sampler_name": "Nope"})
        assert bad.status_code == 400 and "sampler_name" in bad.json()["detail"]
        # the options store is the ingress's: a checkpoint chosen there is what every replica runs
        before = c.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
        titles = {m["model_name"]: m["title"] for m in c.get("/sdapi/v1/sd-models").json()}
        try:
            for name in ("tiny-sd1", "hiresd-builtin-tiny", "tiny-sd1"):
                chosen = c.post("/sdapi/v1/options", json={"sd_model_checkpoint": titles[name]})
                assert chosen.status_code == 200, chosen.text
                assert c.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == titles[name]
                for _ in range(2):
                    assert f"Model: {name}," in _infotext(c.post("/sdapi/v1/txt2img", json=QUICK))
        finally:
            c.post("/sdapi/v1/options", json={"sd_model_checkpoint": before})


def test_two_jobs_run_at_once_each_with_its_own_progress_and_interrupt(srv: LiveServer) -> None:
    out: dict[str, Any] = {}
    threads = [_post(srv, "txt2img", {**SLOW, "force_task_id": k}, out, k) for k in ("job-a", "job-b")]
    with srv.client() as c:
        wait_for(lambda: all(_sampling(c, k) for k in ("job-a", "job-b")), timeout=120, interval=0.1)
        waiting = _post(srv, "txt2img", {**QUICK, "force_task_id": "job-c"}, out, "job-c")
        placed = wait_for(lambda: (p := _progress(c, "job-c"))["queued"] and p, timeout=60, interval=0.05)
        assert placed["textinfo"] == "In queue: 1/1"
        assert c.get("/internal/pending-tasks").json()["tasks"] == ["job-c"]
        full = c.post("/sdapi/v1/txt2img", json=QUICK)  # two running, one waiting: --queue-size 1 is full
        assert full.status_code == 503 and full.headers["retry-after"]
        plain = c.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()
        assert plain["state"]["job_count"] == 1 and plain["state"]["sampling_steps"] == 150
        assert c.post("/sdapi/v1/interrupt", params={"id_task": "job-a"}).status_code == 200
        threads[0].join(120)
        assert out["job-a"].status_code == 200  # interrupted: its partial result, as A1111 answers
        assert _progress(c, "job-b")["active"]  # the other replica's job runs on
        c.post("/sdapi/v1/interrupt")  # id-less: every running job
        for t in (threads[1], waiting):
            t.join(120)
        assert out["job-b"].status_code == 200 and out["job-c"].status_code == 200, out["job-c"].text
        assert _progress(c, "job-b")["completed"] and _progress(c, "job-c")["completed"]


def test_async_task_runs_on_a_replica(srv: LiveServer) -> None:
    with srv.client() as c:
        task_id = c.post("/agent-scheduler/v1/queue/txt2img", json=QUICK).json()["task_id"]
        wait_for(lambda: c.get(f"/agent-scheduler/v1/task/{task_id}").json()["data"]["status"] == "done",
                 timeout=120, interval=0.1)
        results = c.get(f"/agent-scheduler/v1/task/{task_id}/results").json()
        assert results["success"] and "Seed: 7" in results["data"][0]["infotext"]


def _replicas(srv: LiveServer) -> list[psutil.Process]:
    procs = psutil.Process(srv.proc.pid).children(recursive=True)
    return [p for p in procs if "HiresdWorker" in " ".join(p.cmdline())]


def test_a_replica_killed_mid_job_fails_its_job_at_once_and_the_next_jobs_succeed(srv: LiveServer) -> None:
    out: dict[str, Any] = {}
    threads = [_post(srv, "txt2img", {**SLOW, "force_task_id": k}, out, k) for k in ("kill-a", "kill-b")]
    with srv.client() as c:
        wait_for(lambda: all(_sampling(c, k) for k in ("kill-a", "kill-b")), timeout=120, interval=0.1)
        waiting = _post(srv, "txt2img", {**QUICK, "force_task_id": "kill-c"}, out, "kill-c")
        wait_for(lambda: _progress(c, "kill-c")["queued"], timeout=60, interval=0.05)
        replicas = _replicas(srv)
        assert len(replicas) == 2
        for proc in replicas:
            proc.kill()
        for t in threads:
            t.join(120)
        for k in ("kill-a", "kill-b"):
            assert out[k].status_code == 503, out[k].text
            assert out[k].json()["error"] == "WorkerLost" and "retry" in out[k].json()["detail"]
        waiting.join(240)  # it waited in the ingress's queue and runs on a replacement replica
        assert out["kill-c"].status_code == 200, out["kill-c"].text
        assert c.post("/sdapi/v1/txt2img", json=QUICK).status_code == 200


def test_the_single_process_imports_nothing_of_ray(tmp_path) -> None:
    code = ("import sys\nfrom fastapi.testclient import TestClient\nfrom server.app import create_app\n"
            "from server.config import from_args\nimport server.__main__\n"
            "config = from_args(['--data-dir', sys.argv[1], '--extensions-dir', sys.argv[1]], environ={})\n"
            "with TestClient(create_app(config)) as c:\n"
            "    assert c.get('/sdapi/v1/progress').status_code == 200\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    with_tmp = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env=env)
    assert with_tmp.returncode == 0, with_tmp.stderr[-2000:]
    assert with_tmp.stdout.strip().splitlines()[-1] == "[]"
