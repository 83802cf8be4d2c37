"""T2I-Adapter (and ControlLoRA) units over HTTP (in-process app, real worker) against tiny real-architecture adapters the
test writes into `models/ControlNet/` the way users keep them: TencentARC's layout (.safetensors and
.pth) and the diffusers layout, for a tiny SD 1.x and a tiny SDXL checkpoint."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import ServerConfig
from tests.fixtures.controlnets import build_tiny_adapter, build_tiny_control_lora, write_adapter
from tests.fixtures.tinymodels import build_tiny_sd1, build_tiny_sdxl

BASE = {
    "prompt": "a red fox",
    "steps": 3,
    "width": 64,
    "height": 64,
    "seed": 11,
    "sampler_name": "Euler",
    "cfg_scale": 5,
    "override_settings": {"sd_model_checkpoint": "tiny-sd1.safetensors"},
}
XL = {"override_settings": {"sd_model_checkpoint": "tiny-sdxl.safetensors"}}


def _b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _edges(size: int = 64) -> Image.Image:
    a = np.zeros((size, size, 3), np.uint8)
    a[16:48, 16] = a[16:48, 47] = a[16, 16:48] = a[47, 16:48] = 255
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("t2ia-srv")
    work = tmp_path_factory.mktemp("t2ia-build")
    models = root / "models"
    sd1 = build_tiny_sd1(work, seed=7)
    sd1.write_safetensors(models / "Stable-diffusion" / "tiny-sd1.safetensors")
    xl = build_tiny_sdxl(work)
    xl.write_safetensors(models / "Stable-diffusion" / "tiny-sdxl.safetensors")
    net = build_tiny_adapter(sd1.unet, "sd1", seed=72)
    write_adapter(net, models / "ControlNet" / "t2iadapter_canny_sd14v1.pth", "original")
    write_adapter(net, models / "ControlNet" / "t2iadapter_canny_original.safetensors", "original")
    write_adapter(net, models / "ControlNet" / "t2i-adapter-canny-diffusers.safetensors", "diffusers")
    write_adapter(build_tiny_adapter(xl.unet, "sdxl", seed=73), models / "ControlNet" / "t2i-adapter-xl.safetensors",
                  "diffusers")
    from safetensors.torch import save_file

    save_file(build_tiny_control_lora(sd1.unet, seed=82)[1], str(models / "ControlNet" / "control-lora-tiny-rank2.safetensors"))
    cfg = ServerConfig(
        models_dir=models,
        data_dir=root / "data",
        outputs_dir=root / "outputs",
        extensions_dir=None,
        max_pixels=512 * 512,
        builtin_model=False,
    )
    with TestClient(create_app(cfg)) as c:
        yield c


def _unit(**kw) -> dict:
    return {"enabled": True, "module": "none", "model": "t2iadapter_canny_sd14v1", "image": _b64(_edges()),
            "save_detected_map": False, **kw}


def _txt2img(client: TestClient, units: list[dict] | None, **kw) -> list[str]:
    body = {**BASE, **kw}
    if units is not None:
        body["alwayson_scripts"] = {"ControlNet": {"args": units}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    return r.json()["images"]


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def test_model_list_has_the_adapters(client: TestClient) -> None:
    names = sorted(m.rsplit(" [", 1)[0] for m in client.get("/controlnet/model_list").json()["model_list"])
    assert names == ["control-lora-tiny-rank2", "t2i-adapter-canny-diffusers", "t2i-adapter-xl",
                     "t2iadapter_canny_original", "t2iadapter_canny_sd14v1"]


def test_an_adapter_changes_the_image_and_every_layout_gives_the_same_pixels(client: TestClient) -> None:
    plain = _pixels(_txt2img(client, None)[0])
    pth = _pixels(_txt2img(client, [_unit()])[0])
    original = _pixels(_txt2img(client, [_unit(model="t2iadapter_canny_original")])[0])
    diffusers = _pixels(_txt2img(client, [_unit(model="t2i-adapter-canny-diffusers")])[0])
    assert np.abs(pth - plain).mean() > 1.0
    assert (pth == original).all() and (pth == diffusers).all()


def test_weight_zero_and_guidance_end_zero_leave_the_image_identical(client: TestClient) -> None:
    plain = _pixels(_txt2img(client, None)[0])
    assert (_pixels(_txt2img(client, [_unit(weight=0)])[0]) == plain).all()
    assert (_pixels(_txt2img(client, [_unit(guidance_end=0)])[0]) == plain).all()


def test_control_modes_differ_and_weight_scales_the_effect(client: TestClient) -> None:
    plain = _pixels(_txt2img(client, None)[0])
    images = {
        mode: _pixels(_txt2img(client, [_unit(control_mode=mode)])[0])
        for mode in ("Balanced", "My prompt is more important", "ControlNet is more important")
    }
    assert len({im.tobytes() for im in images.values()}) == 3
    half = _pixels(_txt2img(client, [_unit(weight=0.3)])[0])
    assert 0 < np.abs(half - plain).mean() < np.abs(images["Balanced"] - plain).mean()


def test_hires_pass_and_an_adapter_beside_a_second_unit(client: TestClient) -> None:
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6,
             "hr_second_pass_steps": 2}
    plain = _pixels(_txt2img(client, None, **hires)[0])
    both = _txt2img(client, [_unit()], **hires)
    low = _txt2img(client, [_unit(hr_option="Low res only")], **hires)
    assert _pixels(both[0]).shape == (96, 96, 3)
    assert np.abs(_pixels(both[0]) - plain).mean() > 1.0
    assert (_pixels(both[0]) != _pixels(low[0])).any()
    two = _txt2img(client, [_unit(), _unit(model="t2i-adapter-canny-diffusers", weight=0.5)])
    one = _txt2img(client, [_unit()])
    assert (_pixels(two[0]) != _pixels(one[0])).any()


def test_sdxl_adapter_and_family_mismatch(client: TestClient) -> None:
    plain = _pixels(_txt2img(client, None, **XL)[0])
    xl = _pixels(_txt2img(client, [_unit(model="t2i-adapter-xl")], **XL)[0])
    assert np.abs(xl - plain).mean() > 1.0
    body = {**BASE, **XL, "alwayson_scripts": {"ControlNet": {"args": [_unit()]}}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 400 and "alwayson_scripts.ControlNet.args[0].model" in r.text, r.text


def test_img2img_unit_without_an_image_uses_the_init_image(client: TestClient) -> None:
    body = {**BASE, "init_images": [_b64(_edges())], "denoising_strength": 0.7}
    plain = client.post("/sdapi/v1/img2img", json=body)
    unit = _unit()
    unit.pop("image")
    adapted = client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": {"ControlNet": {"args": [unit]}}})
    assert plain.status_code == 200 and adapted.status_code == 200, adapted.text
    a, b = _pixels(plain.json()["images"][0]), _pixels(adapted.json()["images"][0])
    assert np.abs(a - b).mean() > 1.0


def test_a_control_lora_unit_changes_the_image_and_weight_zero_does_not(client: TestClient) -> None:
    plain = _pixels(_txt2img(client, None)[0])
    lora = _pixels(_txt2img(client, [_unit(model="control-lora-tiny-rank2")])[0])
    assert np.abs(lora - plain).mean() > 1.0
    assert (_pixels(_txt2img(client, [_unit(model="control-lora-tiny-rank2", weight=0)])[0]) == plain).all()
    body = {**BASE, **XL, "alwayson_scripts": {"ControlNet": {"args": [_unit(model="control-lora-tiny-rank2")]}}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 400 and "alwayson_scripts.ControlNet.args[0].model" in r.text, r.text
