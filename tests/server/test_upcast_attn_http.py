"""A1111's `upcast_attn` over HTTP (issue 19): on a bf16 server the UNet's attention computed in float32
changes the pixels, and the next job without it gets the default pixels back; on a float32 server the
option changes nothing (A1111's `.float()` of a float32 tensor is itself). A1111 writes no infotext key."""
from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import ServerConfig

JOB = {"prompt": "a red fox in the snow", "negative_prompt": "blurry", "steps": 4, "width": 64, "height": 64,
       "seed": 99, "cfg_scale": 7.0, "sampler_name": "Euler"}


def _server(tmp_path_factory: pytest.TempPathFactory, precision: str) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp(f"srv-upcast-{precision}")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512, precision=precision)
    with TestClient(create_app(cfg)) as c:
        yield c


@pytest.fixture(scope="module")
def bf16(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from _server(tmp_path_factory, "bf16")


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from _server(tmp_path_factory, "fp32")


def _run(client: TestClient, options: dict[str, Any] | None = None, **fields: Any) -> tuple[np.ndarray, str]:
    body = {**JOB, **fields, "override_settings": options or {}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"),
                       dtype=np.int16)
    return image, json.loads(r.json()["info"])["infotexts"][0]


def test_upcast_attn_changes_a_bf16_servers_pixels_and_writes_no_infotext(bf16: TestClient) -> None:
    plain, text = _run(bf16)
    assert _run(bf16, {"upcast_attn": False})[0].tolist() == plain.tolist()
    upcast, upcast_text = _run(bf16, {"upcast_attn": True})
    assert np.abs(upcast - plain).max() > 0  # float32 attention rounds otherwise than bf16 attention
    assert upcast_text == text  # A1111 writes no key for it
    again, _ = _run(bf16)  # the pass's attention processors are given back
    assert again.tolist() == plain.tolist()


def test_upcast_attn_covers_the_hires_pass(bf16: TestClient) -> None:
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6,
             "hr_second_pass_steps": 3}
    plain, _ = _run(bf16, **hires)
    upcast, _ = _run(bf16, {"upcast_attn": True}, **hires)
    assert upcast.shape == plain.shape and np.abs(upcast - plain).max() > 0


def test_upcast_attn_changes_nothing_on_a_float32_server(fp32: TestClient) -> None:
    plain, text = _run(fp32)
    upcast, upcast_text = _run(fp32, {"upcast_attn": True})
    assert upcast.tolist() == plain.tolist() and upcast_text == text


def test_a_wrong_upcast_attn_value_is_a_400_naming_it(fp32: TestClient) -> None:
    r = fp32.post("/sdapi/v1/options", json={"upcast_attn": "maybe"})
    assert r.status_code == 400 and "upcast_attn" in r.text
    r = fp32.post("/sdapi/v1/txt2img", json={**JOB, "override_settings": {"upcast_attn": [1]}})
    assert r.status_code == 400 and "upcast_attn" in r.text
