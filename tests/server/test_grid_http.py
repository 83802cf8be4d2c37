"""A1111's grid through the API: made only with `save_images`, `return_grid` on and (with
`grid_only_if_multiple`) two images or more; then first in `images`, its infotext first in
`info.infotexts`, `index_of_first_image` 1; laid out by `n_rows`, `grid_prevent_empty_spots`, on
`grid_background_color`."""
from __future__ import annotations

import base64
import io
import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import ServerConfig

SMALL = {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "seed": 5}


def _img(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


ROOT: dict[str, Path] = {}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("grid")
    ROOT["outputs"] = root / "outputs"
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


def test_a_saved_batch_answers_its_grid_first(client: TestClient) -> None:
    body = {**SMALL, "batch_size": 2, "n_iter": 2}
    plain = client.post("/sdapi/v1/txt2img", json=body).json()
    assert len(plain["images"]) == 4 and json.loads(plain["info"])["index_of_first_image"] == 0
    saved = client.post("/sdapi/v1/txt2img", json={**body, "save_images": True}).json()
    info = json.loads(saved["info"])
    assert len(saved["images"]) == 5 and saved["images"][1:] == plain["images"]
    assert info["index_of_first_image"] == 1 and len(info["infotexts"]) == 5
    assert info["infotexts"][0] == info["infotexts"][1]
    grid = _img(saved["images"][0])
    assert grid.size == (128, 128)  # n_rows -1: round(sqrt(4)) = 2 rows, 2 columns
    cells = [_img(b) for b in plain["images"]]
    for i, cell in enumerate(cells):
        x, y = i % 2 * 64, i // 2 * 64
        assert np.array_equal(np.asarray(grid.crop((x, y, x + 64, y + 64))), np.asarray(cell))


def test_grid_options(client: TestClient) -> None:
    body = {**SMALL, "batch_size": 3, "save_images": True}
    def grid(**opts: object) -> tuple[int, Image.Image]:
        r = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": opts}).json()
        return len(r["images"]), _img(r["images"][0])
    n, g = grid()
    assert n == 4 and g.size == (128, 128)  # round(sqrt(3)) = 2 rows: one empty spot
    assert g.getpixel((100, 100)) == (255, 255, 255)
    assert grid(grid_background_color="#ff0000")[1].getpixel((100, 100)) == (255, 0, 0)
    assert grid(n_rows=0)[1].size == (64, 192)  # rows = batch size
    assert grid(n_rows=1)[1].size == (192, 64)
    assert grid(grid_prevent_empty_spots=True)[1].size == (192, 64)  # 3 has no divisor <= sqrt(3) but 1
    assert grid(return_grid=False)[0] == 3
    one = {**SMALL, "save_images": True}
    assert len(client.post("/sdapi/v1/txt2img", json=one).json()["images"]) == 1
    r = client.post("/sdapi/v1/txt2img", json={**one, "override_settings": {"grid_only_if_multiple": False}})
    assert len(r.json()["images"]) == 2
    bad = client.post("/sdapi/v1/txt2img", json={**one, "override_settings": {"grid_background_color": "nope"}})
    assert bad.status_code in (400, 422) and "grid_background_color" in bad.text


def test_grid_save_writes_a1111s_grid_file(client: TestClient) -> None:
    out = ROOT["outputs"]
    body = {**SMALL, "batch_size": 2, "save_images": True, "send_images": True}
    before = set(out.rglob("grid-*"))
    r = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"samples_save": False}}).json()
    new = sorted(set(out.rglob("grid-*")) - before)
    assert [p.relative_to(out).parent for p in new] == [Path("txt2img-grids") / date.today().isoformat()]
    saved = Image.open(new[0])
    assert new[0].name.endswith(".png") and saved.text["parameters"] == json.loads(r["info"])["infotexts"][0]
    assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(_img(r["images"][0])))
    # the next one numbered after it; grid_format, grid_save_to_dirs, outdir_img2img_grids for img2img
    init = r["images"][1]
    opts = {"grid_format": "jpg", "grid_save_to_dirs": False, "outdir_img2img_grids": "my-grids"}
    client.post("/sdapi/v1/img2img", json={**body, "init_images": [init], "denoising_strength": 0.5,
                                           "override_settings": opts})
    assert [p.name for p in (out / "my-grids").iterdir()] == ["grid-0000.jpg"]
    client.post("/sdapi/v1/txt2img", json=body)
    names = sorted(p.name for p in (out / "txt2img-grids" / date.today().isoformat()).glob("grid-*"))
    assert names[-1] == f"grid-{len(names) - 1:04d}.png" and len(names) >= 2
    # no save_images: no grid, neither returned nor saved (A1111's API)
    count = len(list(out.rglob("grid-*")))
    r = client.post("/sdapi/v1/txt2img", json={**body, "save_images": False}).json()
    assert len(r["images"]) == 2 and len(list(out.rglob("grid-*"))) == count
    r = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"grid_save": False}}).json()
    assert len(r["images"]) == 3 and len(list(out.rglob("grid-*"))) == count
