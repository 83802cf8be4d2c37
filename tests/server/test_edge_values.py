"""Values a client can send are never 500s (in-process app, real worker, built-in model): seeds outside what
torch's `manual_seed` takes and absurd `seed_resize_from_*` are 422s with the bounds in openapi.json, while
every seed A1111 runs still runs (random -1, negatives, 2^64-1 with a batch past it); img2img `resize_mode`
3 with init images of different sizes; a VAE file deleted without a rescan falls back as a checkpoint does."""
from __future__ import annotations

import base64
import io
import json
import logging

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from pipeline.models.builtin import BUILTIN_NAME
from server.app import create_app
from server.config import ServerConfig

SMALL = {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "seed": 5}
TOP = 2**64 - 1


def _config(root) -> ServerConfig:
    return ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                        extensions_dir=None)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    with TestClient(create_app(_config(tmp_path_factory.mktemp("srv-edges")))) as c:
        yield c


def _png(w: int, h: int, seed: int = 60) -> str:
    buf = io.BytesIO()
    Image.effect_noise((w, h), seed).convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("field,value,bound", [
    ("seed", 2**64, TOP), ("seed", -(2**64) - 1, -(2**63)), ("seed", 1e30, TOP), ("subseed", 2**64, TOP),
    ("subseed", -(2**63) - 1, -(2**63)), ("seed_resize_from_w", 99999999, 16384),
    ("seed_resize_from_h", 99999999, 16384),
])
@pytest.mark.parametrize("route", ["txt2img", "img2img"])
def test_values_torch_cannot_take_are_422_naming_the_bound(client: TestClient, route: str, field: str,
                                                           value, bound: int) -> None:
    body = {**SMALL, field: value}
    if route == "img2img":
        body["init_images"] = [_png(64, 64)]
    r = client.post(f"/sdapi/v1/{route}", json=body)
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"][-1] == field and str(bound) in err["msg"], err


def test_the_bounds_are_in_openapi(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Txt2ImgRequest"]
    ints = {name: next(a for a in prop["anyOf"] if a["type"] == "integer")
            for name, prop in schema["properties"].items() if name in ("seed", "subseed", "seed_resize_from_w")}
    assert (ints["seed"]["minimum"], ints["seed"]["maximum"]) == (-(2**63), float(TOP))  # JSON numbers
    assert ints["subseed"]["maximum"] == float(TOP) and ints["seed_resize_from_w"]["maximum"] == 16384


def _mean_level_diff(a: str, b: str) -> float:
    """Mean absolute difference of two base64 PNGs' pixels, in 8-bit levels."""
    def arr(data: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=np.float64)
    return float(np.abs(arr(a) - arr(b)).mean())


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE"])  # ancestral noise; a Brownian tree
def test_every_seed_torch_takes_runs(client: TestClient, sampler: str) -> None:
    for seed, subseed in ((TOP, -1), (-(2**63), TOP), (-5, 7)):
        r = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": seed, "subseed": subseed,
                                                   "subseed_strength": 0.3, "sampler_name": sampler})
        assert r.status_code == 200, r.text
        assert json.loads(r.json()["info"])["seed"] == seed
    # image i gets seed + i; past 2^64 - 1 it wraps to 0 as torch reads it, so the infotext can be sent again
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": TOP, "batch_size": 2, "sampler_name": sampler})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_seeds"] == [TOP, 0]
    again = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": 0, "sampler_name": sampler})
    other = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": 1, "sampler_name": sampler})
    # a batched UNet call may round its last bits otherwise than a single one (AVX2 kernels do): the same
    # noise gives the same image up to a level here and there, another seed a different one
    assert _mean_level_diff(again.json()["images"][0], r.json()["images"][1]) < 0.5
    assert _mean_level_diff(other.json()["images"][0], r.json()["images"][1]) > 5
    rnd = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": -1})
    assert 0 <= json.loads(rnd.json()["info"])["seed"] < 4294967294


def test_seed_resize_from_at_its_bound_runs_within_max_pixels(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed_resize_from_w": 16384, "seed_resize_from_h": 8})
    assert r.status_code == 200, r.text
    for route, extra in (("txt2img", {}), ("img2img", {"init_images": [_png(64, 64)]})):
        body = {**SMALL, **extra, "seed_resize_from_w": 16384, "seed_resize_from_h": 16384}
        r = client.post(f"/sdapi/v1/{route}", json=body)  # 2^28 pixels of noise, over the default 4096x4096
        assert r.status_code == 400, r.text[:300]
        assert "seed_resize_from_w" in r.json()["detail"] and "--max-pixels" in r.json()["detail"]


def test_resize_mode_3_with_init_images_of_different_sizes(client: TestClient) -> None:
    """A1111 upscales each init image's latent to the job size (resize_mode 3, "latent upscale"): a 200."""
    body = {**SMALL, "init_images": [_png(64, 64), _png(96, 48, 30), _png(40, 80, 90)], "resize_mode": 3,
            "width": 64, "height": 64, "denoising_strength": 0.5, "batch_size": 3}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    images = [Image.open(io.BytesIO(base64.b64decode(b))) for b in r.json()["images"]]
    assert [im.size for im in images] == [(64, 64)] * 3


def _vae_file(path) -> None:
    from diffusers import AutoencoderKL

    from pipeline.models.builtin import tiny_sd1_configs

    torch.manual_seed(3)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(AutoencoderKL(**tiny_sd1_configs()["vae"]).state_dict(), path)


JOB_KINDS = {
    "txt2img": ("txt2img", {}),
    "img2img": ("img2img", {"denoising_strength": 0.5}),
    "sd upscale": ("img2img", {"denoising_strength": 0.5, "script_name": "sd upscale",
                               "script_args": ["", 16, "None", 2.0]}),
    "ultimate sd upscale": ("img2img", {"denoising_strength": 0.5, "script_name": "ultimate sd upscale",
                                        "script_args": ["", 64, 64, 8, 8]}),
}


@pytest.mark.parametrize("kind", list(JOB_KINDS))
def test_a_vae_file_removed_without_a_refresh_falls_back(tmp_path, kind: str, caplog) -> None:
    """The saved `sd_vae` names a file deleted since the last scan: the job runs on Automatic, one log
    line says so; naming the file in override_settings is a 400 naming it."""
    route, fields = JOB_KINDS[kind]
    body = {**SMALL, **fields}
    if route == "img2img":
        body["init_images"] = [_png(64, 64)]
    doomed = tmp_path / "models" / "VAE" / "doomed.pt"
    _vae_file(doomed)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "options.json").write_text(json.dumps({"sd_vae": "doomed.pt"}))
    with TestClient(create_app(_config(tmp_path))) as client:
        assert client.get("/sdapi/v1/options").json()["sd_vae"] == "doomed.pt"
        doomed.unlink()  # and nobody calls refresh-vae
        caplog.set_level(logging.WARNING, logger="hiresd.services")
        r = client.post(f"/sdapi/v1/{route}", json=body)
        assert r.status_code == 200, r.text
        assert "VAE: doomed" not in json.loads(r.json()["info"])["infotexts"][0]
        assert any("doomed.pt" in rec.getMessage() for rec in caplog.records)
        assert client.get("/sdapi/v1/options").json()["sd_vae"] == "Automatic"
        named = {**body, "override_settings": {"sd_vae": "doomed.pt"}}
        r = client.post(f"/sdapi/v1/{route}", json=named)
        assert r.status_code == 400 and "doomed.pt" in r.json()["detail"], r.text


@pytest.mark.parametrize("fields", [
    {"refiner_checkpoint": "gone", "refiner_switch_at": 0.5},
    {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5, "hr_checkpoint_name": "gone"},
])
def test_a_refiner_or_hires_checkpoint_removed_without_a_refresh_is_a_400(tmp_path, fields) -> None:
    from tests.fixtures.tinymodels import build_tiny_sd1

    gone = build_tiny_sd1(tmp_path / "build", seed=3).write_safetensors(
        tmp_path / "models" / "Stable-diffusion" / "gone.safetensors")
    with TestClient(create_app(_config(tmp_path))) as client:
        gone.unlink()
        base = {"override_settings": {"sd_model_checkpoint": BUILTIN_NAME}}
        r = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields, **base})
        assert r.status_code == 400, r.text[:300]
        assert "gone" in r.json()["detail"]
        assert "gone" not in str(client.get("/sdapi/v1/sd-models").json())  # rescanned
        assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200
