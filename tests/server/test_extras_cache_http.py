"""Option `upscaling_max_images_in_cache` over HTTP: A1111's extras keep the last upscales and answer an
identical later request (same pixels, upscaler and size arguments) from them, even when only a tile option
changed; 0 keeps none, so the changed tile option shows."""
from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import ServerConfig
from tests.server.livesrv import write_tiny_esrgan


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("extras-cache")
    write_tiny_esrgan(root / "models", "Tiny ESRGAN 4x.safetensors")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "out",
                       extensions_dir=None, max_pixels=1024 * 1024)
    with TestClient(create_app(cfg)) as c:
        yield c


def _noise(seed: int) -> str:
    img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _upscale(client: TestClient, image: str) -> np.ndarray:
    r = client.post("/sdapi/v1/extra-single-image", json={"image": image, "upscaler_1": "Tiny ESRGAN 4x",
                                                            "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["image"]))))


def _set(client: TestClient, **values: object) -> None:
    assert client.post("/sdapi/v1/options", json=values).status_code == 200


def test_a_cached_upscale_answers_an_identical_request_until_the_cache_is_off(client: TestClient) -> None:
    assert client.get("/sdapi/v1/options").json()["upscaling_max_images_in_cache"] == 5
    image = _noise(1)
    try:
        _set(client, ESRGAN_tile=0)  # one pass over the whole image
        whole = _upscale(client, image)
        _set(client, ESRGAN_tile=16, ESRGAN_tile_overlap=0)  # tiles: other pixels at their seams
        assert np.array_equal(_upscale(client, image), whole)  # A1111's cache: the tile option is no key
        _set(client, upscaling_max_images_in_cache=0)
        tiled = _upscale(client, image)
        assert not np.array_equal(tiled, whole)
        _set(client, ESRGAN_tile=0)
        assert np.array_equal(_upscale(client, image), whole)  # nothing was kept
    finally:
        _set(client, ESRGAN_tile=192, ESRGAN_tile_overlap=8, upscaling_max_images_in_cache=5)


def test_the_cache_holds_the_last_n_upscales(client: TestClient) -> None:
    images = [_noise(10 + i) for i in range(3)]
    try:
        _set(client, ESRGAN_tile=0, upscaling_max_images_in_cache=2)
        whole = [_upscale(client, im) for im in images]  # the first one falls out
        _set(client, ESRGAN_tile=16, ESRGAN_tile_overlap=0)
        assert np.array_equal(_upscale(client, images[2]), whole[2])
        assert not np.array_equal(_upscale(client, images[0]), whole[0])  # upscaled again, tiled
    finally:
        _set(client, ESRGAN_tile=192, ESRGAN_tile_overlap=8, upscaling_max_images_in_cache=5)
