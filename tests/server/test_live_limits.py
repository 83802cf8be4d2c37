"""Bounded requests and bounded work against a real uvicorn server: bodies over --max-body-mb are a 413
before they are read (declared, chunked, or with a lying Content-Length), and a running job whose client
has gone is interrupted so that the next client's job starts, unless it asked to save its images."""
from __future__ import annotations

import json
import select
import socket
import time

import httpx
import pytest

from tests.server.livesrv import LiveServer, wait_for

LIMIT = 1024 * 1024  # --max-body-mb 1
SMALL = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "seed": 7}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    server = LiveServer(tmp_path_factory.mktemp("live-limits"), "--max-body-mb", "1", "--max-steps", "40",
                        "--max-n-iter", "60")
    server.start().wait_ready()
    yield server
    server.stop()


def _read_response(sock: socket.socket, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (status, headers, body), read up to its Content-Length."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += part
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return int(lines[0].split()[1]), headers, body


def _connect(srv: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=30)


def _head(path: str, extra: str) -> bytes:
    return (f"POST /sdapi/v1/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{extra}\r\n").encode()


def _stream_until_answered(sock: socket.socket, chunks: int, size: int) -> int:
    """Send `chunks` HTTP chunks of `size` bytes each, stopping as soon as the server answers; the bytes
    of body sent."""
    sent = 0
    for _ in range(chunks):
        if select.select([sock], [], [], 0.05)[0]:
            break
        try:
            sock.sendall(f"{size:x}\r\n".encode() + b"x" * size + b"\r\n")
        except OSError:
            break
        sent += size
    return sent


def _alive(srv: LiveServer) -> bool:
    return httpx.get(f"{srv.api}/progress", timeout=10).status_code == 200


def test_declared_length_over_the_limit_is_413_before_any_body_byte(srv: LiveServer) -> None:
    with _connect(srv) as sock:
        sock.sendall(_head("png-info", f"Content-Length: {50 * LIMIT}\r\n"))  # and never a body byte
        status, headers, body = _read_response(sock)
    assert status == 413
    err = json.loads(body)
    assert set(err) == {"error", "detail", "body", "errors"} and err["error"] == "BodyTooLarge"
    assert "at most 1 MB" in err["detail"] and "--max-body-mb" in err["detail"]
    assert _alive(srv)


def test_chunked_body_is_cut_off_once_it_passes_the_limit(srv: LiveServer) -> None:
    with _connect(srv) as sock:
        sock.sendall(_head("png-info", "Transfer-Encoding: chunked\r\n"))
        sent = _stream_until_answered(sock, chunks=64, size=64 * 1024)  # 4 MiB offered
        status, _, body = _read_response(sock)
    assert status == 413 and "--max-body-mb" in json.loads(body)["detail"]
    assert sent < 4 * LIMIT  # answered while the client was still streaming
    assert _alive(srv)


def test_a_body_longer_than_its_content_length_is_never_read_past_it(srv: LiveServer) -> None:
    with _connect(srv) as sock:
        sock.sendall(_head("png-info", "Content-Length: 12\r\n"))
        sent = _stream_until_answered(sock, chunks=64, size=64 * 1024)  # '{"image": "x' + garbage
        status, _, _ = _read_response(sock)
    assert 400 <= status < 500 and sent < 4 * LIMIT
    assert _alive(srv)


def test_a_body_under_the_limit_is_served(srv: LiveServer) -> None:
    r = httpx.post(f"{srv.api}/png-info", json={"image": "", "padding": "x" * (LIMIT // 2)}, timeout=30)
    assert r.status_code != 413


def _post_raw(srv: LiveServer, body: dict) -> socket.socket:
    """Send a txt2img request over a raw socket and return it unread (the test closes it to go away)."""
    data = json.dumps(body).encode()
    sock = _connect(srv)
    sock.sendall(_head("txt2img", f"Content-Length: {len(data)}\r\n") + data)
    return sock


def _running_step(srv: LiveServer) -> int:
    state = httpx.get(f"{srv.api}/progress?skip_current_image=true", timeout=10).json()["state"]
    return state["sampling_step"] if state["job_count"] else 0


def test_a_gone_client_has_its_running_job_interrupted_and_the_next_job_starts(srv: LiveServer) -> None:
    # 60 x 40 steps of 50 ms each: about two minutes if it ran to the end
    sock = _post_raw(srv, {**SMALL, "prompt": "slowmo fox", "steps": 40, "n_iter": 60})
    wait_for(lambda: _running_step(srv) >= 2)
    sock.close()
    start = time.monotonic()
    r = httpx.post(f"{srv.api}/txt2img", json=SMALL, timeout=120)
    took = time.monotonic() - start
    assert r.status_code == 200, r.text
    assert took < 30, f"the next job waited {took:.1f}s"  # generous: the gone job had ~2 minutes left
    log = srv.log()
    assert "txt2img: client" in log and "went away while the job ran; interrupted" in log


def test_a_gone_client_that_asked_to_save_gets_its_images_saved(srv: LiveServer) -> None:
    sock = _post_raw(srv, {**SMALL, "prompt": "slowmo fox", "steps": 10, "n_iter": 4, "save_images": True})
    wait_for(lambda: _running_step(srv) >= 2)
    sock.close()
    wait_for(lambda: "asked to save its images, so it finishes and saves" in srv.log())
    samples = srv.outputs / "txt2img-images"  # the grid goes to txt2img-grids (option grid_save)
    saved = wait_for(lambda: [p for p in samples.rglob("*.png")] if len(list(samples.rglob("*.png"))) == 4
                     else None)
    assert len(saved) == 4
    assert httpx.post(f"{srv.api}/txt2img", json=SMALL, timeout=120).status_code == 200
