"""Ultimate SD Upscale against a real `python -m server` through webuiapi, with the positional script_args
users copy from the extension's README (upscaler by index into /sdapi/v1/upscalers, here a tiny 4x ESRGAN
file): 4x-sized answers, the second image of a seam fix, /script-info, and the 400s for bad args."""
from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.server.livesrv import LiveServer, write_tiny_esrgan


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    server = LiveServer(tmp_path_factory.mktemp("live-usdu"))
    write_tiny_esrgan(server.models)
    server.start().wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(srv: LiveServer) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=srv.port, sampler="Euler a", steps=2)


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def usdu_args(upscaler: int | str, tile: int = 64, seams_fix_type: int = 0, target: int = 2,
              scale: float = 4) -> list:
    # [info, tile_width, tile_height, mask_blur, padding, seams_fix_width, seams_fix_denoise,
    #  seams_fix_padding, upscaler_index, save_upscaled_image, redraw_mode, save_seams_fix_image,
    #  seams_fix_mask_blur, seams_fix_type, target_size_type, custom_width, custom_height, custom_scale]
    return [None, tile, 0, 8, 32, 64, 0.35, 32, upscaler, True, 0, False, 8, seams_fix_type, target, 2048,
            2048, scale]


def test_webuiapi_usdu_4x_with_a_model_by_index(api: webuiapi.WebUIApi) -> None:
    names = [u["name"] for u in api.get_upscalers()]
    index = names.index("4x-Tiny")  # None, Lanczos, Nearest, then the model files: as the extension indexes
    r = api.img2img(images=[noise(32, 32, seed=1)], prompt="a harbour", seed=5, denoising_strength=0.3,
                    script_name="ultimate sd upscale", script_args=usdu_args(index))
    assert len(r.images) == 1 and r.image.size == (128, 128)  # scale 4 from 32x32, 2x2 tiles of 64
    text = r.info["infotexts"][0]
    assert "Ultimate SD upscale upscaler: 4x-Tiny" in text and "Ultimate SD upscale tile_width: 64" in text
    assert "Size: 128x128" in text and r.info["all_seeds"] == [5]


def test_webuiapi_usdu_seam_fix_answers_two_images(api: webuiapi.WebUIApi) -> None:
    r = api.img2img(images=[noise(64, 48, seed=2)], prompt="a harbour", width=128, height=96, seed=6,
                    denoising_strength=0.3, script_name="Ultimate SD upscale",
                    script_args=usdu_args("Lanczos", tile=64, seams_fix_type=3, target=0))
    assert [im.size for im in r.images] == [(128, 96), (128, 96)]  # target type 0: the request's size
    assert len(r.info["infotexts"]) == 2


def test_the_extension_readme_payload(srv: LiveServer) -> None:
    # the API example of the extension's README, verbatim, on a 128x128 request: one 512 tile (processed at
    # 576 px), upscaler None, no seam fix
    readme_args = [None, 512, 512, 8, 32, 64, 0.35, 32, 0, True, 0, False, 8, 0, 0, 2048, 2048, 2]
    r = httpx.post(f"{srv.api}/img2img", timeout=120, json={
        "init_images": [_b64(noise(64, 64, seed=3))], "prompt": "a harbour", "steps": 2, "width": 128,
        "height": 128, "denoising_strength": 0.3, "script_name": "ultimate sd upscale",
        "script_args": readme_args})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 1
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).size == (128, 128)
    assert "Ultimate SD upscale tile_width: 512" in json.loads(body["info"])["infotexts"][0]


def test_script_info_and_bad_args(srv: LiveServer) -> None:
    infos = {i["name"]: i for i in httpx.get(f"{srv.api}/script-info", timeout=30).json()}
    usdu = infos["ultimate sd upscale"]
    assert usdu["is_img2img"] is True and usdu["is_alwayson"] is False and len(usdu["args"]) == 18
    assert usdu["args"][8]["choices"][:3] == ["None", "Lanczos", "Nearest"]
    assert usdu["args"][10]["choices"] == ["Linear", "Chess", "None"] and usdu["args"][1]["value"] == 512

    def post(script_name: str, script_args: list) -> httpx.Response:
        return httpx.post(f"{srv.api}/img2img", timeout=60, json={
            "init_images": [_b64(noise(32, 32))], "steps": 2, "width": 64, "height": 64,
            "script_name": script_name, "script_args": script_args})

    r = post("ultimate sd upscale", usdu_args(0) + ["extra"])
    assert r.status_code == 400 and "takes 18 arguments" in r.json()["detail"]
    r = post("ultimate sd upscale", usdu_args(99))
    assert r.status_code == 400 and "script_args[8]: upscaler_index index 99" in r.json()["detail"]
    r = post("ultimate sd upscale", ["", "512"])
    assert r.status_code == 400 and "script_args[1]: tile_width must be a whole number" in r.json()["detail"]
    r = post("loopback", [])
    assert r.status_code == 400 and "'sd upscale'" in r.json()["detail"] and "'ultimate sd upscale'" in r.text


def _b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()
