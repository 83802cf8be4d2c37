"""Option `img2img_color_correction` through HTTP: A1111's L*a*b* histogram match of each img2img result to
its init image, with the result's own luminosity kept; and the maths against scikit-image's
`match_histograms` (what A1111 calls)."""
from __future__ import annotations

import base64
import io

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipeline.jobs.img2img.color import apply_color_correction, correction_target
from server.app import create_app
from server.config import ServerConfig

BODY = {"prompt": "a red fox", "steps": 3, "width": 64, "height": 64, "seed": 11, "denoising_strength": 0.9}


def _init() -> Image.Image:
    """A saturated orange-to-teal picture: colours the tiny model's output does not have."""
    x = np.linspace(0, 1, 64)[None, :, None]
    y = np.linspace(0, 1, 64)[:, None, None]
    rgb = np.concatenate([230 - 200 * x + 0 * y, 120 + 60 * y + 0 * x, 30 + 180 * x * y], axis=-1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def _b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


OUT: dict[str, object] = {}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("cc")
    OUT["dir"] = root / "outputs"
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


def test_img2img_results_take_the_init_images_colours(client: TestClient) -> None:
    init = _init()
    body = {**BODY, "init_images": [_b64(init)], "batch_size": 2}
    plain = client.post("/sdapi/v1/img2img", json=body)
    fixed = client.post("/sdapi/v1/img2img", json={**body, "override_settings": {"img2img_color_correction": True}})
    assert plain.status_code == 200 and fixed.status_code == 200, fixed.text
    target = correction_target(init)
    for before_b64, after_b64 in zip(plain.json()["images"], fixed.json()["images"], strict=True):
        before, after = _img(before_b64), _img(after_b64)
        assert np.asarray(before).tolist() != np.asarray(after).tolist()
        # exactly A1111's step applied to the uncorrected result of the same seed
        assert np.array_equal(np.asarray(after), np.asarray(apply_color_correction(target, before)))
        # what a user sees: the chroma (a*, b*) moved toward the init image's, the lightness kept
        lab_init, lab_b, lab_a = (cv2.cvtColor(np.asarray(i), cv2.COLOR_RGB2LAB).astype(float)
                                  for i in (init, before, after))
        chroma = [np.abs(lab[..., 1:].mean((0, 1)) - lab_init[..., 1:].mean((0, 1))).sum()
                  for lab in (lab_b, lab_a)]
        assert chroma[1] < chroma[0] / 2
        assert np.abs(lab_a[..., 0] - lab_b[..., 0]).mean() < np.abs(lab_init[..., 0] - lab_b[..., 0]).mean()
    # the option is per job: the next plain request is uncorrected again
    again = client.post("/sdapi/v1/img2img", json=body).json()["images"]
    assert again == plain.json()["images"]
    assert client.get("/sdapi/v1/options").json()["img2img_color_correction"] is False


def test_set_by_post_options_it_applies_to_later_jobs(client: TestClient) -> None:
    body = {**BODY, "init_images": [_b64(_init())]}
    plain = client.post("/sdapi/v1/img2img", json=body).json()["images"][0]
    assert client.post("/sdapi/v1/options", json={"img2img_color_correction": True}).status_code == 200
    try:
        fixed = client.post("/sdapi/v1/img2img", json=body).json()["images"][0]
    finally:
        client.post("/sdapi/v1/options", json={"img2img_color_correction": False})
    assert fixed != plain
    bad = client.post("/sdapi/v1/options", json={"img2img_color_correction": "sometimes"})
    assert bad.status_code in (400, 422) and "img2img_color_correction" in bad.text


def test_the_uncorrected_images_are_saved_too_when_asked(client: TestClient) -> None:
    body = {**BODY, "init_images": [_b64(_init())], "save_images": True}
    out = OUT["dir"]
    plain = _img(client.post("/sdapi/v1/img2img", json=body).json()["images"][0])
    opts = {"img2img_color_correction": True, "save_images_before_color_correction": True}
    before = set(out.rglob("*.png"))
    fixed = _img(client.post("/sdapi/v1/img2img", json={**body, "override_settings": opts}).json()["images"][0])
    new = sorted(set(out.rglob("*.png")) - before)
    assert len(new) == 2
    uncorrected = [p for p in new if p.stem.endswith("-before-color-correction")]
    assert len(uncorrected) == 1 and "img2img-images" in uncorrected[0].parts
    assert np.array_equal(np.asarray(Image.open(uncorrected[0]).convert("RGB")), np.asarray(plain))
    (other,) = [p for p in new if p not in uncorrected]
    assert np.array_equal(np.asarray(Image.open(other).convert("RGB")), np.asarray(fixed))
    # the option alone (no colour correction) or without save_images: nothing extra
    before = set(out.rglob("*.png"))
    client.post("/sdapi/v1/img2img", json={**body, "override_settings": {"save_images_before_color_correction": True}})
    assert len(set(out.rglob("*.png")) - before) == 1


def test_histogram_match_is_scikit_images() -> None:
    exposure = pytest.importorskip("skimage.exposure")
    rng = np.random.default_rng(3)
    sample = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), "RGB")
    target = correction_target(_init())
    lab = cv2.cvtColor(np.asarray(sample), cv2.COLOR_RGB2LAB)
    matched = exposure.match_histograms(lab, target, channel_axis=2)
    assert matched.dtype == np.uint8
    recoloured = cv2.cvtColor(matched, cv2.COLOR_LAB2RGB).astype(float) / 255
    got = np.asarray(apply_color_correction(target, sample)).astype(float) / 255
    # the luminosity blend keeps the sample's luminosity and (where no clipping was needed) the matched
    # picture's colour differences
    lum = np.array([0.299, 0.587, 0.114])
    want_lum = (np.asarray(sample).astype(float) / 255) @ lum
    assert np.abs(got @ lum - want_lum).max() < 0.01
    unclipped = ((recoloured + (want_lum - recoloured @ lum)[..., None]).min(-1) >= 0) & (
        (recoloured + (want_lum - recoloured @ lum)[..., None]).max(-1) <= 1)
    diff_got = got - (got @ lum)[..., None]
    diff_want = recoloured - (recoloured @ lum)[..., None]
    assert unclipped.mean() > 0.3
    assert np.abs(diff_got[unclipped] - diff_want[unclipped]).max() < 0.01
