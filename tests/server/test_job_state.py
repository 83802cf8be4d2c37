"""A job never changes the server's state (in-process app, real worker, two tiny SD 1.x files): a refiner or
hires checkpoint is per job, so the next plain job and `GET /options` still name the selected (first)
checkpoint; and the refiner pass gets the prompt's LoRAs and embeddings, as A1111 applies them."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from server.app import create_app
from server.config import ServerConfig
from tests.fixtures.networks import make_network
from tests.fixtures.tinymodels import build_tiny_sd1

SMALL = {"prompt": "a red fox", "steps": 3, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}
BASE, REFINER = "a-base", "b-refiner"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("srv-job-state")
    ckpts = root / "models" / "Stable-diffusion"
    base = build_tiny_sd1(root / "build", seed=41)
    base.write_safetensors(ckpts / f"{BASE}.safetensors")
    build_tiny_sd1(root / "build", seed=43).write_safetensors(ckpts / f"{REFINER}.safetensors")
    make_network(base, "lora", seed=5).save(root / "models" / "Lora" / "detail.safetensors")
    width = base.text_encoders[0].get_input_embeddings().weight.shape[1]
    (root / "models" / "embeddings").mkdir(parents=True)
    save_file({"emb_params": torch.randn(3, width, generator=torch.Generator().manual_seed(9)) * 4},
              str(root / "models" / "embeddings" / "glowemb.safetensors"))
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None)
    with TestClient(create_app(cfg)) as c:
        yield c


def _run(client: TestClient, **fields) -> tuple[np.ndarray, dict]:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    return np.asarray(image.convert("RGB")), json.loads(r.json()["info"])


def _selected(client: TestClient) -> str:
    return client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]


@pytest.mark.parametrize("fields", [
    {"refiner_checkpoint": REFINER, "refiner_switch_at": 0.5},
    {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5, "hr_checkpoint_name": REFINER},
])
def test_a_refiner_or_hires_checkpoint_job_leaves_the_selection_alone(client: TestClient, fields) -> None:
    assert _selected(client).startswith(BASE)
    _, info = _run(client, **fields)
    assert f"Model: {BASE}" in info["infotexts"][0]
    assert REFINER in info["infotexts"][0]  # the job did use the other checkpoint
    assert _selected(client).startswith(BASE)
    _, info = _run(client)
    assert f"Model: {BASE}," in info["infotexts"][0] and REFINER not in info["infotexts"][0]
    assert info["sd_model_name"] == BASE


def test_an_override_is_per_job_too(client: TestClient) -> None:
    _, info = _run(client, override_settings={"sd_model_checkpoint": REFINER})
    assert f"Model: {REFINER}," in info["infotexts"][0]
    assert _selected(client).startswith(BASE)
    _, info = _run(client)
    assert f"Model: {BASE}," in info["infotexts"][0]


@pytest.mark.parametrize("prompt", ["a fox glowemb", "a fox <lora:detail:1.5>"])
def test_the_refiner_pass_gets_the_prompts_embeddings_and_loras(client: TestClient, prompt: str) -> None:
    """A refiner taking over at the first step samples the whole pass on the refiner: its pixels are those
    of a plain job on the refiner checkpoint, only when the refiner encodes the embedding as an embedding
    and carries the LoRA (run first, so that the refiner is freshly loaded by the refiner job)."""
    client.post("/sdapi/v1/txt2img", json=SMALL)  # the base model is the loaded one
    refined, info = _run(client, prompt=prompt, refiner_checkpoint=REFINER, refiner_switch_at=None)
    assert f"Refiner: {REFINER}" in info["infotexts"][0]
    plain, _ = _run(client, prompt=prompt, override_settings={"sd_model_checkpoint": REFINER})
    assert np.array_equal(refined, plain)
    without, _ = _run(client, prompt="a fox", override_settings={"sd_model_checkpoint": REFINER})
    assert not np.array_equal(plain, without)  # the embedding / LoRA changes the picture


def test_an_override_kept_on_purpose_is_the_selection(client: TestClient) -> None:
    """`override_settings_restore_afterwards: false` is A1111's way to make an override stick: then it does."""
    _run(client, override_settings={"sd_model_checkpoint": REFINER}, override_settings_restore_afterwards=False)
    assert _selected(client).startswith(REFINER)
    _, info = _run(client)
    assert f"Model: {REFINER}," in info["infotexts"][0]
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": BASE})
    assert r.status_code == 200 and _selected(client).startswith(BASE)
