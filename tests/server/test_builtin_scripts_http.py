"""A1111's built-in always-on scripts and the sampler options A1111 applies, over HTTP (in-process app, real
worker, built-in model): every built-in title with A1111's default args is a 200 and changes nothing; the
UI-only ones are checked; Extra options feeds override_settings; prompt comments are stripped; eta_ancestral,
eta_ddim and the s_* options act with A1111's precedence; Soft Inpainting changes the inpainted blend."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import ServerConfig

SMALL = {"prompt": "a red fox", "steps": 4, "width": 64, "height": 64, "seed": 1234}
# A1111 v1.10's built-in always-on entries with the defaults its UI sends
TXT2IMG_DEFAULTS = {
    "Refiner": {"args": [False, "", 0.8]},
    "Seed": {"args": [-1, False, -1, 0, 0, 0]},
    "Sampler": {"args": [20, "DPM++ 2M", "Automatic"]},
    "Comments": {"args": []},
    "Extra options": {"args": []},
}
IMG2IMG_DEFAULTS = {**TXT2IMG_DEFAULTS, "Soft Inpainting": {"args": [False, 1, 0.5, 4, 0, 0.5, 2]}}
SOFT_ON = {"Soft Inpainting": {"args": [True, 1, 0.5, 4, 0, 0.5, 2]}}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("srv")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


def _b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def txt2img(client: TestClient, **fields) -> dict:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
    assert r.status_code == 200, r.text
    body = r.json()
    return {"image": body["images"][0], "info": json.loads(body["info"])}


def infotext(out: dict) -> str:
    return out["info"]["infotexts"][0]


# -- the built-in titles ----------------------------------------------------------------------------

def test_every_builtin_title_with_its_defaults_is_a_200_and_changes_nothing(client: TestClient) -> None:
    plain = txt2img(client)
    with_all = txt2img(client, alwayson_scripts=TXT2IMG_DEFAULTS)
    assert with_all["image"] == plain["image"]
    src = _b64(Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)))
    mask = Image.new("L", (64, 64))
    mask.paste(255, (16, 16, 48, 48))
    body = {**SMALL, "init_images": [src], "mask": _b64(mask), "denoising_strength": 0.6}
    a = client.post("/sdapi/v1/img2img", json=body)
    b = client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": IMG2IMG_DEFAULTS})
    assert a.status_code == 200 and b.status_code == 200, b.text
    assert a.json()["images"][0] == b.json()["images"][0]
    names = client.get("/sdapi/v1/scripts").json()
    for title in IMG2IMG_DEFAULTS:
        assert title.lower() in names["txt2img"] and title.lower() in names["img2img"]
    info = {(s["name"], s["is_img2img"]): s for s in client.get("/sdapi/v1/script-info").json()}
    soft_args = [a["value"] for a in info[("soft inpainting", True)]["args"]]
    assert soft_args == [False, 1.0, 0.5, 4.0, 0.0, 0.5, 2.0]
    assert [a["value"] for a in info[("seed", False)]["args"]] == [-1, False, -1, 0.0, 0, 0]


def test_ui_only_scripts_do_not_override_the_payload(client: TestClient) -> None:
    plain = txt2img(client)
    other = txt2img(client, alwayson_scripts={"Seed": {"args": [99, True, 5, 0.5, 0, 0]},
                                              "Sampler": {"args": [30, "Euler a", "Karras"]},
                                              "Refiner": {"args": [True, "missing.safetensors", 0.5]}})
    assert other["image"] == plain["image"]  # the payload's seed, steps and sampler count, as in A1111's API


@pytest.mark.parametrize(("entry", "needle"), [
    ({"Seed": {"args": ["x"]}}, "Seed.args[0]"),
    ({"Sampler": {"args": [20, "Euler", "Automatic", 1]}}, "takes 3 arguments"),
    ({"Refiner": {"args": [True, "", 2]}}, "Refiner.args[2]"),
    ({"Soft Inpainting": {"args": [True, 1, 0.5, 0.5]}}, "Soft Inpainting.args[3]"),
    ({"Comments": {"args": "no"}}, "Comments"),
])
def test_bad_builtin_args_are_a_400_naming_them(client: TestClient, entry: dict, needle: str) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": entry})
    assert r.status_code in (400, 422) and needle in r.text, r.text


def test_soft_inpainting_is_an_img2img_script(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": SOFT_ON})
    assert r.status_code == 400 and "img2img" in r.text


def test_extra_options_values_become_override_settings(client: TestClient) -> None:
    plain = txt2img(client)
    assert client.post("/sdapi/v1/options", json={"extra_options_txt2img": ["CLIP_stop_at_last_layers"]}
                       ).status_code == 200
    try:
        via_script = txt2img(client, alwayson_scripts={"Extra options": {"args": [2]}})
        via_override = txt2img(client, override_settings={"CLIP_stop_at_last_layers": 2})
        payload_wins = txt2img(client, alwayson_scripts={"Extra options": {"args": [2]}},
                               override_settings={"CLIP_stop_at_last_layers": 1})
        r = client.post("/sdapi/v1/txt2img",
                        json={**SMALL, "alwayson_scripts": {"Extra options": {"args": [2, 3]}}})
    finally:
        client.post("/sdapi/v1/options", json={"extra_options_txt2img": []})
    assert "Clip skip: 2" in infotext(via_script) and via_script["image"] == via_override["image"]
    assert via_script["image"] != plain["image"]
    assert payload_wins["image"] == plain["image"]
    assert r.status_code == 400 and "extra_options_txt2img" in r.text
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1  # the job left no trace


# -- prompt comments --------------------------------------------------------------------------------

def test_prompt_comments_are_stripped_as_a1111_does(client: TestClient) -> None:
    commented = txt2img(client, prompt="a cat # on fire", negative_prompt="# a whole line\nblurry")
    stripped = txt2img(client, prompt="a cat \n", negative_prompt="\nblurry")
    kept = txt2img(client, prompt="a cat # on fire", negative_prompt="# a whole line\nblurry",
                   override_settings={"enable_prompt_comments": False})
    assert commented["image"] == stripped["image"]
    assert kept["image"] != commented["image"]
    assert "on fire" not in infotext(commented) and "a whole line" not in infotext(commented)
    assert commented["info"]["prompt"] == "a cat # on fire"  # the request's text, as A1111 reports it


# -- sampler options ----------------------------------------------------------------------------------

def test_eta_ancestral_option_is_the_default_eta_of_ancestral_samplers(client: TestClient) -> None:
    base = {"sampler_name": "Euler a"}
    plain = txt2img(client, **base)
    by_option = txt2img(client, **base, override_settings={"eta_ancestral": 0.5})
    by_field = txt2img(client, **base, eta=0.5)
    field_wins = txt2img(client, **base, eta=1.0, override_settings={"eta_ancestral": 0.5})
    assert by_option["image"] != plain["image"] and by_option["image"] == by_field["image"]
    assert field_wins["image"] == plain["image"]
    assert "Eta: 0.5" in infotext(by_option) and "Eta" not in infotext(plain)


def test_eta_ddim_option_is_the_default_eta_of_ddim(client: TestClient) -> None:
    base = {"sampler_name": "DDIM"}
    plain = txt2img(client, **base)
    by_option = txt2img(client, **base, override_settings={"eta_ddim": 0.7})
    by_field = txt2img(client, **base, eta=0.7)
    assert by_option["image"] != plain["image"] and by_option["image"] == by_field["image"]
    assert "Eta DDIM: 0.7" in infotext(by_option)
    # eta_ancestral is not DDIM's option
    assert txt2img(client, **base, override_settings={"eta_ancestral": 0.3})["image"] == plain["image"]


def test_sigma_options_take_precedence_over_the_payload_as_in_a1111(client: TestClient) -> None:
    base = {"sampler_name": "Euler"}
    plain = txt2img(client, **base)
    option_only = txt2img(client, **base, override_settings={"s_churn": 0.4})
    field_only = txt2img(client, **base, s_churn=0.4)
    assert option_only["image"] != plain["image"] and option_only["image"] == field_only["image"]
    # an option away from its default wins over the request; at its default the request's value counts
    option_wins = txt2img(client, **base, s_churn=2.0, override_settings={"s_churn": 0.4})
    assert option_wins["image"] == option_only["image"]
    assert "Sigma churn: 0.4" in infotext(option_wins)
    noise_option = txt2img(client, **base, s_churn=0.4, s_noise=1.0, override_settings={"s_noise": 0.5})
    noise_field = txt2img(client, **base, s_churn=0.4, s_noise=0.5)
    assert noise_option["image"] == noise_field["image"] != option_only["image"]


# -- Soft Inpainting ----------------------------------------------------------------------------------

def _inpaint_body(**extra) -> dict:
    rng = np.random.default_rng(3)
    src = Image.fromarray((rng.random((128, 128, 3)) * 255).astype(np.uint8))
    mask = Image.new("L", (128, 128))
    mask.paste(255, (48, 48, 80, 80))
    return {**SMALL, "width": 128, "height": 128, "init_images": [_b64(src)], "mask": _b64(mask),
            "denoising_strength": 0.75,
            "inpaint_full_res": False, "mask_blur": 4, **extra}


def test_soft_inpainting_changes_the_inpainted_blend_and_says_so(client: TestClient) -> None:
    hard = client.post("/sdapi/v1/img2img", json=_inpaint_body())
    soft = client.post("/sdapi/v1/img2img", json=_inpaint_body(alwayson_scripts=SOFT_ON))
    assert hard.status_code == 200 and soft.status_code == 200, soft.text
    a, b = _img(hard.json()["images"][0]), _img(soft.json()["images"][0])
    assert np.abs(a - b).mean() > 0.5
    text = json.loads(soft.json()["info"])["infotexts"][0]
    for key in ("Soft inpainting enabled: True", "Soft inpainting schedule bias: 1.0",
                "Soft inpainting preservation strength: 0.5",
                "Soft inpainting transition contrast boost: 4.0",
                "Soft inpainting mask influence: 0.0", "Soft inpainting difference threshold: 0.5",
                "Soft inpainting difference contrast: 2.0"):
        assert key in text
    assert "Soft inpainting" not in json.loads(hard.json()["info"])["infotexts"][0]
    # far outside the mask (beyond the two 5x5 latent filters and the blur) the original is kept
    src = _img(_inpaint_body()["init_images"][0])
    assert np.abs(b[:8, :8] - src[:8, :8]).max() <= 2
    # the soft composite takes the result in a wider, graded band around the mask than the hard one
    ring = np.zeros((128, 128), bool)
    ring[36:92, 36:92] = True
    ring[48:80, 48:80] = False
    assert np.abs(b - src)[ring].mean() > np.abs(a - src)[ring].mean()
    # deterministic
    again = client.post("/sdapi/v1/img2img", json=_inpaint_body(alwayson_scripts=SOFT_ON))
    assert again.json()["images"][0] == soft.json()["images"][0]


def test_soft_inpainting_without_a_mask_changes_nothing(client: TestClient) -> None:
    body = _inpaint_body()
    body.pop("mask")
    plain = client.post("/sdapi/v1/img2img", json=body).json()
    soft = client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": SOFT_ON}).json()
    assert plain["images"][0] == soft["images"][0]
    assert "Soft inpainting" not in json.loads(soft["info"])["infotexts"][0]


@pytest.mark.parametrize("extra", [{"inpaint_full_res": True, "inpaint_full_res_padding": 8},
                                   {"batch_size": 2, "n_iter": 2}])
def test_soft_inpainting_in_only_masked_and_batches(client: TestClient, extra: dict) -> None:
    body = _inpaint_body(**extra)
    hard = client.post("/sdapi/v1/img2img", json=body)
    soft = client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": SOFT_ON})
    assert hard.status_code == 200 and soft.status_code == 200, soft.text
    src = _img(body["init_images"][0])
    for h, s in zip(hard.json()["images"], soft.json()["images"], strict=True):
        a, b = _img(h), _img(s)
        assert a.shape == b.shape == src.shape
        assert np.abs(b[:8, :8] - src[:8, :8]).max() <= 2  # outside the crop box / far away: the original
        assert np.abs(a - b).mean() > 0.1
