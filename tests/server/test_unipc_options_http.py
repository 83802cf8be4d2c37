"""A1111's UniPC options through HTTP (each changes the UniPC image; the defaults are the golden images'),
their refusals, and the step spacing of `uni_pc_skip_type` against A1111's formulas."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipeline.diffusion.samplers.unipc import model_times
from server.app import create_app
from server.config import ServerConfig

BODY = {"prompt": "a red fox", "steps": 6, "width": 64, "height": 64, "seed": 3, "sampler_name": "UniPC"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("unipc")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


def _pixels(client: TestClient, path: str = "txt2img", **opts: object) -> np.ndarray:
    r = client.post(f"/sdapi/v1/{path}", json={**BODY, "override_settings": opts})
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"))


def test_each_unipc_option_changes_the_image(client: TestClient) -> None:
    default = _pixels(client)
    assert np.array_equal(default, _pixels(client, uni_pc_variant="bh1", uni_pc_skip_type="time_uniform",
                                           uni_pc_order=3, uni_pc_lower_order_final=True))
    for opts in ({"uni_pc_variant": "bh2"}, {"uni_pc_skip_type": "time_quadratic"}, {"uni_pc_skip_type": "logSNR"},
                 {"uni_pc_order": 1}, {"uni_pc_order": 2}, {"uni_pc_lower_order_final": False}):
        assert not np.array_equal(default, _pixels(client, **opts)), opts
    # another sampler ignores them
    euler = {**BODY, "sampler_name": "Euler"}
    a = client.post("/sdapi/v1/txt2img", json=euler).json()["images"][0]
    b = client.post("/sdapi/v1/txt2img", json={**euler, "override_settings": {"uni_pc_variant": "vary_coeff"}})
    assert b.status_code == 200 and b.json()["images"][0] == a


def test_what_unipc_cannot_run_is_a_4xx_naming_the_option(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "override_settings": {"uni_pc_variant": "vary_coeff"}})
    assert r.status_code == 400 and "uni_pc_variant" in r.text and "bh1" in r.text
    # fewer steps than the order (A1111 stops): the warm-up's lower orders, a 200 as before the option
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "steps": 3, "override_settings": {"uni_pc_order": 5}})
    assert r.status_code == 200
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "override_settings": {"uni_pc_skip_type": "cosine"}})
    assert r.status_code in (400, 422) and "uni_pc_skip_type" in r.text


def test_skip_types_space_the_steps_as_a1111() -> None:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # SD's scaled-linear schedule
    acp = np.cumprod(1.0 - betas)
    t_T, t_0 = 1.0, 0.001  # A1111: model timestep m is continuous time (m + 1) / 1000
    quad = model_times(acp, 999.0, 4, "time_quadratic")
    want = (np.linspace(t_T**0.5, t_0**0.5, 5) ** 2 - 0.001) * 1000
    assert np.allclose(quad, want)
    snr = model_times(acp, 999.0, 4, "logSNR")
    assert snr[0] == pytest.approx(999.0) and snr[-1] == pytest.approx(0.0, abs=1e-6)
    log_alpha = np.interp(snr, np.arange(1000), 0.5 * np.log(acp))
    lam = log_alpha - 0.5 * np.log(1 - np.exp(2 * log_alpha))
    assert np.allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-3)  # evenly spaced in log-SNR
    assert np.array_equal(model_times(acp, 700.0, 4, "time_uniform"), np.linspace(700.0, 0.0, 5))
