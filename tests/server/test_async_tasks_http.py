"""Async tasks (the agent-scheduler extension's API) and per-task control, in-process (real worker, built-in
model): a task id answered at once, results byte-identical to the synchronous request, the webhook called
exactly once (a local listener), the queue shared with synchronous requests, pause / move / delete /
requeue, and A1111's /internal/progress and /internal/pending-tasks."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ServerConfig
from server.webhook import post_result

SMALL = {"prompt": "a red fox", "steps": 3, "width": 64, "height": 64, "seed": 1234, "sampler_name": "Euler"}
AS = "/agent-scheduler/v1"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("srv")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512, queue_size=4)
    with TestClient(create_app(cfg)) as c:
        yield c


class Listener:
    """A local HTTP server recording every POST it receives (the webhook's receiver)."""

    def __init__(self, statuses: tuple[int, ...] = (200,)) -> None:
        """Answers `statuses` in turn, the last one from then on."""
        calls: list[dict[str, Any]] = []
        self.calls = calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                calls.append({"type": self.headers["Content-Type"], "body": body})
                self.send_response(statuses[min(len(calls), len(statuses)) - 1])
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _parts(call: dict[str, Any]) -> dict[str, list[bytes]]:
    """The multipart form of a webhook call: field name -> values (file contents for `files`)."""
    boundary = call["type"].split("boundary=")[1].encode()
    out: dict[str, list[bytes]] = {}
    for part in call["body"].split(b"--" + boundary)[1:-1]:
        head, _, value = part.strip(b"\r\n").partition(b"\r\n\r\n")
        name = head.split(b'name="')[1].split(b'"')[0].decode()
        out.setdefault(name, []).append(value)
    return out


def _wait_status(client: TestClient, task_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(f"{AS}/task/{task_id}").json()["data"]
        if data["status"] in statuses:
            return data
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never reached {statuses}")


def test_task_results_equal_the_synchronous_request_and_the_webhook_fires_once(client: TestClient) -> None:
    sync = client.post("/sdapi/v1/txt2img", json={**SMALL, "batch_size": 2}).json()
    hook = Listener()
    try:
        t0 = time.monotonic()
        r = client.post(f"{AS}/queue/txt2img", json={**SMALL, "batch_size": 2, "callback_url": hook.url})
        answered = time.monotonic() - t0
        assert r.status_code == 200, r.text
        task_id = r.json()["task_id"]
        assert answered < 1.0
        _wait_status(client, task_id, ("done",))
        res = client.get(f"{AS}/task/{task_id}/results").json()
        assert res["success"] is True
        got = [d["image"].split(",", 1)[1] for d in res["data"]]
        assert all(d["image"].startswith("data:image/png;base64,") for d in res["data"])
        assert got == sync["images"]  # the same bytes as the synchronous request
        assert [d["infotext"] for d in res["data"]] == json.loads(sync["info"])["infotexts"]
        # the older route form and the zip answer the same images
        assert client.get(f"{AS}/results/{task_id}").json() == res
        z = zipfile.ZipFile(io.BytesIO(client.get(f"{AS}/task/{task_id}/results?zip=true").content))
        assert [z.read(n) for n in sorted(z.namelist())] == [base64.b64decode(b) for b in sync["images"]]
        deadline = time.monotonic() + 30
        while not hook.calls and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # a second call, were there one, would have arrived by now
        assert len(hook.calls) == 1
        form = _parts(hook.calls[0])
        assert form["task_id"] == [task_id.encode()] and form["status"] == [b"done"]
        assert form["files"] == [base64.b64decode(b) for b in sync["images"]]
    finally:
        hook.close()
    hist = client.get(f"{AS}/history").json()
    assert task_id in [t["id"] for t in hist["tasks"]] and hist["total"] >= 1


def test_bad_task_is_a_4xx_naming_the_field_and_nothing_is_queued(client: TestClient) -> None:
    before = client.get(f"{AS}/queue").json()["total_pending_tasks"]
    r = client.post(f"{AS}/queue/txt2img", json={**SMALL, "sampler_name": "Nope"})
    assert r.status_code == 400 and "sampler_name" in r.text
    r = client.post(f"{AS}/queue/txt2img", json={**SMALL, "callback_url": "ftp://x"})
    assert r.status_code == 422 and "callback_url" in r.text
    r = client.post(f"{AS}/queue/img2img", json=SMALL)
    assert r.status_code == 404 and "Init image" in r.text
    assert client.get(f"{AS}/queue").json()["total_pending_tasks"] == before
    missing = client.get(f"{AS}/task/nope")
    assert missing.status_code == 404 and missing.json() == {"success": False, "message": "Task not found"}


def test_paused_tasks_wait_while_sync_requests_run_and_can_be_moved_and_deleted(client: TestClient) -> None:
    assert client.post(f"{AS}/queue/pause").json()["success"] is True
    try:
        ids = [client.post(f"{AS}/queue/txt2img", json={**SMALL, "seed": s}).json()["task_id"]
               for s in (1, 2, 3)]
        q = client.get(f"{AS}/queue").json()
        assert q["paused"] is True and [t["id"] for t in q["pending_tasks"]] == ids
        assert [t["position"] for t in q["pending_tasks"]] == [0, 1, 2]
        pending = client.get("/internal/pending-tasks").json()
        assert pending == {"size": 3, "tasks": ids}
        prog = client.post("/internal/progress", json={"id_task": ids[1]}).json()
        assert prog["queued"] is True and prog["active"] is False and prog["textinfo"] == "In queue: 2/3"
        # a synchronous request still runs while the async tasks are held back
        assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200
        assert client.post(f"{AS}/task/{ids[2]}/move/top").json()["success"] is True
        assert client.post(f"{AS}/move/{ids[0]}/bottom").json()["success"] is True  # the older form
        order = [t["id"] for t in client.get(f"{AS}/queue").json()["pending_tasks"]]
        assert order == [ids[2], ids[1], ids[0]]
        assert client.delete(f"{AS}/task/{ids[1]}").json() == {"success": True, "message": "Task deleted"}
        assert client.get(f"{AS}/task/{ids[1]}").status_code == 404
        assert client.post("/internal/progress", json={"id_task": ids[1]}).json()["completed"] is True
    finally:
        assert client.post(f"{AS}/queue/resume").json()["success"] is True
    for task_id in (ids[2], ids[0]):
        assert _wait_status(client, task_id, ("done", "failed"))["status"] == "done"
    done = {tid: client.get(f"{AS}/task/{tid}").json()["data"]["updated_at"] for tid in (ids[2], ids[0])}
    assert done[ids[2]] <= done[ids[0]]  # the moved order is the order they ran in
    copy = client.post(f"{AS}/task/{ids[0]}/requeue").json()
    assert copy["success"] is True and copy["task_id"] != ids[0]
    assert _wait_status(client, copy["task_id"], ("done", "failed"))["status"] == "done"
    a = client.get(f"{AS}/task/{ids[0]}/results").json()["data"]
    b = client.get(f"{AS}/task/{copy['task_id']}/results").json()["data"]
    assert a == b


def test_internal_progress_of_a_finished_and_an_unknown_task(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "force_task_id": "mine-1"})
    assert r.status_code == 200
    done = client.post("/internal/progress", json={"id_task": "mine-1"}).json()
    assert done["completed"] is True and done["active"] is False and done["queued"] is False
    unknown = client.post("/internal/progress", json={"id_task": "never-sent"}).json()
    assert unknown == {"active": False, "queued": False, "completed": False, "progress": None, "eta": None,
                       "live_preview": None, "id_live_preview": -1, "textinfo": "Waiting..."}
    assert client.post("/sdapi/v1/interrupt?id_task=never-sent").status_code == 404
    assert client.post("/sdapi/v1/interrupt", json={"id_task": "mine-1"}).json() == {}  # ended: no-op
    assert client.post("/sdapi/v1/interrupt").json() == {}  # A1111's form, no id
    assert client.post("/sdapi/v1/skip").status_code == 200


def test_webhook_retries_a_5xx_and_stops_at_a_4xx_or_after_three_tries() -> None:
    flaky = Listener((503, 502, 200))
    try:
        assert post_result(flaky.url, "t1", "done", [b"png-bytes"], wait=0) is True
        assert len(flaky.calls) == 3
        assert _parts(flaky.calls[2]) == {"task_id": [b"t1"], "status": [b"done"], "files": [b"png-bytes"]}
    finally:
        flaky.close()
    refused = Listener((404,))
    try:
        assert post_result(refused.url, "t2", "failed", [], wait=0) is False
        assert len(refused.calls) == 1  # the receiver's final word
    finally:
        refused.close()
    down = Listener()
    down.close()
    down.server.server_close()  # nothing listens there now: three connection errors
    assert post_result(down.url, "t3", "done", [], wait=0, timeout=2) is False


def test_task_bookkeeping_routes(client: TestClient) -> None:
    task_id = client.post(f"{AS}/queue/txt2img", json=SMALL).json()["task_id"]
    _wait_status(client, task_id, ("done",))
    assert client.post(f"{AS}/task/{task_id}/rename", params={"name": "fox"}).json()["success"] is True
    assert client.post(f"{AS}/bookmark/{task_id}").json()["success"] is True
    task = client.get(f"{AS}/task/{task_id}").json()["data"]
    assert task["name"] == "fox" and task["bookmarked"] is True and task["params"]["prompt"] == "a red fox"
    assert json.loads(task["result"])["infotexts"][0].startswith("a red fox")
    marked = client.get(f"{AS}/history", params={"status": "bookmarked"}).json()
    assert [t["id"] for t in marked["tasks"]] == [task_id] and marked["total"] == 1
    assert client.get(f"{AS}/task/{task_id}/position").json()["data"] == {"status": "done", "position": None}
    assert client.post(f"{AS}/task/{task_id}/run").json()["success"] is False  # not queued
    assert client.post(f"{AS}/task/requeue-failed").json() == {"success": False, "message": "No failed tasks"}
    assert client.post(f"{AS}/history/clear").json()["success"] is True
    assert client.get(f"{AS}/history").json() == {"tasks": [], "total": 0}
    assert client.get(f"{AS}/task/{task_id}").status_code == 404


def test_async_tasks_count_against_the_queue_bound(client: TestClient) -> None:
    client.post(f"{AS}/queue/pause")
    try:
        ids = [client.post(f"{AS}/queue/txt2img", json={**SMALL, "seed": s}).json()["task_id"]
               for s in range(4)]
        full = client.post(f"{AS}/queue/txt2img", json=SMALL)
        assert full.status_code == 503 and full.headers["Retry-After"]
        assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 503  # the same one queue
        assert client.get(f"{AS}/queue").json()["total_pending_tasks"] == 4  # the refused one is not stored
        assert client.post(f"{AS}/queue/clear").json()["success"] is True
        assert client.get("/internal/pending-tasks").json() == {"size": 0, "tasks": []}
        assert all(client.get(f"{AS}/task/{t}").status_code == 404 for t in ids)
    finally:
        client.post(f"{AS}/queue/resume")
    assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200


def test_the_new_routes_sit_behind_api_auth(tmp_path) -> None:
    cfg = ServerConfig(models_dir=tmp_path / "models", data_dir=tmp_path / "data",
                       outputs_dir=tmp_path / "out", extensions_dir=None, api_auth=[("alice", "s3cret")])
    with TestClient(create_app(cfg)) as c:
        calls = [("POST", "/internal/progress", {"id_task": "x"}), ("GET", "/internal/pending-tasks", None),
                 ("POST", f"{AS}/queue/txt2img", SMALL), ("GET", f"{AS}/queue", None),
                 ("GET", f"{AS}/task/x/results", None), ("POST", f"{AS}/queue/pause", None)]
        for method, path, body in calls:
            r = c.request(method, path, json=body)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic"), path
        assert c.get(f"{AS}/queue").status_code == 401  # nothing was paused by the refused call
        ok = c.get(f"{AS}/queue", auth=("alice", "s3cret"))
        assert ok.status_code == 200 and ok.json()["paused"] is False
        assert c.get("/internal/pending-tasks", auth=("alice", "s3cret")).json() == {"size": 0, "tasks": []}


def test_a_queued_task_can_be_changed_in_place(client: TestClient) -> None:
    client.post(f"{AS}/queue/pause")
    try:
        first, second = (client.post(f"{AS}/queue/txt2img", json={**SMALL, "seed": s}).json()["task_id"]
                         for s in (1, 2))
        bad = client.put(f"{AS}/task/{first}", json={"params": {"sampler_name": "Nope"}})
        assert bad.status_code == 400 and "sampler_name" in bad.text
        bad = client.put(f"{AS}/task/{first}", json={"params": {"steps": "many"}})
        assert bad.status_code == 422 and "steps" in bad.text
        r = client.put(f"{AS}/task/{first}", json={"params": {"seed": 77}, "name": "renamed"})
        assert r.json() == {"success": True, "message": "Task updated."}
        task = client.get(f"{AS}/task/{first}").json()["data"]
        assert task["params"]["seed"] == 77 and task["name"] == "renamed" and task["position"] == 0
        assert client.get("/internal/pending-tasks").json()["tasks"] == [first, second]
    finally:
        client.post(f"{AS}/queue/resume")
    _wait_status(client, first, ("done",))
    assert "Seed: 77," in client.get(f"{AS}/task/{first}/results").json()["data"][0]["infotext"]
    done = client.put(f"{AS}/task/{first}", json={"params": {"seed": 5}}).json()
    assert done["success"] is False and "only a queued task" in done["message"]
    _wait_status(client, second, ("done",))


def test_a_paused_queue_and_its_tasks_survive_a_restart(tmp_path) -> None:
    cfg = ServerConfig(models_dir=tmp_path / "models", data_dir=tmp_path / "data",
                       outputs_dir=tmp_path / "out", extensions_dir=None)
    with TestClient(create_app(cfg)) as c:
        c.post(f"{AS}/queue/pause")
        task_id = c.post(f"{AS}/queue/txt2img", json=SMALL).json()["task_id"]
    with TestClient(create_app(cfg)) as c:  # the same data dir
        q = c.get(f"{AS}/queue").json()
        assert q["paused"] is True and [t["id"] for t in q["pending_tasks"]] == [task_id]
        assert c.get("/internal/pending-tasks").json()["tasks"] == [task_id]
        c.post(f"{AS}/queue/resume")
        assert _wait_status(c, task_id, ("done", "failed"))["status"] == "done"
        sync = c.post("/sdapi/v1/txt2img", json=SMALL).json()["images"]
        res = c.get(f"{AS}/task/{task_id}/results").json()["data"]
        assert [d["image"].split(",", 1)[1] for d in res] == sync


def test_after_a_restart_a_task_that_became_invalid_fails_and_its_callback_goes_out(tmp_path) -> None:
    cfg = ServerConfig(models_dir=tmp_path / "models", data_dir=tmp_path / "data",
                       outputs_dir=tmp_path / "out", extensions_dir=None)
    (tmp_path / "data").mkdir()
    styles = tmp_path / "data" / "styles.csv"
    styles.write_text("name,prompt,negative_prompt\nfoxy,{prompt} in the snow,\n")
    hook = Listener()
    try:
        with TestClient(create_app(cfg)) as c:
            c.post(f"{AS}/queue/pause")
            task_id = c.post(f"{AS}/queue/txt2img", json={**SMALL, "styles": ["foxy"],
                                                          "callback_url": hook.url}).json()["task_id"]
        styles.unlink()  # the style the task names is gone when the server starts again
        with TestClient(create_app(cfg)) as c:
            task = c.get(f"{AS}/task/{task_id}").json()["data"]
            assert task["status"] == "failed"
            assert "after a restart" in task["result"] and "foxy" in task["result"]
            deadline = time.monotonic() + 30
            while not hook.calls and time.monotonic() < deadline:
                time.sleep(0.05)
        assert len(hook.calls) == 1
        # no images: a plain form, as the extension's `requests.post(data=..., files=[])` sends
        assert parse_qs(hook.calls[0]["body"].decode()) == {"task_id": [task_id], "status": ["failed"]}
    finally:
        hook.close()


def test_history_paging_out_of_range_is_a_422(client: TestClient) -> None:
    assert client.get(f"{AS}/history", params={"limit": 10**30}).status_code == 422
    assert client.get(f"{AS}/history", params={"offset": -1}).status_code == 422
    assert client.get(f"{AS}/history", params={"limit": 0}).json()["tasks"] == []
