"""LDSR over HTTP from a folder named by `--ldsr-models-path`, as A1111 users point us at theirs: listed,
upscaling through Extras and as hires fix's `hr_upscaler` at A1111's sizes, with `ldsr_steps` checked."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import from_args
from tests.fixtures.ldsr import tiny_ldsr_state, write_ldsr

API = "/sdapi/v1"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("ldsr_http")
    write_ldsr(root / "a1111" / "models" / "LDSR", tiny_ldsr_state())
    cfg = from_args(["--models-dir", str(root / "models"), "--data-dir", str(root / "data"),
                     "--outputs-dir", str(root / "out"), "--disable-all-extensions"],
                    environ={"COMMANDLINE_ARGS": f"--ldsr-models-path {root / 'a1111' / 'models' / 'LDSR'}"})
    with TestClient(create_app(cfg)) as c:
        yield c


def b64png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_listed_from_the_flagged_folder(client: TestClient) -> None:
    items = {i["name"]: i for i in client.get(f"{API}/upscalers").json()}
    assert items["LDSR"]["scale"] == 4.0 and items["LDSR"]["model_path"].endswith("model.ckpt")
    assert client.get(f"{API}/cmd-flags").json()["ldsr_models_path"].endswith("LDSR")
    assert client.get(f"{API}/options").json()["ldsr_steps"] == 100


def test_ldsr_steps_out_of_range_is_a_4xx_naming_it(client: TestClient) -> None:
    r = client.post(f"{API}/options", json={"ldsr_steps": 0})
    assert 400 <= r.status_code < 500 and "ldsr_steps" in r.text
    r = client.post(f"{API}/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                            "override_settings": {"ldsr_steps": 201}})
    assert 400 <= r.status_code < 500 and "ldsr_steps" in r.text


def test_extras_upscales_with_ldsr_at_a1111s_size(client: TestClient) -> None:
    assert client.post(f"{API}/options", json={"ldsr_steps": 1}).status_code == 200
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (30, 44, 3), dtype=np.uint8))
    r = client.post(f"{API}/extra-single-image", json={"image": b64png(image), "upscaler_1": "LDSR",
                                                        "upscaling_resize": 3})
    assert r.status_code == 200, r.text
    out = decode(r.json()["image"])
    assert out.size == (128, 88)  # floor(44*3/8)*8 x floor(30*3/8)*8
    assert out.info["postprocessing"] == "Postprocess upscale by: 3.0, Postprocess upscaler: LDSR"
    assert np.asarray(out.convert("RGB")).std() > 5


def test_hires_fix_with_ldsr(client: TestClient) -> None:
    r = client.post(f"{API}/txt2img", json={
        "prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 7, "enable_hr": True,
        "hr_upscaler": "LDSR", "hr_scale": 1.5, "hr_second_pass_steps": 1, "denoising_strength": 0.5,
        "override_settings": {"ldsr_steps": 1}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert decode(body["images"][0]).size == (96, 96)
    assert "Hires upscaler: LDSR" in body["info"]


def test_sd_upscale_script_with_ldsr(client: TestClient) -> None:
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    r = client.post(f"{API}/img2img", json={
        "init_images": [b64png(image)], "prompt": "a wall", "steps": 2, "width": 80, "height": 64, "seed": 3,
        "denoising_strength": 0.3, "script_name": "sd upscale", "script_args": ["", 16, "LDSR", 2.0],
        "override_settings": {"ldsr_steps": 1}})
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]).size == (160, 128)


def test_ultimate_sd_upscale_with_ldsr(client: TestClient) -> None:
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    # [info, tile_width, tile_height, mask_blur, padding, seams_fix_width, seams_fix_denoise,
    #  seams_fix_padding, upscaler, save_upscaled_image, redraw_mode, save_seams_fix_image,
    #  seams_fix_mask_blur, seams_fix_type, target_size_type, custom_width, custom_height, custom_scale]
    args = [None, 64, 0, 8, 32, 64, 0.35, 32, "LDSR", False, 0, False, 8, 0, 2, 2048, 2048, 2]
    r = client.post(f"{API}/img2img", json={
        "init_images": [b64png(image)], "prompt": "a harbour", "steps": 2, "seed": 5,
        "denoising_strength": 0.3,
        "script_name": "ultimate sd upscale", "script_args": args, "override_settings": {"ldsr_steps": 1}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert decode(body["images"][0]).size == (64, 64)
    assert "Ultimate SD upscale upscaler: LDSR" in json.loads(body["info"])["infotexts"][0]
