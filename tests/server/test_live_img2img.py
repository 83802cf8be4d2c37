"""img2img and inpainting against a real `python -m server`: webuiapi's `img2img` with and without
`mask_image`, a Photoshop-plugin style inpaint payload (data: URLs, UI values, fields of its own), and the
A1111 answers for bad input."""
from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.server.livesrv import LiveServer


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    server = LiveServer(tmp_path_factory.mktemp("live-img2img"))
    server.start().wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(srv: LiveServer) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=srv.port, sampler="Euler a", steps=4)


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def box_mask(w: int, h: int, box: tuple[int, int, int, int]) -> Image.Image:
    m = Image.new("L", (w, h))
    m.paste(255, box)
    return m


def data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_webuiapi_img2img(api: webuiapi.WebUIApi) -> None:
    src = noise(96, 64)
    r = api.img2img(images=[src], prompt="a watercolour harbour", width=64, height=64, seed=5,
                    denoising_strength=0.5, steps=4)
    assert r.image.size == (64, 64)
    assert r.info["all_seeds"] == [5] and r.info["denoising_strength"] == 0.5
    assert "Denoising strength: 0.5" in r.info["infotexts"][0]
    assert r.parameters["init_images"] is None  # include_init_images false, as A1111
    again = api.img2img(images=[src], prompt="a watercolour harbour", width=64, height=64, seed=5,
                        denoising_strength=0.5, steps=4)
    assert np.array_equal(np.asarray(r.image), np.asarray(again.image))


def test_webuiapi_inpaint_keeps_unmasked_pixels(api: webuiapi.WebUIApi) -> None:
    src = noise(128, 96, seed=1)
    mask = box_mask(128, 96, (80, 30, 110, 60))
    r = api.img2img(images=[src], mask_image=mask, prompt="a red door", width=64, height=64, seed=7,
                    denoising_strength=0.9, mask_blur=0, inpainting_fill=1, inpaint_full_res=True)
    assert r.image.size == (128, 96)  # only masked: pasted back at the input's size
    out, orig = np.asarray(r.image.convert("RGB"), np.int16), np.asarray(src, np.int16)
    keep = np.ones((96, 128), bool)
    keep[30:60, 80:110] = False
    assert (out[keep] == orig[keep]).all()
    assert np.abs(out[32:58, 82:108] - orig[32:58, 82:108]).mean() > 10
    assert "Inpaint area: Only masked" in r.info["infotexts"][0]


def test_webuiapi_sd_upscale(api: webuiapi.WebUIApi) -> None:
    r = api.img2img(images=[noise(64, 48, seed=4)], prompt="a harbour", width=64, height=64, seed=3, steps=2,
                    denoising_strength=0.3, script_name="sd upscale", script_args=["", 16, "Lanczos", 2.0])
    assert len(r.images) == 1 and r.image.size == (128, 96)
    assert "SD upscale upscaler: Lanczos" in r.info["infotexts"][0]
    with pytest.raises(RuntimeError, match="script_args"):  # webuiapi raises on a non-200 answer
        api.img2img(images=[noise(64, 48)], width=64, height=64, steps=2, script_name="sd upscale",
                    script_args=["", 16, "Lanczos", 2.0, "extra"])


def test_photoshop_plugin_style_inpaint(srv: LiveServer) -> None:
    src = noise(64, 64, seed=2)
    payload = {
        "prompt": "a cat", "negative_prompt": "", "init_images": [data_url(src)],
        "mask": data_url(box_mask(64, 64, (16, 16, 48, 48)).convert("RGB")), "denoising_strength": 0.7,
        "steps": 3, "width": 64, "height": 64, "cfg_scale": 7, "seed": 3, "sampler_index": "Euler a",
        "batch_size": 1, "n_iter": 1, "mask_blur": 4, "inpainting_fill": 1, "inpaint_full_res": False,
        "inpaint_full_res_padding": 32, "inpainting_mask_invert": 0, "resize_mode": 0, "restore_faces": False,
        "alwayson_scripts": {}, "script_args": [], "include_init_images": True,
        # the plugin's own bookkeeping fields, ignored as A1111 ignores them
        "mode": "inpaint", "selection_info": {"left": 0, "top": 0}, "use_sharp_mask": False, "mask_expansion": 0,
    }
    r = httpx.post(f"{srv.api}/img2img", json=payload, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info"}
    assert body["parameters"]["init_images"] == payload["init_images"]  # include_init_images true
    info = json.loads(body["info"])
    assert "Mask blur: 4" in info["infotexts"][0] and "Masked content" not in info["infotexts"][0]
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("RGB"), np.int16)
    assert (out[:4] == np.asarray(src, np.int16)[:4]).all()


def test_bad_input_is_a_clear_4xx_before_work(srv: LiveServer) -> None:
    def post(payload: dict) -> httpx.Response:
        return httpx.post(f"{srv.api}/img2img", json={"steps": 2, "width": 64, "height": 64, **payload},
                          timeout=60)

    r = post({})
    assert r.status_code == 404 and r.json()["detail"] == "Init image not found"
    assert post({"init_images": []}).status_code == 404
    r = post({"init_images": ["bm90IGFuIGltYWdl"]})
    assert r.status_code == 400 and "init_images[0]" in r.json()["detail"]
    img = data_url(noise(64, 64))
    r = post({"init_images": [img], "mask": "bm90IGFuIGltYWdl"})
    assert r.status_code == 400 and "mask" in r.json()["detail"]
    r = post({"init_images": [img], "mask": data_url(box_mask(64, 32, (0, 0, 8, 8)))})
    assert r.status_code == 400 and "64x32" in r.json()["detail"] and "64x64" in r.json()["detail"]
    assert post({"init_images": [img], "resize_mode": 4}).status_code == 422
    assert post({"init_images": [img], "inpaint_full_res_padding": -1}).status_code == 422
    r = post({"init_images": [img, img], "batch_size": 1})
    assert r.status_code == 400 and "batch_size" in r.json()["detail"]
    r = post({"init_images": [img], "latent_mask": img})
    assert r.status_code == 400 and "latent_mask" in r.json()["detail"]
    r = post({"init_images": [img], "sampler_name": "Nope"})
    assert r.status_code == 400
    r = post({"init_images": [img], "steps": 500})
    assert r.status_code == 400 and "--max-steps" in r.json()["detail"]
