"""A1111 v1.10's model, VAE, LoRA and memory options over HTTP (in-process app, real worker, tiny models
written as files): which VAE a checkpoint runs with (`sd_vae_overrides_per_model_preferences` against the
checkpoint's user metadata and a VAE named after it)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ServerConfig

SMALL = {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler"}


def _config(root: Path) -> ServerConfig:
    return ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                        extensions_dir=None, max_pixels=512 * 512)


def _vae_file(path: Path, seed: int) -> None:
    """A VAE for the tiny SD 1.x checkpoint with weights of its own (diffusers layout, torch.save)."""
    from diffusers import AutoencoderKL

    from tests.fixtures.tinymodels import tiny_sd1_file_configs

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(AutoencoderKL(**tiny_sd1_file_configs()["vae"]).state_dict(), path)


def _params(body: dict) -> dict[str, str]:
    text = json.loads(body["info"])["infotexts"][0]
    return dict(re.findall(r"(?:^|, )([A-Za-z ][\w \-/]*): ((?:\"[^\"]*\")|[^,]*)", text.splitlines()[-1]))


@pytest.fixture(scope="module")
def vae_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.tinymodels import build_tiny_sd1

    root = tmp_path_factory.mktemp("srv-vae-prefs")
    ckpts = root / "models" / "Stable-diffusion"
    tiny = build_tiny_sd1(tmp_path_factory.mktemp("build"), seed=3)
    tiny.write_safetensors(ckpts / "liked.safetensors")  # user metadata names x.pt
    (ckpts / "liked.json").write_text(json.dumps({"description": "mine", "vae": "x.pt"}))
    tiny.write_safetensors(ckpts / "paired.safetensors")  # a VAE named after it: paired.vae.pt
    tiny.write_safetensors(ckpts / "plain.safetensors")  # no preference
    _vae_file(root / "models" / "VAE" / "x.pt", 11)
    _vae_file(root / "models" / "VAE" / "y.pt", 12)
    _vae_file(ckpts / "paired.vae.pt", 13)
    return root


@pytest.mark.parametrize("ckpt,overrides,sd_vae,used", [
    # option on (A1111's default): a chosen VAE wins over every per-model preference
    ("liked", True, "y.pt", "y.pt"), ("paired", True, "y.pt", "y.pt"), ("liked", True, "None", None),
    # off: the checkpoint's user metadata, then a VAE named after it, then the chosen one
    ("liked", False, "y.pt", "x.pt"), ("paired", False, "y.pt", "paired.vae.pt"),
    ("plain", False, "y.pt", "y.pt"), ("liked", False, "None", "x.pt"),
    # Automatic: the per-model preference whatever the option says; without one the checkpoint's own
    ("liked", True, "Automatic", "x.pt"), ("paired", True, "Automatic", "paired.vae.pt"),
    ("plain", True, "Automatic", None),
])
def test_selected_vae_against_per_model_preferences(vae_root: Path, ckpt: str, overrides: bool, sd_vae: str,
                                                    used: str | None) -> None:
    with TestClient(create_app(_config(vae_root))) as client:
        body = {**SMALL, "override_settings": {"sd_model_checkpoint": ckpt, "sd_vae": sd_vae,
                                               "sd_vae_overrides_per_model_preferences": overrides}}
        r = client.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        params = _params(r.json())
        assert params["Model"] == ckpt
        assert params.get("VAE") == used, params
