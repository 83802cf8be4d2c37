"""No lock-out (in-process app, real worker and built-in model): a saved `sd_model_checkpoint` or `sd_vae`
that stops resolving falls back as A1111 does (first checkpoint / "Automatic"), and every job kind still works."""
from __future__ import annotations

import base64
import io
import json
import logging

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipeline.models.builtin import BUILTIN_NAME
from server.app import create_app
from server.config import ServerConfig

SMALL = {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "seed": 5}


def _config(root) -> ServerConfig:
    return ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                        extensions_dir=None)


def _saved_checkpoint(root, name: str):
    """A listed checkpoint file (never loaded) that options.json names as the user's choice."""
    path = root / "models" / "Stable-diffusion" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(b"listed, never loaded")
    (root / "data").mkdir()
    (root / "data" / "options.json").write_text(json.dumps({"sd_model_checkpoint": name}))
    return path


def test_a_checkpoint_removed_while_running_falls_back_after_refresh(tmp_path, caplog) -> None:
    doomed = _saved_checkpoint(tmp_path, "doomed.safetensors")
    cfg = _config(tmp_path)
    with TestClient(create_app(cfg)) as client:
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("doomed.safetensors")
        doomed.unlink()
        caplog.set_level(logging.WARNING, logger="hiresd.services")
        assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
        lines = [r.getMessage() for r in caplog.records if "not found" in r.getMessage()]
        assert len(lines) == 1 and "doomed.safetensors" in lines[0], lines
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith(BUILTIN_NAME)
        r = client.post("/sdapi/v1/txt2img", json=SMALL)
        assert r.status_code == 200, r.text
        assert json.loads(r.json()["info"])["sd_model_name"] == BUILTIN_NAME
    # the user's choice stays in the file until they change an option themselves
    saved = json.loads((tmp_path / "data" / "options.json").read_text())
    assert saved["sd_model_checkpoint"] == "doomed.safetensors"


@pytest.mark.parametrize("option", ["sd_model_checkpoint", "sd_vae"])
def test_an_explicit_unknown_name_is_still_a_400(tmp_path, option: str) -> None:
    cfg = _config(tmp_path)
    with TestClient(create_app(cfg)) as client:
        body = {**SMALL, "override_settings": {option: "nope.safetensors"}}
        r = client.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 400, r.text
        assert "nope.safetensors" in r.json()["detail"]


def _init_image() -> str:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# one request per job kind: each reaches its checkpoint through the same worker entry (Services.run_job)
JOB_KINDS = {
    "txt2img": ("/sdapi/v1/txt2img", {}),
    "txt2img hires": ("/sdapi/v1/txt2img", {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5}),
    "img2img": ("/sdapi/v1/img2img", {"denoising_strength": 0.5}),
    "sd upscale": ("/sdapi/v1/img2img", {"denoising_strength": 0.5, "script_name": "sd upscale",
                                         "script_args": ["", 16, "None", 2.0]}),
    "ultimate sd upscale": ("/sdapi/v1/img2img", {"denoising_strength": 0.5, "script_name": "ultimate sd upscale",
                                                  "script_args": ["", 64, 64, 8, 8]}),
}


@pytest.mark.parametrize("kind", list(JOB_KINDS))
def test_a_checkpoint_file_removed_without_a_refresh_falls_back_too(tmp_path, kind: str) -> None:
    """The same fallback for every job kind (txt2img, hires, img2img, both upscale scripts): not a 500."""
    route, fields = JOB_KINDS[kind]
    body = {**SMALL, **fields}
    if route.endswith("img2img"):
        body["init_images"] = [_init_image()]
    doomed = _saved_checkpoint(tmp_path, "doomed.safetensors")
    cfg = _config(tmp_path)
    with TestClient(create_app(cfg)) as client:
        doomed.unlink()  # and nobody calls refresh-checkpoints
        r = client.post(route, json=body)
        assert r.status_code == 200, r.text
        assert json.loads(r.json()["info"])["sd_model_name"] == BUILTIN_NAME
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith(BUILTIN_NAME)
        named = {**body, "override_settings": {"sd_model_checkpoint": "doomed.safetensors"}}
        r = client.post(route, json=named)
        assert r.status_code == 400 and "doomed.safetensors" in r.json()["detail"], r.text
