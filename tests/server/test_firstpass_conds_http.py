"""Option `hires_fix_use_firstpass_conds` through HTTP: the hires pass's prompt is encoded with the first
pass's networks applied (A1111 encodes it in the first pass's set-up), so a LoRA's text-encoder part from
the first prompt shapes the second pass even when the hires prompt drops the tag."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipeline.models.builtin import build_builtin_model
from server.app import create_app
from server.config import ServerConfig
from tests.fixtures.networks import make_network

HIRES = {"steps": 3, "width": 64, "height": 64, "seed": 9, "enable_hr": True, "hr_scale": 1.5,
         "hr_upscaler": "Latent", "denoising_strength": 0.7}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("fp")
    # a LoRA over the built-in model's modules (text encoder and UNet), written where users put theirs
    make_network(build_builtin_model(), "lora", seed=5).save(root / "models" / "Lora" / "te.safetensors")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


def _images(client: TestClient, **fields: object) -> list[list]:
    """The pixels (the PNGs' infotexts differ with the prompts)."""
    r = client.post("/sdapi/v1/txt2img", json={**HIRES, **fields})
    assert r.status_code == 200, r.text
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")).tolist()
            for b in r.json()["images"]]


def test_pass_two_is_encoded_with_pass_ones_networks(client: TestClient) -> None:
    on = {"override_settings": {"hires_fix_use_firstpass_conds": True}}
    # the LoRA on the text encoder only (te 1, unet 0); the hires prompt without the tag
    tagged, plain = "a cat <lora:te:1:0>", "a cat"
    off_untagged = _images(client, prompt=tagged, hr_prompt=plain)
    off_tagged = _images(client, prompt=tagged, hr_prompt=tagged)
    on_untagged = _images(client, prompt=tagged, hr_prompt=plain, **on)
    assert off_untagged != off_tagged  # the LoRA's text-encoder part changes pass two
    # with the option, pass two's conds carry pass one's LoRA although its own prompt has none
    assert on_untagged == off_tagged
    # and the reverse: pass one without networks, the hires prompt's LoRA reaches only the UNet (te 1: none)
    on_reverse = _images(client, prompt=plain, hr_prompt=tagged, **on)
    assert on_reverse == _images(client, prompt=plain, hr_prompt=plain)
    assert _images(client, prompt=plain, hr_prompt=tagged) != on_reverse
    assert client.get("/sdapi/v1/options").json()["hires_fix_use_firstpass_conds"] is False
