"""A1111's option `live_previews_image_format`: the format of the live preview POST /internal/progress
sends (modules/progress.py: `data:image/<format>;base64,...`)."""
from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import ServerConfig
from server.routes.internal import preview_data_url


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("preview-format")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None)
    with TestClient(create_app(cfg)) as c:
        yield c


@pytest.mark.parametrize("fmt, pil", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_the_preview_data_url_has_the_option_s_format(fmt: str, pil: str) -> None:
    url = preview_data_url(Image.new("RGB", (16, 8), "red"), fmt)
    head, _, data = url.partition(",")
    assert head == f"data:image/{fmt};base64"
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == pil and image.size == (16, 8)


def test_the_option_takes_a1111_s_choices_only(client: TestClient) -> None:
    try:
        assert client.post("/sdapi/v1/options", json={"live_previews_image_format": "webp"}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["live_previews_image_format"] == "webp"
        r = client.post("/sdapi/v1/options", json={"live_previews_image_format": "gif"})
        assert r.status_code == 400 and "live_previews_image_format" in r.text
    finally:
        client.post("/sdapi/v1/options", json={"live_previews_image_format": "png"})
