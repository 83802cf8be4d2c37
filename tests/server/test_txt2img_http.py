"""txt2img and png-info over HTTP (in-process app, real worker and built-in model): the response shape,
determinism, leniency for what real clients send, and clear 4xx answers for bad input."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import ServerConfig
from tests.fixtures.alwayson import BUILTIN_ALWAYSON

SMALL = {"prompt": "a red fox", "steps": 3, "width": 64, "height": 64, "seed": 1234}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("srv")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


def _png(b64: str) -> Image.Image:
    assert not b64.startswith("data:")
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_response_has_a1111_shape_and_infotext(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "negative_prompt": "blurry", "batch_size": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info"}
    info = json.loads(body["info"])
    assert info["all_seeds"] == [1234, 1235]
    assert info["seed"] == 1234 and info["width"] == 64 and info["steps"] == 3
    assert body["parameters"]["prompt"] == "a red fox" and body["parameters"]["sampler_index"] == "Euler"
    imgs = [_png(b) for b in body["images"]]
    assert [i.size for i in imgs] == [(64, 64), (64, 64)]
    assert imgs[0].info["parameters"] == info["infotexts"][0]
    assert info["infotexts"][1].splitlines()[1] == "Negative prompt: blurry"
    assert "Seed: 1235," in info["infotexts"][1]
    assert list(info)[:4] == ["prompt", "all_prompts", "negative_prompt", "all_negative_prompts"]


def test_same_seed_gives_identical_png_bytes(client: TestClient) -> None:
    a = client.post("/sdapi/v1/txt2img", json=SMALL).json()["images"][0]
    b = client.post("/sdapi/v1/txt2img", json=SMALL).json()["images"][0]
    c = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": 99}).json()["images"][0]
    assert a == b
    assert a != c


def test_random_seed_is_reported(client: TestClient) -> None:
    info = json.loads(client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": -1}).json()["info"])
    assert 0 <= info["seed"] < 4294967295 and info["all_seeds"] == [info["seed"]]


def test_lenient_with_what_clients_send(client: TestClient) -> None:
    payload = {**SMALL, "width": 71, "height": 64.0, "steps": 3.5, "hr_second_pass_steps": 1.5,
               "unknown_field": {"x": 1}, "hr_cfg": 5.0, "distilled_cfg_scale": 3.5,
               "hr_additional_modules": [], "alwayson_scripts": {}, "sampler_name": "Euler a",
               "sampler_index": "Euler a", "scheduler": "automatic", "override_settings": {
                   "CLIP_stop_at_last_layers": 2, "forge_additional_modules": []}}
    r = client.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 200, r.text
    img = _png(r.json()["images"][0])
    assert img.size == (64, 64)  # 71 rounded down to a multiple of 8
    assert "Clip skip: 2" in img.info["parameters"]


def test_legacy_sampler_names_resolve(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "DPM++ 2M Karras"})
    assert r.status_code == 200, r.text
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in text


def test_every_listed_sampler_generates_a_hires_image(client: TestClient) -> None:
    """Whatever /samplers lists runs end to end (both passes), legacy combined names included."""
    names = [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert "DPM++ 2S a" in names
    for name in names:
        r = client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 3, "sampler_name": name, "enable_hr": True,
                                                   "hr_scale": 1.5, "hr_second_pass_steps": 2})
        assert r.status_code == 200, (name, r.text)
        img = _png(r.json()["images"][0])
        assert img.size == (96, 96) and f"Sampler: {name}," in img.info["parameters"]
        assert np.asarray(img).std() > 1, name
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "DPM++ 2S a Karras"})
    assert r.status_code == 200 and "Sampler: DPM++ 2S a, Schedule type: Karras" in r.json()["info"]


@pytest.mark.parametrize("patch, field", [
    ({"width": 0}, "width"), ({"height": -64}, "height"), ({"width": 100000}, "width"),
    ({"steps": 0}, "steps"), ({"steps": "many"}, "steps"), ({"batch_size": 0}, "batch_size"),
    ({"cfg_scale": 1e9}, "cfg_scale"), ({"denoising_strength": 2}, "denoising_strength"),
])
def test_schema_errors_are_422_naming_the_field(client: TestClient, patch: dict, field: str) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, **patch})
    assert r.status_code == 422
    assert field in json.dumps(r.json()["detail"])


def test_nan_is_refused(client: TestClient) -> None:
    body = json.dumps({**SMALL, "cfg_scale": float("nan")})  # NaN literal, as Python's json writes it
    r = client.post("/sdapi/v1/txt2img", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "cfg_scale" in r.text


@pytest.mark.parametrize("patch, words", [
    ({"sampler_name": "Eular"}, ["Eular", "Euler a", "DPM++ 2M"]),
    ({"scheduler": "Karras2"}, ["Karras2", "Karras"]),
    ({"override_settings": {"sd_model_checkpoint": "nope.safetensors"}}, ["nope.safetensors",
                                                                          "hiresd-builtin-tiny"]),
    ({"override_settings": {"CLIP_stop_at_last_layers": 40}}, ["CLIP_stop_at_last_layers"]),
    ({"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, ["R-ESRGAN 4x+", "Latent (bicubic)", "Lanczos"]),
    ({"enable_hr": True, "hr_sampler_name": "nope"}, ["hr_sampler_name", "Euler"]),
    ({"width": 1024, "height": 1024}, ["pixels", "budget"]),
    ({"restore_faces": True}, ["restore_faces", "face-restoration"]),
    ({"refiner_checkpoint": "sd_xl_refiner_1.0"}, ["refiner_checkpoint", "sd_xl_refiner_1.0", "hiresd-builtin-tiny"]),
    ({"override_settings": {"hires_fix_refiner_pass": "third pass"}}, ["hires_fix_refiner_pass", "second pass"]),
    ({"enable_hr": True, "hr_scale": 16}, ["pixels", "budget"]),
])
def test_bad_names_and_budgets_are_400_listing_what_is_valid(client: TestClient, patch: dict,
                                                             words: list[str]) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, **patch})
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"error", "detail", "body", "errors"}
    for w in words:
        assert w in body["detail"]


def test_the_worker_survives_bad_requests(client: TestClient) -> None:
    for bad in ({"width": 0}, {"sampler_name": "x"}, {"firstpass_image": "not base64!", "enable_hr": True}):
        assert 400 <= client.post("/sdapi/v1/txt2img", json={**SMALL, **bad}).status_code < 500
    assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200


A1111_INFOTEXT = (
    "masterpiece, (a cat:1.2) sitting\non a \"chair\"\n"
    "Negative prompt: lowres, bad hands\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3405, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.5, "
    "Hires upscale: 2, Hires upscaler: Latent, Lora hashes: \"a: 123, b: 456\", Version: v1.10.1"
)


def test_png_info_parses_a1111_written_text(client: TestClient) -> None:
    img = Image.new("RGB", (8, 8))
    from PIL.PngImagePlugin import PngInfo
    meta = PngInfo()
    meta.add_text("parameters", A1111_INFOTEXT)
    meta.add_text("postprocessing", "Postprocess upscale by: 2")
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=meta)
    data = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    r = client.post("/sdapi/v1/png-info", json={"image": data})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["info"] == A1111_INFOTEXT
    assert body["items"] == {"postprocessing": "Postprocess upscale by: 2"}
    p = body["parameters"]
    assert p["Prompt"] == "masterpiece, (a cat:1.2) sitting\non a \"chair\""
    assert p["Negative prompt"] == "lowres, bad hands"
    assert p["Size-1"] == "512" and p["Size-2"] == "768"
    assert p["Lora hashes"] == "a: 123, b: 456"
    assert p["Hires upscaler"] == "Latent" and p["Hires sampler"] == "Use same sampler"


def test_png_info_round_trips_our_own_output(client: TestClient) -> None:
    body = client.post("/sdapi/v1/txt2img", json={**SMALL, "enable_hr": True, "hr_scale": 1.5,
                                                  "denoising_strength": 0.4, "hr_upscaler": "Latent (nearest)"}
                       ).json()
    p = client.post("/sdapi/v1/png-info", json={"image": body["images"][0]}).json()["parameters"]
    assert p["Hires upscale"] == "1.5" and p["Hires upscaler"] == "Latent (nearest)"
    assert p["Denoising strength"] == "0.4" and p["Size-1"] == "64" and p["Seed"] == "1234"


def test_png_info_refuses_what_is_not_an_image(client: TestClient) -> None:
    r = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(b"hello").decode()})
    assert r.status_code == 400 and "image" in r.json()["detail"]


def test_tiling_makes_a_seamless_image(client: TestClient) -> None:
    import numpy as np

    def seam(b64: str) -> float:
        a = np.asarray(_png(b64), dtype=np.float32)
        return float(np.abs(a[:, 0] - a[:, -1]).mean() + np.abs(a[0] - a[-1]).mean())

    off = client.post("/sdapi/v1/txt2img", json={**SMALL, "width": 128, "height": 128}).json()["images"][0]
    on = client.post("/sdapi/v1/txt2img", json={**SMALL, "width": 128, "height": 128, "tiling": True}).json()
    assert "Tiling: True" in json.loads(on["info"])["infotexts"][0]
    assert seam(on["images"][0]) < seam(off)
    # tiling is per request: the next image is not tileable again
    again = client.post("/sdapi/v1/txt2img", json={**SMALL, "width": 128, "height": 128}).json()["images"][0]
    assert again == off


def test_openapi_served(client: TestClient) -> None:
    assert client.get("/openapi.json").status_code == 200
    assert Path  # keep import used


def test_extension_settings_reach_the_job_through_override_settings(tmp_path: Path) -> None:
    import shutil
    ext = tmp_path / "ext"
    ext.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "examples" / "extensions" / "hires_detail.py", ext)
    cfg = ServerConfig(models_dir=tmp_path / "m", data_dir=tmp_path / "d", outputs_dir=tmp_path / "o",
                       extensions_dir=ext)
    with TestClient(create_app(cfg)) as c:
        assert c.get("/sdapi/v1/scripts").json()["txt2img"] == ["hires detail", *BUILTIN_ALWAYSON]
        r = c.post("/sdapi/v1/txt2img", json={**SMALL, "enable_hr": True, "hr_scale": 1.5, "override_settings": {
            "hires_detail_suffix": "film grain", "hires_detail_cfg_factor": 0.5},
            "override_settings_restore_afterwards": False})
        assert r.status_code == 200, r.text
        text = json.loads(r.json()["info"])["infotexts"][0]
        assert 'Hires prompt: "a red fox, film grain"' in text and "Hires CFG Scale: 3.5" in text
        assert "hires_detail_suffix" not in c.get("/sdapi/v1/options").json()


def test_sampler_parameters_apply_and_are_recorded(client: TestClient) -> None:
    plain = client.post("/sdapi/v1/txt2img", json=SMALL).json()
    churn = client.post("/sdapi/v1/txt2img", json={**SMALL, "s_churn": 1.0, "s_noise": 1.0}).json()
    text = json.loads(churn["info"])["infotexts"][0]
    assert "Sigma churn: 1.0" in text and "Sigma noise" not in text
    assert "Sigma churn" not in json.loads(plain["info"])["infotexts"][0]
    assert churn["images"][0] != plain["images"][0]
    eta0 = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Euler a", "eta": 0}).json()
    assert "Eta: 0.0" in json.loads(eta0["info"])["infotexts"][0]


def test_empty_strings_clients_send_mean_the_defaults(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": "", "enable_hr": True, "hr_upscaler": "",
                                                "hr_sampler_name": "", "hr_scheduler": "", "hr_scale": 1.5})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["seed"] >= 0 and "Hires upscaler" not in info["infotexts"][0]
    assert _png(r.json()["images"][0]).size == (96, 96)
