"""Image fields given as http(s) URLs (A1111's api_enable_requests, api_forbid_local_requests,
api_useragent) against a real HTTP server on 127.0.0.1: refused as a local host by default, fetched and used
exactly as the same image sent as base64 once allowed, refused when requests are off, sent with the
configured User-Agent."""
from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from server.app import create_app
from server.config import ServerConfig
from server.imagefetch import FetchRefused, UrlFetch, fetch_url


def _png(text: str = "") -> bytes:
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    meta = PngInfo()
    if text:
        meta.add_text("parameters", text)
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=meta)
    return buf.getvalue()


PNG = _png("a served picture\nSteps: 3, Sampler: Euler, Seed: 5")
B64 = base64.b64encode(PNG).decode()


class Served:
    """A local HTTP server: /img.png (the PNG), /moved (302 to /img.png), /big (2 MB), anything else 404;
    it records the path and User-Agent of every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                served.seen.append((self.path, self.headers.get("User-Agent", "")))
                if self.path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", "/img.png")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = {"/img.png": PNG, "/big": b"\0" * (2 << 20)}.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [p for p, _ in self.seen]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root: Path = tmp_path_factory.mktemp("urls")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "out",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


def _options(client: TestClient, **values: object) -> None:
    assert client.post("/sdapi/v1/options", json=values).status_code == 200


def test_a_local_url_is_refused_by_default_naming_the_option(client: TestClient, served: Served) -> None:
    assert client.get("/sdapi/v1/options").json()["api_forbid_local_requests"] is True
    r = client.post("/sdapi/v1/img2img", json={"init_images": [f"{served.base}/img.png"], "steps": 2,
                                               "width": 64, "height": 64})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "init_images[0]" in detail and "api_forbid_local_requests" in detail and "127.0.0.1" in detail
    r = client.post("/sdapi/v1/png-info", json={"image": f"{served.base}/img.png"})
    assert r.status_code == 400 and "api_forbid_local_requests" in r.json()["detail"]
    assert served.seen == []  # refused before any request


def test_allowed_the_fetched_image_is_used_as_the_same_image_in_base64(client: TestClient,
                                                                       served: Served) -> None:
    _options(client, api_forbid_local_requests=False)
    try:
        info = client.post("/sdapi/v1/png-info", json={"image": f"{served.base}/img.png"})
        assert info.status_code == 200, info.text
        assert info.json()["info"].startswith("a served picture")
        assert str(info.json()["parameters"]["Seed"]) == "5"
        body = {"upscaling_resize": 2, "upscaler_1": "Lanczos"}
        by_url = client.post("/sdapi/v1/extra-single-image", json={**body, "image": f"{served.base}/moved"})
        by_b64 = client.post("/sdapi/v1/extra-single-image", json={**body, "image": B64})
        assert by_url.status_code == 200, by_url.text
        assert by_url.json()["image"] == by_b64.json()["image"]
        assert served.paths()[-2:] == ["/moved", "/img.png"]  # the redirect was followed
    finally:
        _options(client, api_forbid_local_requests=True)


def test_override_settings_allow_a_local_url_for_one_img2img(client: TestClient, served: Served) -> None:
    body = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "seed": 11,
            "denoising_strength": 0.5}
    by_b64 = client.post("/sdapi/v1/img2img", json={**body, "init_images": [B64]})
    by_url = client.post("/sdapi/v1/img2img", json={
        **body, "init_images": [f"{served.base}/img.png"],
        "override_settings": {"api_forbid_local_requests": False}})
    assert by_url.status_code == 200, by_url.text
    assert by_url.json()["images"] == by_b64.json()["images"]
    r = client.post("/sdapi/v1/img2img",
                    json={**body, "init_images": [B64], "mask": f"{served.base}/img.png"})
    assert r.status_code == 400 and "mask" in r.json()["detail"]  # the override was for that request only


def test_requests_off_refuses_every_url(client: TestClient, served: Served) -> None:
    before = len(served.seen)
    _options(client, api_enable_requests=False, api_forbid_local_requests=False)
    try:
        r = client.post("/sdapi/v1/extra-single-image", json={"image": f"{served.base}/img.png",
                                                               "upscaler_1": "Lanczos"})
        assert r.status_code == 400, r.text
        assert "api_enable_requests" in r.json()["detail"] and "image" in r.json()["detail"]
        r = client.post("/sdapi/v1/img2img", json={"init_images": [f"{served.base}/img.png"], "steps": 2,
                                                   "width": 64, "height": 64,
                                                   "override_settings": {"api_enable_requests": False}})
        assert r.status_code == 400 and "api_enable_requests" in r.json()["detail"]
    finally:
        _options(client, api_enable_requests=True, api_forbid_local_requests=True)
    assert len(served.seen) == before


def test_the_user_agent_option_is_sent(client: TestClient, served: Served) -> None:
    _options(client, api_forbid_local_requests=False, api_useragent="hiresd-test/1.0 (fox)")
    try:
        r = client.post("/sdapi/v1/png-info", json={"image": f"{served.base}/img.png"})
        assert r.status_code == 200, r.text
        assert served.seen[-1] == ("/img.png", "hiresd-test/1.0 (fox)")
        _options(client, api_useragent="")
        client.post("/sdapi/v1/png-info", json={"image": f"{served.base}/img.png"})
        assert served.seen[-1][1].startswith("python-httpx/")
    finally:
        _options(client, api_forbid_local_requests=True, api_useragent="")


def test_fetch_failures_are_400s_that_say_why(client: TestClient, served: Served) -> None:
    _options(client, api_forbid_local_requests=False)
    try:
        r = client.post("/sdapi/v1/png-info", json={"image": f"{served.base}/missing.png"})
        assert r.status_code == 400 and "HTTP 404" in r.json()["detail"]
        r = client.post("/sdapi/v1/png-info", json={"image": "ftp://127.0.0.1/img.png"})
        assert r.status_code == 400 and "only http and https" in r.json()["detail"]
    finally:
        _options(client, api_forbid_local_requests=True)


def test_the_byte_cap_cuts_a_large_body(served: Served) -> None:
    with pytest.raises(FetchRefused, match="larger than 1000000 bytes"):
        fetch_url(f"{served.base}/big", UrlFetch(forbid_local=False, max_bytes=1_000_000))
    assert fetch_url(f"{served.base}/img.png", UrlFetch(forbid_local=False, max_bytes=len(PNG))) == PNG


@pytest.mark.parametrize("addresses", [["10.1.2.3"], ["8.8.8.8", "192.168.0.9"], ["::1"],
                                       ["169.254.169.254"]])
def test_every_resolved_address_must_be_global(addresses: list[str]) -> None:
    policy = UrlFetch(resolver=lambda host, port: addresses)
    with pytest.raises(FetchRefused, match="api_forbid_local_requests") as err:
        fetch_url("http://pictures.example/cat.png", policy)
    assert next(a for a in addresses if a != "8.8.8.8") in str(err.value)
