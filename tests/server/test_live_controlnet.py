"""ControlNet through a live server and webuiapi's `ControlNetUnit` (the client most API users call it
with): support detected from /sdapi/v1/scripts, units in txt2img (with hires) and img2img, the
/controlnet endpoints, against tiny ControlNet files in both layouts."""

from __future__ import annotations

import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.fixtures.controlnets import build_tiny_controlnet, write_diffusers, write_ldm
from tests.fixtures.tinymodels import build_tiny_sd1
from tests.server.livesrv import LiveServer


def _edges() -> Image.Image:
    a = np.zeros((64, 64, 3), np.uint8)
    a[16:48, 16] = a[16:48, 47] = a[16, 16:48] = a[47, 16:48] = 255
    return Image.fromarray(a)


def _photo() -> Image.Image:
    a = np.full((64, 64, 3), 40, np.uint8)
    a[16:48, 16:48] = (220, 200, 30)
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("live-cn")
    server = LiveServer(root)
    sd1 = build_tiny_sd1(tmp_path_factory.mktemp("live-cn-build"), seed=7)
    sd1.write_safetensors(server.models / "Stable-diffusion" / "tiny-sd1.safetensors")
    net = build_tiny_controlnet(sd1.unet, seed=50)
    write_ldm(net, server.models / "ControlNet" / "control_v11p_sd15_canny.pth")
    write_diffusers(net, server.models / "ControlNet" / "diffusers_sd15_canny.safetensors")
    server.start().wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(srv: LiveServer) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=srv.port, sampler="Euler", steps=3)


def test_webuiapi_detects_controlnet_and_lists_models(api: webuiapi.WebUIApi) -> None:
    api.get_scripts()
    assert api.has_controlnet
    assert api.controlnet_version() == 3
    models = api.controlnet_model_list()
    assert sorted(m.split(" [")[0] for m in models) == ["control_v11p_sd15_canny", "diffusers_sd15_canny"]
    assert "canny" in api.controlnet_module_list()


def test_txt2img_with_controlnet_units_and_hires(api: webuiapi.WebUIApi) -> None:
    plain = api.txt2img(prompt="a fox", width=64, height=64, seed=5, cfg_scale=5)
    assert len(plain.images) == 1  # webuiapi sends ControlNet with no unit: nothing changes
    unit = webuiapi.ControlNetUnit(
        image=_edges(), module="canny", model="control_v11p_sd15_canny", control_mode=2
    )
    r = api.txt2img(prompt="a fox", width=64, height=64, seed=5, cfg_scale=5, controlnet_units=[unit])
    assert len(r.images) == 2 and r.images[1].size == (64, 64)
    assert np.abs(np.asarray(r.images[0], np.int16) - np.asarray(plain.images[0], np.int16)).mean() > 1
    assert 'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [' in r.info["infotexts"][0]
    hires = api.txt2img(
        prompt="a fox",
        width=64,
        height=64,
        seed=5,
        enable_hr=True,
        hr_scale=1.5,
        denoising_strength=0.5,
        controlnet_units=[
            unit,
            webuiapi.ControlNetUnit(image=_photo(), model="diffusers_sd15_canny", hr_option="High res only"),
        ],
    )
    assert [i.size for i in hires.images] == [(96, 96), (96, 96), (64, 64), (96, 96), (64, 64)]


def test_img2img_unit_without_image_and_detect(api: webuiapi.WebUIApi) -> None:
    unit = webuiapi.ControlNetUnit(module="invert", model="control_v11p_sd15_canny", weight=0.8)
    r = api.img2img(
        images=[_photo()],
        prompt="a fox",
        width=64,
        height=64,
        seed=5,
        denoising_strength=0.6,
        controlnet_units=[unit],
    )
    assert len(r.images) == 2
    assert np.asarray(r.images[1])[32, 32].tolist() == [35, 55, 225]  # 255 - the init image's colour
    d = api.controlnet_detect([_photo()], module="canny", processor_res=64, threshold_a=100, threshold_b=200)
    assert d.info == "Success" and len(d.images) == 1
    edges = np.asarray(d.images[0])
    assert d.images[0].size == (64, 64) and set(np.unique(edges)) == {0, 255}
