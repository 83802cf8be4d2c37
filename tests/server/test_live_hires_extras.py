"""Hires fix and Extras against a real `python -m server`, through the webuiapi client and with the exact
payloads Open WebUI, SillyTavern, the Photoshop plugin and the AIYA bot send: sizes and infotexts."""
from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
import webuiapi
from PIL import Image

from tests.server.livesrv import LiveServer, write_tiny_esrgan


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    server = LiveServer(tmp_path_factory.mktemp("live-hires"))
    write_tiny_esrgan(server.models)
    server.start().wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(srv: LiveServer) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=srv.port, sampler="Euler a", steps=3)


def infotext_params(text: str) -> dict[str, str]:
    from pipeline.infotext.codec import parse_infotext
    return parse_infotext(text)


def post(srv: LiveServer, path: str, payload: dict) -> dict:
    r = httpx.post(f"{srv.api}/{path}", json=payload, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def image(b64: str) -> Image.Image:
    assert not b64.startswith("data:")
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_webuiapi_hires_latent(api: webuiapi.WebUIApi) -> None:
    r = api.txt2img(prompt="a lighthouse at dusk", width=64, height=64, seed=11, enable_hr=True, hr_scale=2,
                    hr_upscaler=webuiapi.HiResUpscaler.Latent, denoising_strength=0.5)
    assert r.image.size == (128, 128)
    p = infotext_params(r.info["infotexts"][0])
    assert (p["Size-1"], p["Size-2"]) == ("64", "64")
    assert p["Hires upscale"] == "2.0" and p["Hires upscaler"] == "Latent"
    assert p["Denoising strength"] == "0.5" and p["Sampler"] == "Euler a"
    assert r.info["width"] == 64 and r.info["all_seeds"] == [11]


def test_webuiapi_hires_with_a_model_file_and_resize_crop(api: webuiapi.WebUIApi) -> None:
    r = api.txt2img(prompt="a lighthouse", width=64, height=64, seed=12, enable_hr=True,
                    hr_upscaler="4x-Tiny", hr_resize_x=160, hr_resize_y=96, hr_second_pass_steps=2,
                    denoising_strength=0.4)
    assert r.image.size == (160, 96)  # cover to 160x160, then 8 latent rows cropped, centred
    p = infotext_params(r.info["infotexts"][0])
    assert p["Hires resize-1"] == "160" and p["Hires resize-2"] == "96"
    assert p["Hires upscaler"] == "4x-Tiny" and p["Hires steps"] == "2"


def test_open_webui_hires_payload(srv: LiveServer) -> None:
    # Open WebUI: {prompt, batch_size, width, height, steps, negative_prompt} merged with admin params
    body = post(srv, "txt2img", {"prompt": "a cat", "batch_size": 2, "width": 64, "height": 64, "steps": 3,
                                 "negative_prompt": "ugly", "enable_hr": True, "hr_scale": 1.5,
                                 "hr_upscaler": "Latent", "denoising_strength": 0.6})
    assert [image(b).size for b in body["images"]] == [(96, 96), (96, 96)]
    info = json.loads(body["info"])
    assert len(info["infotexts"]) == 2 and "Hires upscale: 1.5" in info["infotexts"][1]


def test_sillytavern_hires_payload(srv: LiveServer) -> None:
    body = post(srv, "txt2img", {
        "prompt": "a knight", "negative_prompt": "blurry", "sampler_name": "DPM++ 2M", "scheduler": "Karras",
        "steps": 3, "cfg_scale": 7, "width": 64, "height": 96, "restore_faces": False, "enable_hr": True,
        "hr_upscaler": "Latent (bicubic antialiased)", "hr_scale": 2, "hr_additional_modules": [],
        "denoising_strength": 0.5, "hr_second_pass_steps": 2, "seed": -1,
        "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic",
                              "forge_additional_modules": []},
        "override_settings_restore_afterwards": True, "clip_skip": 1, "save_images": False,
        "send_images": True, "do_not_save_grid": False, "do_not_save_samples": False})
    assert image(body["images"][0]).size == (128, 192)
    p = infotext_params(json.loads(body["info"])["infotexts"][0])
    assert p["Sampler"] == "DPM++ 2M" and p["Schedule type"] == "Karras"
    assert p["Hires upscaler"] == "Latent (bicubic antialiased)" and p["Hires steps"] == "2"


def test_photoshop_plugin_odd_factor(srv: LiveServer) -> None:
    body = post(srv, "txt2img", {"prompt": "x", "steps": 3, "width": 64, "height": 64, "enable_hr": True,
                                 "hr_scale": 2.484848484848485, "hr_upscaler": "Latent",
                                 "denoising_strength": 0.5})
    assert image(body["images"][0]).size == (152, 152)  # int(64 * 2.4848) = 159 -> 19 latent cells


def test_aiya_bot_float_hires_steps(srv: LiveServer) -> None:
    steps = 3
    body = post(srv, "txt2img", {"prompt": "x", "steps": steps, "width": 64, "height": 64, "enable_hr": True,
                                 "hr_upscaler": "Latent", "hr_scale": 1, "hr_second_pass_steps": int(steps) / 2,
                                 "denoising_strength": 0.5})
    assert "Hires steps: 1" in json.loads(body["info"])["infotexts"][0]


def test_webuiapi_extra_single_and_batch(api: webuiapi.WebUIApi) -> None:
    src = Image.new("RGB", (40, 24), (200, 30, 30))
    single = api.extra_single_image(image=src, upscaler_1="4x-Tiny", upscaling_resize=2)
    assert single.image.size == (80, 48)
    assert "Postprocess upscaler: 4x-Tiny" in single.info
    batch = api.extra_batch_images(images=[src, src.resize((16, 16))], upscaler_1="Lanczos",
                                   upscaling_resize=3)
    assert [i.size for i in batch.images] == [(120, 72), (48, 48)]


def test_webuiapi_names_with_different_spelling(api: webuiapi.WebUIApi) -> None:
    # clients hard-code names like "SwinIR_4x"; loose matching finds "4x-Tiny" from "4x_tiny"
    r = api.extra_single_image(image=Image.new("RGB", (16, 16)), upscaler_1="4x_tiny", upscaling_resize=4)
    assert r.image.size == (64, 64)


def test_unknown_hr_upscaler_is_a_clear_error(api: webuiapi.WebUIApi) -> None:
    with pytest.raises(RuntimeError) as e:
        api.txt2img(prompt="x", width=64, height=64, enable_hr=True, hr_upscaler="R-ESRGAN 4x+")
    assert "R-ESRGAN 4x+" in str(e.value) and "4x-Tiny" in str(e.value)
