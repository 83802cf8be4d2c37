"""How image responses travel (in-process app, real worker and built-in model): the routes that answer with
base64 images skip gzip even when the client accepts it (it costs more than the PNGs and saves a quarter),
every other route still gzips as A1111 does, and the body is A1111's JSON."""
from __future__ import annotations

import base64
import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import ServerConfig

SMALL = {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "seed": 7}
GZIP = {"Accept-Encoding": "gzip, deflate"}  # what requests, httpx and webuiapi send


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("srv")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_txt2img_images_are_sent_without_gzip(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "batch_size": 2}, headers=GZIP)
    assert r.status_code == 200, r.text
    assert "content-encoding" not in r.headers and r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(r.content) > 1000
    body = json.loads(r.content)
    assert list(body) == ["images", "parameters", "info"]
    assert [_image(b).size for b in body["images"]] == [(64, 64), (64, 64)]
    assert _image(body["images"][0]).info["parameters"] == json.loads(body["info"])["infotexts"][0]
    assert body["parameters"]["prompt"] == "a red fox"


def test_extras_images_are_sent_without_gzip(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
    r = client.post("/sdapi/v1/extra-single-image", headers=GZIP,
                    json={"image": base64.b64encode(buf.getvalue()).decode(), "upscaling_resize": 2,
                          "upscaler_1": "Lanczos"})
    assert r.status_code == 200, r.text
    assert "content-encoding" not in r.headers
    assert _image(r.json()["image"]).size == (64, 64)


def test_other_routes_are_still_gzipped(client: TestClient) -> None:
    r = client.get("/sdapi/v1/options", headers=GZIP)
    assert r.status_code == 200 and r.headers.get("content-encoding") == "gzip"
    assert "sd_model_checkpoint" in r.json()
