"""Tiled sampling over HTTP (in-process app, real worker): the "Tiled Diffusion" always-on entry is a known
script, a 1024x256 panorama in tiles, a 400 naming the argument for what is not implemented, and the
9-channel inpainting refusal before the job is queued (the checkpoint is never loaded)."""
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
from tests.fixtures.tinymodels import build_tiny_sd1

SMALL = {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "seed": 1234,
         "override_settings": {"sd_model_checkpoint": BUILTIN_NAME}}
INPAINT = "tiny-inpaint.safetensors"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("srv-tiled")
    build_tiny_sd1(root / "build", seed=17, in_channels=9).write_safetensors(
        root / "models" / "Stable-diffusion" / INPAINT)
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=1024 * 256)
    with TestClient(create_app(cfg)) as c:
        yield c


def _entry(*args: object) -> dict:
    return {"Tiled Diffusion": {"args": list(args)}}


def test_the_entry_is_listed_and_a_panorama_runs_in_tiles(client: TestClient) -> None:
    assert "tiled diffusion" in client.get("/sdapi/v1/scripts").json()["txt2img"]
    # the extension's txt2img defaults: MultiDiffusion, 96-cell tiles, overlap 48 -> 2 tiles across 128 cells
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "width": 1024, "height": 256,
                                               "alwayson_scripts": _entry(True)})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert (info["width"], info["height"]) == (1024, 256)


@pytest.mark.parametrize("args,words", [
    ([True, "MultiDiffusion", False, True, 1024, 1024, 96, 96, 48, 4, "None", 2.0, True],
     "args[12] (noise_inverse)"),
    ([True, "MultiDiffusion", True], "args[2] (overwrite_size)"),
    ([True, "Mixture of Diffusers", False, True, 1024, 1024, 16, 16, 16], "args[8] (overlap)"),
])
def test_unimplemented_or_bad_args_are_a_400_naming_them(client: TestClient, args: list, words: str) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": _entry(*args)})
    assert r.status_code == 400, r.text
    assert f"alwayson_scripts.Tiled Diffusion.{words}" in r.text


def test_a_9_channel_checkpoint_is_refused_before_the_job_is_queued(client: TestClient) -> None:
    inpaint = {"override_settings": {"sd_model_checkpoint": INPAINT}}
    models = client.app.state.services.models
    for tiling in ({"tiled_diffusion": {"tile_width": 64, "tile_height": 64, "overlap": 16}},
                   {"alwayson_scripts": _entry(True)}):
        r = client.post("/sdapi/v1/txt2img", json={**SMALL, **tiling, **inpaint})
        assert r.status_code == 400, r.text
        assert "9-channel inpainting checkpoint" in r.text
        assert not models.is_loaded(models.resolve_title(INPAINT, "sd_model_checkpoint"))  # never ran
    # without tiles the same checkpoint serves the request
    ok = client.post("/sdapi/v1/txt2img", json={**SMALL, **inpaint})
    assert ok.status_code == 200, ok.text


def test_img2img_keeps_the_init_images_size_as_the_extension_does(client: TestClient) -> None:
    """The entry's keep_input_size (on unless sent false): A1111 with the extension answers at the init
    picture's size whatever width/height say."""
    buf = io.BytesIO()
    Image.new("RGB", (128, 64), (200, 120, 40)).save(buf, format="PNG")
    body = {**SMALL, "init_images": [base64.b64encode(buf.getvalue()).decode()], "denoising_strength": 0.5}

    def size(args: list) -> tuple[int, int]:
        r = client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": _entry(*args)})
        assert r.status_code == 200, r.text
        return Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size

    assert size([True]) == (128, 64)
    assert size([True, "Mixture of Diffusers", False, False]) == (64, 64)
