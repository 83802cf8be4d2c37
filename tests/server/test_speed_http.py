"""The hires speed options over HTTP (in-process app, real worker, builtin model): A1111's Hypertile and
token-merging options through override_settings and the options store, Forge's "Kohya HRFix Integrated"
and A1111's "Hypertile" always-on entries accepted and listed, their infotext keys in the answer, bad
values a 4xx naming them before anything runs, and the defaults leaving the picture as it was."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipeline.models.builtin import BUILTIN_NAME
from server.app import create_app
from server.config import ServerConfig

HIRES = {"prompt": "a red fox", "steps": 3, "width": 128, "height": 128, "seed": 42, "enable_hr": True,
         "hr_scale": 2.0, "denoising_strength": 0.5}
BUILTIN = {"sd_model_checkpoint": BUILTIN_NAME}
KOHYA = ["Kohya HRFix Integrated", [True, 1, 2.0, 0.0, 0.5, True, "bicubic", "bicubic"]]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("srv-speed")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None)
    with TestClient(create_app(cfg)) as c:
        yield c


def _run(client: TestClient, **extra) -> tuple[np.ndarray, dict]:
    body = {**HIRES, **extra}
    body["override_settings"] = {**BUILTIN, **extra.get("override_settings", {})}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    return np.asarray(image.convert("RGB")), json.loads(r.json()["info"])


def test_the_entries_are_listed(client: TestClient) -> None:
    names = client.get("/sdapi/v1/scripts").json()["txt2img"]
    assert "hypertile" in names and "kohya hrfix integrated" in names
    info = {(s["name"], s["is_img2img"]): s for s in client.get("/sdapi/v1/script-info").json()}
    kohya = info[("kohya hrfix integrated", False)]["args"]
    assert [a["label"] for a in kohya][:3] == ["Enabled", "Block Number", "Downscale Factor"]
    assert info[("hypertile", True)]["args"] == []


def test_each_option_changes_the_picture_and_writes_its_infotext(client: TestClient) -> None:
    plain, _ = _run(client)
    # the Hypertile entry alone (no option) is A1111's always-on script with Hypertile off: same picture
    entry_only, _ = _run(client, alwayson_scripts={"Hypertile": {"args": []}})
    assert np.array_equal(plain, entry_only)
    tiled, info = _run(client, override_settings={"hypertile_enable_unet_secondpass": True,
                                                  "hypertile_max_tile_unet": 128, "hypertile_swap_size_unet": 1},
                       alwayson_scripts={"Hypertile": {"args": []}})
    assert not np.array_equal(plain, tiled)
    assert "Hypertile U-Net second pass: True" in info["infotexts"][0]
    merged, info = _run(client, override_settings={"token_merging_ratio_hr": 0.5})
    assert not np.array_equal(plain, merged) and "Token merging ratio hr: 0.5" in info["infotexts"][0]
    shrunk, info = _run(client, alwayson_scripts={KOHYA[0]: {"args": KOHYA[1]}})
    assert not np.array_equal(plain, shrunk) and "kohya_hrfix_block_number: 1" in info["infotexts"][0]
    again, _ = _run(client, alwayson_scripts={KOHYA[0]: {"args": KOHYA[1]}})
    assert np.array_equal(shrunk, again)


def test_the_options_store_takes_them_and_refuses_bad_values(client: TestClient) -> None:
    opts = client.get("/sdapi/v1/options").json()
    assert opts["hypertile_enable_unet"] is False and opts["token_merging_ratio_hr"] == 0.0
    assert opts["hypertile_max_tile_unet"] == 256
    r = client.post("/sdapi/v1/options", json={"token_merging_ratio": 1.5})
    assert r.status_code in (400, 422) and "token_merging_ratio" in r.text
    r = client.post("/sdapi/v1/txt2img", json={**HIRES, "override_settings": {
        **BUILTIN, "hypertile_max_depth_unet": 9}})
    assert r.status_code in (400, 422) and "hypertile_max_depth_unet" in r.text


@pytest.mark.parametrize("args,field", [([True, 3, 2.0, 0.0, 0.35, True, "lanczos"], "args[6]"),
                                        ([True, 40], "args[1]")])
def test_bad_kohya_args_are_a_400_naming_them(client: TestClient, args: list, field: str) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**HIRES, "override_settings": BUILTIN,
                                               "alwayson_scripts": {KOHYA[0]: {"args": args}}})
    assert r.status_code == 400, r.text
    assert f"alwayson_scripts.Kohya HRFix Integrated.{field}" in r.text
