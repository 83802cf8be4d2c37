"""The Extras endpoints and hires fix over HTTP with a real (tiny, random-weight) ESRGAN model file:
what webuiapi sends, what comes back, and a clear 400 naming the item for every kind of bad input."""
from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from server.app import create_app
from server.config import ServerConfig
from tests.server.livesrv import write_tiny_esrgan


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("extras")
    write_tiny_esrgan(root / "models", "Tiny ESRGAN 4x.safetensors")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "out",
                       extensions_dir=None, max_pixels=1024 * 1024)
    with TestClient(create_app(cfg)) as c:
        yield c


def png_b64(img: Image.Image, text: dict[str, str] | None = None, data_url: bool = True) -> str:
    meta = PngInfo()
    for k, v in (text or {}).items():
        meta.add_text(k, v)
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=meta)
    b64 = base64.b64encode(buf.getvalue()).decode()
    return "data:image/png;base64," + b64 if data_url else b64


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def photo(w: int, h: int) -> Image.Image:
    from skimage import data
    return Image.fromarray(data.astronaut()).resize((w, h), Image.Resampling.LANCZOS)


def test_upscalers_list_the_model_file_with_its_real_scale(client: TestClient) -> None:
    items = client.get("/sdapi/v1/upscalers").json()
    assert [i["name"] for i in items][:3] == ["None", "Lanczos", "Nearest"]
    tiny = next(i for i in items if i["name"] == "Tiny ESRGAN 4x")
    assert tiny["scale"] == 4 and tiny["model_path"].endswith("Tiny ESRGAN 4x.safetensors")
    modes = client.get("/sdapi/v1/latent-upscale-modes").json()
    assert [m["name"] for m in modes] == ["Latent", "Latent (antialiased)", "Latent (bicubic)",
                                          "Latent (bicubic antialiased)", "Latent (nearest)",
                                          "Latent (nearest-exact)"]


def test_single_image_keeps_metadata_and_reports_html_info(client: TestClient) -> None:
    src = png_b64(photo(60, 44), {"parameters": "a cat\nSteps: 20, Seed: 1, Size: 60x44"})
    r = client.post("/sdapi/v1/extra-single-image", json={
        "image": src, "upscaler_1": "tiny_esrgan_4x", "upscaling_resize": 2, "resize_mode": 0,
        "show_extras_results": True, "gfpgan_visibility": 0, "codeformer_visibility": 0,
        "codeformer_weight": 0, "upscaling_resize_w": 512, "upscaling_resize_h": 512, "upscaling_crop": True,
        "upscaler_2": "None", "extras_upscaler_2_visibility": 0, "upscale_first": False})
    assert r.status_code == 200, r.text
    body = r.json()
    out = decode(body["image"])
    assert out.size == (120, 88)  # floor(60*2/8)*8 x floor(44*2/8)*8
    assert out.info["parameters"] == "a cat\nSteps: 20, Seed: 1, Size: 60x44"
    assert out.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: Tiny ESRGAN 4x"
    assert body["html_info"] == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Tiny ESRGAN 4x</p>"


def test_batch_keeps_order_and_resize_to_crops_centred(client: TestClient) -> None:
    a, b = photo(64, 48), photo(40, 40)
    r = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": png_b64(a), "name": "image00001"}, {"data": png_b64(b, data_url=False),
                                                                   "name": "image00002"}],
        "resize_mode": 1, "upscaling_resize_w": 96, "upscaling_resize_h": 96, "upscaling_crop": True,
        "upscaler_1": "Lanczos"})
    assert r.status_code == 200, r.text
    outs = [decode(x) for x in r.json()["images"]]
    assert [o.size for o in outs] == [(96, 96), (96, 96)]
    assert "Postprocess crop to: 96x96" in r.json()["html_info"]


def test_upscaler_none_means_no_resize(client: TestClient) -> None:
    r = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(photo(50, 30)), "upscaler_1": "None",
                                                          "upscaling_resize": 4})
    assert r.status_code == 200 and decode(r.json()["image"]).size == (50, 30)


def _bomb_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("data, words", [
    (base64.b64encode(b"definitely not an image").decode(), ["imageList[1]"]),
    (png_b64(photo(32, 32), data_url=False)[:200], ["imageList[1]"]),
    (base64.b64encode(_bomb_png()).decode(), ["imageList[1]", "10000000000 pixels"]),
    ("http://127.0.0.1:9/cat.png", ["imageList[1]", "api_forbid_local_requests"]),
])
def test_bad_batch_item_is_named(client: TestClient, data: str, words: list[str]) -> None:
    r = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": png_b64(photo(16, 16)), "name": "ok"}, {"data": data, "name": "bad"}],
        "upscaler_1": "Lanczos"})
    assert r.status_code == 400, r.text
    for w in words:
        assert w in r.json()["detail"]


@pytest.mark.parametrize("patch, words", [
    ({"upscaler_1": "R-ESRGAN 4x+"}, ["R-ESRGAN 4x+", "Tiny ESRGAN 4x", "Lanczos"]),
    ({"upscaler_1": "Lanczos", "upscaling_resize": 100}, ["1048576"]),
    ({"upscaler_1": "Lanczos", "gfpgan_visibility": 0.5}, ["GFPGAN"]),
])
def test_bad_requests_fail_before_any_work(client: TestClient, patch: dict, words: list[str]) -> None:
    r = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(photo(32, 32)), **patch})
    assert r.status_code == 400, r.text
    for w in words:
        assert w in r.json()["detail"]


def test_hires_fix_uses_the_model_file(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={
        "prompt": "a lighthouse", "steps": 3, "width": 64, "height": 64, "seed": 7, "enable_hr": True,
        "hr_upscaler": "Tiny ESRGAN 4x", "hr_scale": 2, "hr_second_pass_steps": 2, "denoising_strength": 0.5})
    assert r.status_code == 200, r.text
    img = decode(r.json()["images"][0])
    assert img.size == (128, 128)
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Hires upscaler: Tiny ESRGAN 4x" in text and "Hires steps: 2" in text


def test_extras_progress_is_idle_afterwards(client: TestClient) -> None:
    p = client.get("/sdapi/v1/progress").json()
    assert p["progress"] == 0 and p["state"]["job_count"] == 0
    assert Path  # noqa: B018
