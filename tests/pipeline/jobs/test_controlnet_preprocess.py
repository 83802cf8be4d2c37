"""The model-free preprocessors and the hint resizing, each against its definition written out here
(the extension's formulas), and the unit fields' legacy forms."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.jobs.controlnet import hints, preprocessors
from pipeline.runtime.errors import InvalidRequest
from schemas.controlnet import ControlNetUnit


def _picture(h: int = 90, w: int = 120, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.zeros((h, w, 3), np.uint8)
    a[:, w // 2 :] = 180
    a[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (40, 200, 90)
    return np.clip(a.astype(np.int16) + rng.integers(-15, 15, a.shape), 0, 255).astype(np.uint8)


def _resized(img: np.ndarray, res: int) -> np.ndarray:
    """Short side to `res`: cubic when enlarging, area when shrinking (the extension's rule)."""
    h, w = img.shape[:2]
    k = res / min(h, w)
    return cv2.resize(
        img, (round(w * k), round(h * k)), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA
    )


def _on_padded(img: np.ndarray, res: int, fn) -> np.ndarray:
    """`fn` on the resized input edge-padded to multiples of 64, the padding cut off again."""
    r = _resized(img, res)
    h, w = r.shape[:2]
    padded = np.pad(r, [[0, -h % 64], [0, -w % 64], [0, 0]], mode="edge")
    return fn(padded)[:h, :w]


def _run(name: str, img: np.ndarray, res: int = -1, a: float = -1, b: float = -1) -> np.ndarray:
    pre = preprocessors.resolve(name, "module")
    return pre.run(img, *pre.settle(res, a, b))


def test_none_and_invert() -> None:
    img = _picture()
    assert _run("none", img) is img
    assert np.array_equal(_run("invert", img), 255 - img)
    grey = img[:, :, 0]
    assert np.array_equal(_run("invert", grey), 255 - np.stack([grey] * 3, axis=2))


@pytest.mark.parametrize("res", [64, 200])
def test_canny_is_opencv_canny_on_the_resized_input(res: int) -> None:
    img = _picture()
    want = _on_padded(img, res, lambda x: cv2.Canny(x, 100, 200))
    got = _run("canny", img, res)
    assert got.shape == (*want.shape, 3)
    assert np.array_equal(got[:, :, 0], want) and np.array_equal(got[:, :, 2], want)
    low = _run("canny", img, res, 30, 60)
    assert np.array_equal(low[:, :, 0], _on_padded(img, res, lambda x: cv2.Canny(x, 30, 60)))


def test_threshold_blur_tile_and_defaults() -> None:
    img = _picture()
    r = _resized(img, 80)
    assert np.array_equal(_run("threshold", img, 80, 100)[:, :, 1], np.where(r.min(axis=2) > 100, 255, 0))
    assert np.array_equal(_run("blur_gaussian", img, 80, 2.5), cv2.GaussianBlur(r, (0, 0), 2.5))
    assert np.array_equal(
        _run("tile_resample", img, a=2.0), cv2.resize(img, (60, 45), interpolation=cv2.INTER_AREA)
    )
    assert _run("tile_resample", img) is img or np.array_equal(_run("tile_resample", img), img)
    canny = preprocessors.resolve("canny", "m")
    assert canny.settle(-1, -1, -1) == (512, 100.0, 200.0)
    assert canny.settle(5000, 0, 300) == (512, 100.0, 200.0)  # out of range: the defaults, as the extension


def test_scribble_xdog_and_lineart_standard() -> None:
    img = _picture()

    def xdog(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        dog = 255 - np.min(cv2.GaussianBlur(x, (0, 0), 5.0) - cv2.GaussianBlur(x, (0, 0), 0.5), axis=2)
        return np.where(2 * (255 - dog.clip(0, 255).astype(np.uint8).astype(np.int32)) > 32, 255, 0)

    assert np.array_equal(_run("scribble_xdog", img, 64)[:, :, 0], _on_padded(img, 64, xdog))

    def lineart(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        inten = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
        return (inten / max(16, np.median(inten[inten > 8])) * 127).clip(0, 255).astype(np.uint8)

    assert np.array_equal(_run("lineart_standard", img, 64), _on_padded(img, 64, lineart))


def test_modules_needing_weights_or_unknown_are_clear_400s() -> None:
    with pytest.raises(InvalidRequest, match="body_pose_model.pth.*ControlNetAnnotators"):
        preprocessors.resolve("openpose", "alwayson_scripts.ControlNet.args[0].module")
    with pytest.raises(InvalidRequest, match="unknown preprocessor") as err:
        preprocessors.resolve("cany", "alwayson_scripts.ControlNet.args[0].module")
    assert "'canny'" in str(err.value)


def test_resize_modes() -> None:
    m = np.zeros((50, 100, 3), np.uint8)
    m[:, :, 0] = np.arange(100, dtype=np.uint8)[None, :] * 2  # a smooth ramp: cubic / area resampling
    m[:, :, 1] = 77
    m[:, :, 2] = np.arange(50, dtype=np.uint8)[:, None] * 5  # over 200 colours: not nearest-neighbour
    just = hints.fit(m, hints.JUST_RESIZE, 64, 64)
    assert just.shape == (64, 64, 3) and np.array_equal(
        just, cv2.resize(m, (64, 64), interpolation=cv2.INTER_AREA)
    )
    crop = hints.fit(m, hints.CROP_AND_RESIZE, 64, 64)
    full = cv2.resize(m, (128, 64), interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(crop, full[:, 32:96])
    fill = hints.fit(m, hints.RESIZE_AND_FILL, 64, 64)
    inner = cv2.resize(m, (64, 32), interpolation=cv2.INTER_AREA)
    assert np.array_equal(fill[16:48], inner)
    border = np.median(np.concatenate([m[0], m[-1], m[:, 0], m[:, -1]]), axis=0).astype(np.uint8)
    assert (fill[:16] == border).all() and (fill[48:] == border).all()


def test_binary_maps_stay_binary_and_segmentation_uses_nearest() -> None:
    edges = np.zeros((40, 40, 3), np.uint8)
    edges[10:30, 20] = 255
    up = hints.fit(edges, hints.JUST_RESIZE, 100, 100)
    assert set(np.unique(up)) <= {0, 255}
    seg = np.zeros((40, 40, 3), np.uint8)
    seg[:, :13], seg[:, 13:26], seg[:, 26:] = (10, 20, 30), (200, 0, 0), (0, 90, 90)
    up = hints.fit(seg, hints.JUST_RESIZE, 100, 100)
    assert np.array_equal(up, cv2.resize(seg, (100, 100), interpolation=cv2.INTER_NEAREST))


def test_pixel_perfect_resolution() -> None:
    img = np.zeros((300, 400, 3), np.uint8)
    assert hints.pixel_perfect_resolution(img, 512, 768, hints.CROP_AND_RESIZE) == 768
    assert hints.pixel_perfect_resolution(img, 512, 768, hints.RESIZE_AND_FILL) == 384


@pytest.mark.parametrize(
    "raw, want",
    [
        (
            {"resize_mode": 0, "control_mode": 2, "hr_option": 1},
            ("Just Resize", "ControlNet is more important", "Low res only"),
        ),
        (
            {"resize_mode": "Envelope (Outer Fit)", "control_mode": "my prompt is more important"},
            ("Resize and Fill", "My prompt is more important", "Both"),
        ),
        ({"resize_mode": "Inner Fit (Scale to Fit)"}, ("Crop and Resize", "Balanced", "Both")),
    ],
)
def test_unit_legacy_forms(raw: dict, want: tuple) -> None:
    u = ControlNetUnit.model_validate(raw)
    assert (u.resize_mode, u.control_mode, u.hr_option) == want
    assert u.enabled is False and u.module == "none" and u.weight == 1.0 and u.processor_res == -1


def test_unit_old_field_names() -> None:
    u = ControlNetUnit.model_validate(
        {"input_image": "abc", "lowvram": True, "guidance": 0.5, "mask_image": "m"}
    )
    assert (u.image, u.low_vram, u.guidance_end, u.mask) == ("abc", True, 0.5, "m")


def test_tiles_get_their_crop_of_the_unit_image() -> None:
    from PIL import Image

    from pipeline.jobs.controlnet.units import PassPicture, Unit, unit_hints

    full = np.zeros((64, 128, 3), np.uint8)
    full[:, :64] = 50
    full[:, 64:] = 200
    full[10:20, 70:80] = (255, 0, 0)
    spec = ControlNetUnit.model_validate({"enabled": True, "resize_mode": "Just Resize"})
    unit = Unit(0, 0, spec, None, preprocessors.resolve("none", "m"), full, 512, -1, -1)
    tiles = [Image.fromarray(full[:, :64]), Image.fromarray(full[:, 64:])]
    picture = PassPicture(tiles, boxes=[(0, 0, 64, 64), (64, 0, 128, 64)], full=(128, 64))
    left, right = unit_hints(unit, picture, 64, 64, (64, 64))
    assert (left == 50).all()
    assert np.abs(right.astype(int) - full[:, 64:]).max() <= 1
    whole = unit_hints(unit, None, 64, 64, (64, 64))
    assert len(whole) == 1 and whole[0].shape == (64, 64, 3)  # no tiles: the whole image, resized
    no_image = Unit(0, 0, spec, None, preprocessors.resolve("invert", "m"), None, 512, -1, -1)
    rows = unit_hints(no_image, picture, 64, 64, (64, 64))
    assert [int(r[0, 0, 0]) for r in rows] == [205, 55]  # each tile's own picture, inverted


def test_inpaint_hint_protocol_and_mask_resizing() -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :, :3] = 200
    rgba[:, 20:, 3] = 255
    up = hints.fit(rgba, hints.JUST_RESIZE, 80, 80)
    assert up.shape == (80, 80, 4) and set(np.unique(up[:, :, 3])) == {0, 255}
    t = hints.to_tensor(up)
    assert t.shape == (1, 3, 80, 80)
    assert (t[0, :, :, :38] - 200 / 255).abs().max() < 1e-6 and (t[0, :, :, 42:] == -1).all()
    filled = hints.fit(rgba[:10], hints.RESIZE_AND_FILL, 40, 40)
    assert (filled[:10, :, 3] == 255).all()  # the filled border is to be painted


def test_shuffle_is_the_seeded_content_shuffle() -> None:
    img = _picture(64, 64)
    pre = preprocessors.resolve("shuffle", "m")
    assert pre.settle(768, -1, -1)[0] == 512  # fixed at 512, as the extension
    got = pre.apply(img, 512, -1, -1, seed=123)
    np.random.seed(123)  # the extension seeds NumPy's global generator, then draws two noise disks
    r = _resized(img, 512)

    def disk() -> np.ndarray:
        noise = np.random.uniform(low=0, high=1, size=(4, 4, 1))
        noise = cv2.resize(noise, (1024, 1024), interpolation=cv2.INTER_CUBIC)[256:768, 256:768]
        noise = (noise - noise.min()) / (noise - noise.min()).max()
        return noise[:, :, None]

    flow = np.concatenate([disk() * 511.0, disk() * 511.0], axis=2).astype(np.float32)
    assert np.array_equal(got, cv2.remap(r, flow, None, cv2.INTER_LINEAR))
    assert np.array_equal(got, pre.apply(img, 512, -1, -1, seed=123))
    assert not np.array_equal(got, pre.apply(img, 512, -1, -1, seed=124))


def test_one_pixel_edges_stay_one_pixel_when_resized() -> None:
    edges = cv2.Canny(_resized(_picture(), 64), 100, 200)
    m = np.stack([edges] * 3, axis=2)
    for size in (150, 40):
        out = hints.fit(m, hints.JUST_RESIZE, size, size)[:, :, 0]
        assert set(np.unique(out)) <= {0, 255} and out.max() == 255
        on = out > 0
        blocks = on[:-1, :-1] & on[1:, :-1] & on[:-1, 1:] & on[1:, 1:]
        assert not blocks.any()  # no 2x2 block: the lines are one pixel wide
    # what the thinning strips: a 3-pixel-wide bar becomes its 1-pixel spine
    bar = np.zeros((20, 20), np.uint8)
    bar[9:12, 3:17] = 255
    thin = hints.thin_edges(bar, prune=False)
    assert thin[10, 5:15].all() and not thin[9, 5:15].any() and not thin[11, 5:15].any()


def test_recolor_and_color_grid() -> None:
    img = _picture()
    lum = _run("recolor_luminance", img, a=0.8)
    want = (
        ((cv2.cvtColor(img, cv2.COLOR_BGR2LAB)[:, :, 0] / 255.0) ** 0.8 * 255).clip(0, 255).astype(np.uint8)
    )
    assert np.array_equal(lum[:, :, 0], want) and np.array_equal(lum[:, :, 2], want)
    inten = _run("recolor_intensity", img)
    assert np.array_equal(inten[:, :, 1], cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[:, :, 2])
    grid = _run("t2ia_color_grid", img, 128)
    big = cv2.resize(img, (171, 128), interpolation=cv2.INTER_AREA)
    small = cv2.resize(big, (2, 2), interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(grid, cv2.resize(small, (171, 128), interpolation=cv2.INTER_NEAREST))
