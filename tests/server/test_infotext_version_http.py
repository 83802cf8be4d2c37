"""Option `add_version_to_infotext` over HTTP: A1111 ends every infotext with `Version: <its git tag>`;
hiresd writes `Version: hiresd-<pyproject version>` there, drops it when the option is off, and ignores it
when the infotext is posted back."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ServerConfig

SMALL = {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "seed": 7}
PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("version")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


def _infotext(client: TestClient, body: dict) -> str:
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    return json.loads(r.json()["info"])["infotexts"][0]


def test_version_ends_the_infotext_unless_the_option_is_off(client: TestClient) -> None:
    version = tomllib.loads(PYPROJECT.read_text("utf-8"))["project"]["version"]
    assert client.get("/sdapi/v1/options").json()["add_version_to_infotext"] is True
    with_version = _infotext(client, SMALL)
    assert with_version.endswith(f", Version: hiresd-{version}")
    without = _infotext(client, {**SMALL, "override_settings": {"add_version_to_infotext": False}})
    assert "Version" not in without
    assert with_version == f"{without}, Version: hiresd-{version}"


def test_our_version_is_ignored_when_the_infotext_is_posted_back(client: TestClient) -> None:
    first = _infotext(client, SMALL)
    again = _infotext(client, {"infotext": first})
    assert again == first  # no field or setting taken from it, no A1111 back-compat flag
    info = client.post("/sdapi/v1/png-info", json={"image": client.post(
        "/sdapi/v1/txt2img", json=SMALL).json()["images"][0]}).json()
    assert info["parameters"]["Version"].startswith("hiresd-")
    flags = {"Old prompt editing timelines", "Downcast alphas_cumprod", "Pad conds v0"}
    assert not flags & set(info["parameters"])


def _png_with(text: str) -> str:
    import base64
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("parameters", text)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=meta)
    return base64.b64encode(buf.getvalue()).decode()


def test_auto_backcompat_off_reads_an_old_versions_infotext_as_written(client: TestClient) -> None:
    old = "a [cat:dog:0.5]\nSteps: 4, Sampler: DDIM, Seed: 9, Size: 64x64, Version: v1.5.1"
    flags = {"Old prompt editing timelines", "Pad conds v0", "Downcast alphas_cumprod"}
    on = client.post("/sdapi/v1/png-info", json={"image": _png_with(old)}).json()["parameters"]
    assert flags <= set(on)
    assert client.post("/sdapi/v1/options", json={"auto_backcompat": False}).status_code == 200
    try:
        off = client.post("/sdapi/v1/png-info", json={"image": _png_with(old)}).json()["parameters"]
        assert not flags & set(off)
        run = client.post("/sdapi/v1/txt2img", json={"infotext": old})
        assert run.status_code == 200, run.text
        infotext = json.loads(run.json()["info"])["infotexts"][0]
        assert "Pad conds v0" not in infotext and "Downcast alphas_cumprod" not in infotext
    finally:
        client.post("/sdapi/v1/options", json={"auto_backcompat": True})
