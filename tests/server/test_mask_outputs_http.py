"""Inpainting's mask outputs through HTTP (A1111 v1.10 `process_images_inner`): options `return_mask` and
`return_mask_composite` put the mask for overlay (RGB) and the sample cut to it (RGBA) right after each
result in `images`, without infotexts (and into the grid); `save_mask` / `save_mask_composite` save them as
`-mask` / `-mask-composite` after the result when the results are saved. Without a mask nothing changes."""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import ServerConfig

BODY = {"prompt": "a red fox", "steps": 3, "width": 64, "height": 64, "seed": 5, "denoising_strength": 0.8}
ALL_ON = {"return_mask": True, "return_mask_composite": True, "save_mask": True, "save_mask_composite": True}
OUT: dict[str, Path] = {}


def _b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _init(w: int = 64, h: int = 64) -> Image.Image:
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    rgb = np.concatenate([200 * x + 0 * y, 60 + 150 * y + 0 * x, 90 + 120 * x * y], axis=-1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def _box_mask(w: int, h: int, box: tuple[int, int, int, int]) -> Image.Image:
    m = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 255
    return Image.fromarray(m, "L")


def _blurred(mask: Image.Image, sigma: int) -> np.ndarray:
    """A1111's mask blur: Gaussian along x, then along y, kernel 2 * int(2.5 * sigma + 0.5) + 1."""
    k = 2 * int(2.5 * sigma + 0.5) + 1
    arr = cv2.GaussianBlur(np.asarray(mask), (k, 1), sigma)
    return cv2.GaussianBlur(arr, (1, k), sigma)


def _pngs() -> set[Path]:
    return set(OUT["dir"].rglob("*.png")) if OUT["dir"].exists() else set()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("masks")
    OUT["dir"] = root / "outputs"
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


def _whole(mask_blur: int = 0, **extra: object) -> dict:
    return {**BODY, "init_images": [_b64(_init())], "mask": _b64(_box_mask(64, 64, (16, 8, 48, 40))),
            "inpaint_full_res": False, "mask_blur": mask_blur, "inpainting_fill": 1, **extra}


def test_return_mask_follows_the_result_and_is_the_mask_as_applied(client: TestClient) -> None:
    plain = client.post("/sdapi/v1/img2img", json=_whole())
    r = client.post("/sdapi/v1/img2img", json=_whole(override_settings={"return_mask": True}))
    assert plain.status_code == 200 and r.status_code == 200, r.text
    images, info = r.json()["images"], json.loads(r.json()["info"])
    assert len(plain.json()["images"]) == 1 and len(images) == 2
    assert images[0] == plain.json()["images"][0]  # the result itself is unchanged
    assert len(info["infotexts"]) == 1 and info["index_of_first_image"] == 0  # the mask has no infotext
    mask = _img(images[1])
    assert mask.mode == "RGB" and "parameters" not in mask.info
    assert np.array_equal(np.asarray(mask), np.asarray(_box_mask(64, 64, (16, 8, 48, 40)).convert("RGB")))
    # whole picture: A1111's mask for overlay is the blurred mask doubled (>= 128 fully repainted)
    blurred = client.post("/sdapi/v1/img2img", json=_whole(4, override_settings={"return_mask": True}))
    got = np.asarray(_img(blurred.json()["images"][1]).convert("L")).astype(int)
    want = np.clip(_blurred(_box_mask(64, 64, (16, 8, 48, 40)), 4).astype(np.float32) * 2, 0, 255)
    assert np.abs(got - want.astype(np.uint8)).max() == 0


def test_only_masked_returns_the_blurred_mask_at_the_init_images_size(client: TestClient) -> None:
    mask = _box_mask(96, 64, (40, 20, 60, 44))
    body = {**BODY, "init_images": [_b64(_init(96, 64))], "mask": _b64(mask), "mask_blur": 3,
            "inpaint_full_res": True, "inpaint_full_res_padding": 8,
            "override_settings": {"return_mask": True}}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    result, got = (_img(b) for b in r.json()["images"])
    assert result.size == got.size == (96, 64)
    assert np.array_equal(np.asarray(got.convert("L")), _blurred(mask, 3))
    # overlay_inpaint off: the result is the bare crop (64x64); the composite fits the mask to it
    off = client.post("/sdapi/v1/img2img", json={**body, "override_settings": {
        "return_mask_composite": True, "overlay_inpaint": False}})
    crop, composite = (_img(b) for b in off.json()["images"])
    assert crop.size == composite.size == (64, 64) and composite.mode == "RGBA"


def test_return_mask_composite_is_the_sample_cut_to_the_mask(client: TestClient) -> None:
    mask = np.asarray(_box_mask(64, 64, (16, 8, 48, 40))) > 0
    r = client.post("/sdapi/v1/img2img", json=_whole(override_settings={"return_mask_composite": True}))
    assert r.status_code == 200, r.text
    result, composite = (_img(b) for b in r.json()["images"])
    assert composite.mode == "RGBA" and composite.size == (64, 64)
    rgba = np.asarray(composite)
    # inside the mask: the result's pixels (there the sample itself), opaque; outside: fully transparent
    assert np.array_equal(rgba[mask][:, :3], np.asarray(result.convert("RGB"))[mask])
    assert (rgba[mask][:, 3] == 255).all() and (rgba[~mask] == 0).all()
    # a soft mask: the composite's alpha is the mask for overlay
    both = client.post("/sdapi/v1/img2img", json=_whole(4, override_settings={
        "return_mask": True, "return_mask_composite": True})).json()["images"]
    assert len(both) == 3
    soft_mask, soft_composite = _img(both[1]), _img(both[2])
    assert np.array_equal(np.asarray(soft_composite)[..., 3], np.asarray(soft_mask.convert("L")))
    # and its colours are the sample's before the original is laid over it (what overlay_inpaint off
    # returns), premultiplied by the mask: not the result's, which mixes in the original at the soft edge
    sample = _img(client.post("/sdapi/v1/img2img", json=_whole(4, override_settings={
        "overlay_inpaint": False})).json()["images"][0]).convert("RGB")
    want = Image.composite(sample.convert("RGBA").convert("RGBa"), Image.new("RGBa", (64, 64)),
                           soft_mask.convert("L")).convert("RGBA")
    assert np.array_equal(np.asarray(soft_composite), np.asarray(want))
    soft_result = np.asarray(_img(both[0]).convert("RGB"))
    edge = (np.asarray(soft_mask.convert("L")) > 0) & (np.asarray(soft_mask.convert("L")) < 255)
    assert not np.array_equal(np.asarray(sample)[edge], soft_result[edge])


def test_save_mask_and_save_mask_composite_write_files_after_the_result(client: TestClient) -> None:
    before = _pngs()
    r = client.post("/sdapi/v1/img2img", json=_whole(save_images=True, override_settings=ALL_ON))
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    # one result and its two mask outputs: three images, so A1111 makes a grid of them first
    assert len(images) == 4 and json.loads(r.json()["info"])["index_of_first_image"] == 1
    new = sorted(p for p in _pngs() - before if "img2img-images" in p.parts)
    names = [p.name for p in new]
    assert [re.sub(r"^\d+", "N", n) for n in names] == ["N-5.png", "N-5-mask.png", "N-5-mask-composite.png"]
    numbers = [int(n.split("-")[0]) for n in names]
    assert numbers == [numbers[0], numbers[0] + 1, numbers[0] + 2]
    saved_mask, saved_composite = Image.open(new[1]), Image.open(new[2])
    assert np.array_equal(np.asarray(saved_mask), np.asarray(_img(images[2])))
    assert np.array_equal(np.asarray(saved_composite), np.asarray(_img(images[3])))
    infotext = json.loads(r.json()["info"])["infotexts"][1]
    assert saved_mask.info["parameters"] == infotext == saved_composite.info["parameters"]
    # saving only: the response has the result alone; without save_images nothing is written
    before = _pngs()
    only_save = {"save_mask": True, "save_mask_composite": True}
    r = client.post("/sdapi/v1/img2img", json=_whole(save_images=True, override_settings=only_save))
    assert len(r.json()["images"]) == 1
    assert sorted(re.sub(r"^\d+", "N", p.name) for p in _pngs() - before if "img2img-images" in p.parts) == \
        ["N-5-mask-composite.png", "N-5-mask.png", "N-5.png"]
    before = _pngs()
    r = client.post("/sdapi/v1/img2img", json=_whole(override_settings=only_save))
    assert r.status_code == 200 and len(r.json()["images"]) == 1 and _pngs() == before


def test_the_grid_takes_the_returned_masks_as_a1111s(client: TestClient) -> None:
    body = _whole(save_images=True, batch_size=2, override_settings={"return_mask": True, "grid_save": False})
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    images, info = r.json()["images"], json.loads(r.json()["info"])
    assert len(images) == 5 and len(info["infotexts"]) == 3 and info["index_of_first_image"] == 1
    grid = _img(images[0]).convert("RGB")
    assert grid.size == (128, 128)  # four cells: result, mask, result, mask
    cells = [grid.crop((x, y, x + 64, y + 64)) for y in (0, 64) for x in (0, 64)]
    for cell, b64 in zip(cells, images[1:], strict=True):
        assert np.array_equal(np.asarray(cell), np.asarray(_img(b64).convert("RGB")))


def test_img2img_without_a_mask_is_unaffected(client: TestClient) -> None:
    body = {**BODY, "init_images": [_b64(_init())], "save_images": True}
    plain = client.post("/sdapi/v1/img2img", json=body).json()["images"]
    before = _pngs()
    r = client.post("/sdapi/v1/img2img", json={**body, "override_settings": ALL_ON})
    assert r.status_code == 200 and r.json()["images"] == plain
    assert [p.name for p in _pngs() - before if "mask" in p.name] == []
    assert len(_pngs() - before) == 1


def test_bad_values_are_a_400_naming_the_option(client: TestClient) -> None:
    for name in ALL_ON:
        r = client.post("/sdapi/v1/img2img", json=_whole(override_settings={name: "sometimes"}))
        assert r.status_code == 400 and name in r.text


def test_soft_inpainting_returns_its_own_mask_for_overlay(client: TestClient) -> None:
    # A1111's Soft Inpainting hands on the mask it cut the overlay with (from how far each latent moved)
    body = _whole(4, override_settings={"return_mask": True, "return_mask_composite": True})
    plain = client.post("/sdapi/v1/img2img", json=body).json()["images"]
    plain_mask = np.asarray(_img(plain[1]).convert("L"))
    soft = {**body, "alwayson_scripts": {"Soft Inpainting": {"args": [True, 1, 0.5, 4, 0, 0.5, 2]}}}
    r = client.post("/sdapi/v1/img2img", json=soft)
    assert r.status_code == 200, r.text
    result, mask, composite = (_img(b) for b in r.json()["images"])
    got = np.asarray(mask.convert("L"))
    assert mask.size == (64, 64) and not np.array_equal(got, plain_mask)
    assert np.array_equal(np.asarray(composite)[..., 3], got)
