"""Forge's UI-exported always-on blob over HTTP (in-process app, real worker, the builtin tiny model): every
entry disabled gives the same bytes as the request without `alwayson_scripts`, for txt2img and img2img;
titles match case-insensitively and without Forge's suffix; an enabled script hiresd lacks is a 400 naming
it; a bad arg is a 400 naming the arg; a title nobody defines stays A1111's 422."""
from __future__ import annotations

import base64
import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipeline.models.builtin import BUILTIN_NAME
from server.app import create_app
from server.config import ServerConfig
from tests.fixtures.networks import make_network
from tests.fixtures.tinymodels import build_tiny_sd1

SMALL = {"prompt": "a red fox", "steps": 3, "width": 64, "height": 64, "seed": 1234, "cfg_scale": 6.0,
         "override_settings": {"sd_model_checkpoint": BUILTIN_NAME}}

# What Forge's UI exports with every integrated script left at its defaults (disabled), plus the common
# extension titles such blobs carry (disabled ADetailer as webuiapi sends it, the UI-only API payload and
# OpenOutpaint entries).
FORGE_BLOB = {
    "ADetailer": {"args": [False, False, {"ad_model": "face_yolov8n.pt", "ad_confidence": 0.3}]},
    "API payload": {"args": []},
    "DynamicThresholding (CFG-Fix) Integrated": {"args": [False, 7, 1, "Constant", 0, "Constant", 0, 1, "enable",
                                                          "MEAN", "AD", 1]},
    "FreeU Integrated (SD 1.x, SD 2.x, SDXL)": {"args": [False, 1.01, 1.02, 0.99, 0.95, 0, 1]},
    "Kohya HRFix Integrated": {"args": [False, 3, 2, 0, 0.35, True, "bicubic", "bicubic"]},
    "LatentModifier Integrated": {"args": [False, 0, "anisotropic", 0, "reinhard", 100, 0, "subtract", 0, 0,
                                           "gaussian", "add", 0, 100, 127, 0, "hard_clamp", 5, 0, "None", "None"]},
    "MultiDiffusion Integrated": {"args": [False, "MultiDiffusion", 768, 768, 64, 4]},
    "Never OOM Integrated": {"args": [False, False]},
    "OpenOutpaint": {"args": []},
    "PerturbedAttentionGuidance Integrated": {"args": [False, 3, 0, 0, 1]},
    "SelfAttentionGuidance Integrated (SD 1.x, SD 2.x, SDXL)": {"args": [False, 0.5, 2, 1]},
    "StyleAlign Integrated": {"args": [False, 1]},
    "HyperTile Integrated": {"args": [False, 256, 2, 0, False]},
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("srv-forge")
    sd1 = build_tiny_sd1(root / "build", seed=7)
    sd1.write_safetensors(root / "models" / "Stable-diffusion" / "tiny-sd1.safetensors")
    make_network(sd1, "lora", seed=1).save(root / "models" / "Lora" / "tinylora.safetensors")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None)
    with TestClient(create_app(cfg)) as c:
        yield c


def _png_b64(size: tuple[int, int] = (64, 64)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_the_served_titles_are_listed_and_the_refused_ones_are_not(client: TestClient) -> None:
    listed = client.get("/sdapi/v1/scripts").json()["txt2img"]
    refused = {"latentmodifier integrated", "stylealign integrated", "adetailer"}  # accepted only disabled
    for title in FORGE_BLOB:
        assert (title.lower() in listed) is (title.lower() not in refused), title


@pytest.mark.parametrize("route,extra", [("txt2img", {}),
                                         ("img2img", {"init_images": [_png_b64()], "denoising_strength": 0.6})])
def test_the_disabled_blob_changes_no_byte(client: TestClient, route: str, extra: dict) -> None:
    plain = client.post(f"/sdapi/v1/{route}", json={**SMALL, **extra})
    blob = client.post(f"/sdapi/v1/{route}", json={**SMALL, **extra, "alwayson_scripts": FORGE_BLOB})
    assert plain.status_code == 200 and blob.status_code == 200, blob.text
    assert blob.json()["images"] == plain.json()["images"]
    assert json.loads(blob.json()["info"])["infotexts"] == json.loads(plain.json()["info"])["infotexts"]


@pytest.mark.parametrize("title", ["freeu integrated", "FREEU INTEGRATED (SD 1.X, SD 2.X, SDXL)",
                                   "SelfAttentionGuidance Integrated", "perturbed attention guidance integrated"])
def test_titles_match_case_insensitively_and_without_the_suffix(client: TestClient, title: str) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 1, "alwayson_scripts": {title: {"args": [False]}}})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("title,args", [
    ("LatentModifier Integrated", [True]), ("StyleAlign Integrated", [True, 1.0]),
    ("ADetailer", [True, False, {"ad_model": "face_yolov8n.pt"}]),
])
def test_an_enabled_script_hiresd_lacks_is_a_400_naming_it(client: TestClient, title: str, args: list) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {title: {"args": args}}})
    assert r.status_code == 400, r.text
    assert f"'{title}' is not supported" in r.json()["detail"]


@pytest.mark.parametrize("title,args,words", [
    ("FreeU Integrated", [True, "high"], "args[1] (b1): expected a number"),
    ("DynamicThresholding (CFG-Fix) Integrated", [True, 7, 1.5], "args[2] (threshold_percentile): must be from"),
    ("PerturbedAttentionGuidance Integrated", [True, 3, 0, 0, 1, 9], "6 args"),
    ("MultiDiffusion Integrated", [True, "MultiDiffusion", 256, 256, 256], "overlap 256 px must be smaller"),
])
def test_a_bad_arg_is_a_400_naming_it(client: TestClient, title: str, args: list, words: str) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {title: {"args": args}}})
    assert r.status_code == 400, r.text
    assert words in r.json()["detail"]


def test_hypertile_integrated_runs_the_hypertile_patch_with_forges_keys(client: TestClient) -> None:
    title = "HyperTile Integrated"
    body = {**SMALL, "width": 256, "height": 256, "steps": 2}
    plain = client.post("/sdapi/v1/txt2img", json=body)
    r = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {title: {"args": [True, 128, 2, 1]}}})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])["infotexts"][0]
    assert "HyperTile_enabled: True" in info and "HyperTile_tile_size: 128" in info
    assert r.json()["images"] != plain.json()["images"]  # attention within tiles changes the picture


def test_a_title_nobody_defines_is_a_422(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"FreeU Integrated v3": {"args": []}}})
    assert r.status_code == 422, r.text


def test_the_scripts_compose_with_a_lora(client: TestClient) -> None:
    scripts = {"FreeU Integrated": {"args": [True, 1.3, 1.4, 0.9, 0.2]},
               "SelfAttentionGuidance Integrated": {"args": [True, 0.8, 2.0, 0.5]},
               "PerturbedAttentionGuidance Integrated": {"args": [True, 3.0]}}
    body = {**SMALL, "prompt": "a red fox <lora:tinylora:1>",
            "override_settings": {"sd_model_checkpoint": "tiny-sd1.safetensors"}}
    lora_only = client.post("/sdapi/v1/txt2img", json=body).json()
    both = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": scripts}).json()
    again = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": scripts}).json()
    no_lora = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "a red fox",
                                                      "alwayson_scripts": scripts}).json()
    assert both["images"] == again["images"]
    assert both["images"] != lora_only["images"] and both["images"] != no_lora["images"]
    info = json.loads(both["info"])["infotexts"][0]
    assert "Lora hashes" in info and "freeu_enabled: True" in info and "pagi_scale: 3.0" in info


# The whole img2img blob a real bot backend sends (issue #27): Forge's integrated scripts, A1111's built-in
# ones and ControlNet with three disabled units, all at their UI defaults
_CN_OFF = {"enabled": False, "module": "None", "model": "None", "weight": 1.0, "image": None,
           "resize_mode": "Crop and Resize", "processor_res": -1, "threshold_a": -1, "threshold_b": -1,
           "guidance_start": 0.0, "guidance_end": 1.0, "pixel_perfect": False, "control_mode": "Balanced"}
WHOLE_BLOB = {**FORGE_BLOB,
              "Comments": {"args": []}, "Extra options": {"args": []},
              "Refiner": {"args": [False, "", 0.8]}, "Sampler": {"args": [20, "DPM++ 2M", "Automatic"]},
              "Seed": {"args": [-1, False, -1, 0, 0, 0]},
              "Soft Inpainting": {"args": [False, 1, 0.5, 4, 0, 0.5, 2]},
              "ControlNet": {"args": [_CN_OFF, _CN_OFF, _CN_OFF]}}


@pytest.mark.parametrize("route,extra", [("txt2img", {}),
                                         ("img2img", {"init_images": [_png_b64()], "denoising_strength": 0.6})])
def test_a_whole_ui_exported_blob_is_a_200_and_changes_no_byte(client: TestClient, route: str,
                                                                extra: dict) -> None:
    plain = client.post(f"/sdapi/v1/{route}", json={**SMALL, **extra})
    blob = client.post(f"/sdapi/v1/{route}", json={**SMALL, **extra, "alwayson_scripts": WHOLE_BLOB})
    assert plain.status_code == 200 and blob.status_code == 200, blob.text
    assert blob.json()["images"] == plain.json()["images"]
