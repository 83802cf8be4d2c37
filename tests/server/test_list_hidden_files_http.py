"""A1111's option `list_hidden_files` (default on): the model listings A1111 makes with
`modules/util.py` `walk_files` (checkpoints, LoRA, upscalers, face restorers) leave out the files in folders
whose names start with '.' only while it is off, read when the folder is scanned (refresh routes; the
upscalers at start-up). Files whose own names start with '.' are listed either way (walk_files looks at
folder names only). The VAE listing (A1111: a glob) never lists hidden names; embeddings always do."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ServerConfig
from tests.server.livesrv import write_tiny_esrgan


def _config(root: Path) -> ServerConfig:
    return ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                        extensions_dir=None)


def _lora(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 4)}, str(path))


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    for rel in ("Stable-diffusion/.hidden/inhidden.safetensors", "Stable-diffusion/.dotfile.safetensors",
                "Stable-diffusion/sub/plain.safetensors", "VAE/.hidden/vae-in-hidden.safetensors",
                "VAE/.dot-vae.safetensors", "VAE/plain-vae.safetensors"):
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(b"listed, never loaded")
    _lora(models / "Lora" / ".hidden" / "lora_in_hidden.safetensors")
    _lora(models / "Lora" / "plain_lora.safetensors")
    hidden = models / "ESRGAN" / ".hidden"
    hidden.mkdir(parents=True)
    shutil.move(write_tiny_esrgan(models, "4x-InHidden.safetensors"), hidden / "4x-InHidden.safetensors")
    write_tiny_esrgan(models, "4x-Plain.safetensors")
    return tmp_path


@pytest.fixture()
def client(root: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_config(root))) as c:
        yield c


def _names(client: TestClient, route: str, key: str = "model_name") -> set[str]:
    """The listed names; for checkpoints the file names without their suffix."""
    r = client.get(f"/sdapi/v1/{route}")
    assert r.status_code == 200, r.text
    if route == "sd-models":
        return {Path(item["filename"]).stem for item in r.json()}
    return {item[key] for item in r.json()}


def test_hidden_folders_are_listed_while_the_option_is_on(client: TestClient) -> None:
    assert client.get("/sdapi/v1/options").json()["list_hidden_files"] is True  # A1111's default
    assert {"inhidden", ".dotfile", "plain"} <= _names(client, "sd-models")
    assert {"lora_in_hidden", "plain_lora"} <= _names(client, "loras", "name")
    assert {"4x-InHidden", "4x-Plain"} <= _names(client, "upscalers", "name")
    # the VAE listing is A1111's glob: hidden folders and files never
    vaes = _names(client, "sd-vae")
    assert "plain-vae.safetensors" in vaes
    assert not vaes & {"vae-in-hidden.safetensors", ".dot-vae.safetensors"}


def test_hidden_folders_are_left_out_after_turning_it_off_and_refreshing(client: TestClient) -> None:
    assert client.post("/sdapi/v1/options", json={"list_hidden_files": False}).status_code == 200
    assert "inhidden" in _names(client, "sd-models")  # read at scan time: listed until a refresh
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert client.post("/sdapi/v1/refresh-loras").status_code == 200
    models = _names(client, "sd-models")
    assert "inhidden" not in models and {".dotfile", "plain"} <= models  # dot-files: listed either way
    loras = _names(client, "loras", "name")
    assert "lora_in_hidden" not in loras and "plain_lora" in loras
    # back on: listed again at the next scan
    assert client.post("/sdapi/v1/options", json={"list_hidden_files": True}).status_code == 200
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert "inhidden" in _names(client, "sd-models")


def test_a_saved_off_applies_to_the_start_up_scans(root: Path) -> None:
    with TestClient(create_app(_config(root))) as c:
        assert c.post("/sdapi/v1/options", json={"list_hidden_files": False}).status_code == 200
    with TestClient(create_app(_config(root))) as c:
        assert c.get("/sdapi/v1/options").json()["list_hidden_files"] is False
        upscalers = _names(c, "upscalers", "name")
        assert "4x-InHidden" not in upscalers and "4x-Plain" in upscalers
        models = _names(c, "sd-models")
        assert "inhidden" not in models and "plain" in models


def test_the_option_takes_booleans_only(client: TestClient) -> None:
    r = client.post("/sdapi/v1/options", json={"list_hidden_files": "maybe"})
    assert r.status_code == 400 and "list_hidden_files" in r.text
