"""A1111's unload-checkpoint / reload-checkpoint, extensions and interrogate routes (in-process app, real
worker, built-in model; an extension file in a local git repository and one outside git)."""
from __future__ import annotations

import shutil
import subprocess

import pytest
from fastapi.testclient import TestClient

from pipeline.models.builtin import BUILTIN_NAME
from server.app import create_app
from server.config import ServerConfig

SMALL = {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "seed": 5}
EXTENSION = 'NAME = "{name}"\n\ndef before_hr(p):\n    pass\n'


def _git(folder, *args: str) -> None:
    subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def app_and_client(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("srv-models-control")
    ext = root / "extensions"
    ext.mkdir()
    (ext / "plain.py").write_text(EXTENSION.format(name="plain one"))
    if shutil.which("git"):
        (ext / "cloned.py").write_text(EXTENSION.format(name="cloned one"))
        _git(ext, "init", "-q", "-b", "main")
        _git(ext, "remote", "add", "origin", "https://example.invalid/someone/cloned.git")
        _git(ext, "add", "cloned.py")
        _git(ext, "commit", "-q", "-m", "one")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=ext)
    app = create_app(cfg)
    with TestClient(app) as c:
        yield app, c


def test_unload_frees_the_model_and_reload_brings_it_back(app_and_client) -> None:
    app, client = app_and_client
    models = app.state.services.models
    key = models.find(BUILTIN_NAME).filename
    assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200
    assert models.is_loaded(key)
    r = client.post("/sdapi/v1/unload-checkpoint")
    assert r.status_code == 200 and r.json() == {}
    assert not models.is_loaded(key)
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith(BUILTIN_NAME)
    r = client.post("/sdapi/v1/reload-checkpoint")
    assert r.status_code == 200 and r.json() == {}
    assert models.is_loaded(key)
    # unloaded, the next job loads the model itself
    client.post("/sdapi/v1/unload-checkpoint")
    assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200
    assert models.is_loaded(key)


def test_extensions_in_a1111_shape(app_and_client) -> None:
    _, client = app_and_client
    items = {i["name"]: i for i in client.get("/sdapi/v1/extensions").json()}
    assert "tiled diffusion" not in {n.lower() for n in items}  # built-in always-on scripts are not listed
    keys = {"name", "remote", "branch", "commit_hash", "commit_date", "version", "enabled"}
    plain = items["plain one"]
    assert set(plain) == keys and plain["enabled"] is True
    if shutil.which("git"):
        cloned = items["cloned one"]
        assert cloned["remote"] == "https://example.invalid/someone/cloned.git" and cloned["branch"] == "main"
        assert len(cloned["commit_hash"]) == 40 and cloned["version"] == cloned["commit_hash"][:8]
        assert cloned["commit_date"] > 1_600_000_000


@pytest.mark.parametrize("body,status,words", [
    ({"image": "", "model": "clip"}, 404, "Image not found"),
    ({"image": "iVBORw0KGgo=", "model": "blip3"}, 404, "Model not found"),
    ({"image": "iVBORw0KGgo=", "model": "clip"}, 501, "CLIP ViT-L/14"),
    ({"image": "iVBORw0KGgo=", "model": "deepdanbooru"}, 501, "model-resnet_custom_v3.pt"),
])
def test_interrogate_says_what_it_would_need(app_and_client, body, status: int, words: str) -> None:
    _, client = app_and_client
    r = client.post("/sdapi/v1/interrogate", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
