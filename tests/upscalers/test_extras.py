"""The extras operation as a user of /sdapi/v1/extra-*-image sees it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from upscalers import (
    BadImage,
    ExtrasParams,
    FaceRestorationUnavailable,
    TooLarge,
    UnknownUpscaler,
    UpscalerRegistry,
    format_infotext,
    html_info,
    run_extras,
    upscale,
)

from .conftest import photo


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=int)


@pytest.mark.parametrize("factor", [0.5, 1, 1.5, 2, 2.55, 3, 4, 8])
def test_scale_mode_sizes_and_infotext(registry: UpscalerRegistry, factor: float) -> None:
    image = photo("chelsea", 45, 30)
    params = ExtrasParams(upscaling_resize=factor, upscaler_1="Compact-x4")
    [out], info = run_extras([image], params, registry)
    assert out.size == (int(45 * factor) // 8 * 8, int(30 * factor) // 8 * 8)
    assert info == f"Postprocess upscale by: {float(factor)}, Postprocess upscaler: Compact-x4"


@pytest.mark.parametrize("target", [(100, 100), (64, 200), (200, 64), (96, 72)])
def test_cover_mode_with_crop_gives_exactly_the_target(registry: UpscalerRegistry, target) -> None:
    image = photo("coffee", 60, 40)
    params = ExtrasParams(
        resize_mode=1, upscaling_resize_w=target[0], upscaling_resize_h=target[1], upscaler_1="Lanczos"
    )
    [out], info = run_extras([image], params, registry)
    assert out.size == target
    w, h = target
    assert info == (
        f"Postprocess upscale to: {w}x{h}, Postprocess crop to: {w}x{h}, Postprocess upscaler: Lanczos"
    )


def test_crop_is_centred(registry: UpscalerRegistry) -> None:
    image = photo("coffee", 60, 40)
    params = ExtrasParams(
        resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100, upscaler_1="ESRGAN-x2-old"
    )
    [cropped], _ = run_extras([image], params, registry)
    full = upscale(image, 2.5, registry.resolve("ESRGAN-x2-old"), registry)
    assert full.size == (144, 96)  # cover: 2.5x, rounded down to multiples of 8
    # pasted at (100 // 2 - 144 // 2, 100 // 2 - 96 // 2) = (-22, 2): 22 columns cut on each side,
    # and the 8 px rounding leaves black rows above (2) and below (2)
    assert np.array_equal(arr(cropped)[2:98], arr(full)[:, 22:122])
    assert arr(cropped)[:2].max() == 0 and arr(cropped)[98:].max() == 0


def test_cover_mode_without_crop_keeps_the_aspect(registry: UpscalerRegistry) -> None:
    params = ExtrasParams(
        resize_mode=1,
        upscaling_resize_w=100,
        upscaling_resize_h=100,
        upscaling_crop=False,
        upscaler_1="Lanczos",
    )
    [out], info = run_extras([photo("coffee", 60, 40)], params, registry)
    assert out.size == (144, 96)
    assert info == "Postprocess upscale to: 100x100, Postprocess upscaler: Lanczos"


def test_upscaler_none_means_no_resize_at_all(registry: UpscalerRegistry) -> None:
    image = photo("chelsea", 45, 30)
    params = ExtrasParams(
        upscaling_resize=4, upscaler_1="None", upscaler_2="Compact-x4", extras_upscaler_2_visibility=1
    )
    [out], info = run_extras([image], params, registry)
    assert np.array_equal(arr(out), arr(image))
    assert info == "" and out.info["postprocessing"] == ""
    assert html_info(info) == "<p></p>"


def test_upscaler_2_is_blended_by_visibility(registry: UpscalerRegistry) -> None:
    image = photo("astronaut", 40)
    first = arr(upscale(image, 2, registry.resolve("Compact-x4"), registry))
    second = arr(upscale(image, 2, registry.resolve("Nearest"), registry))
    assert np.abs(first - second).mean() > 5

    def run(visibility: float) -> tuple[np.ndarray, str]:
        params = ExtrasParams(
            upscaler_1="Compact-x4", upscaler_2="Nearest", extras_upscaler_2_visibility=visibility
        )
        [out], info = run_extras([image], params, registry)
        return arr(out), info

    zero, info0 = run(0)
    half, info5 = run(0.5)
    one, _ = run(1)
    assert np.array_equal(zero, first) and "upscaler 2" not in info0
    assert np.array_equal(one, second)
    assert np.abs(half - (first + second) / 2).max() <= 1
    assert info5 == (
        "Postprocess upscale by: 2.0, Postprocess upscaler: Compact-x4, Postprocess upscaler 2: Nearest"
    )


def test_metadata_text_is_kept_and_postprocessing_added(registry: UpscalerRegistry) -> None:
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, Seed: 1")
    chunk.add_text("Comment", "hello")
    buffer = io.BytesIO()
    photo("chelsea", 40, 24).save(buffer, "PNG", pnginfo=chunk, dpi=(72, 72))
    image = Image.open(io.BytesIO(buffer.getvalue()))
    [out], info = run_extras([image], ExtrasParams(upscaler_1="Lanczos"), registry)
    assert out.info == {
        "parameters": "a cat\nSteps: 20, Sampler: Euler a, Seed: 1",
        "Comment": "hello",
        "postprocessing": "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos",
    }


def test_batch_keeps_order_and_reports_the_last_infotext(registry: UpscalerRegistry) -> None:
    images = [photo("chelsea", 40, 24), photo("coffee", 32, 16), photo("astronaut", 24)]
    seen: list[tuple[int, int]] = []
    outs, info = run_extras(
        images,
        ExtrasParams(upscaling_resize=2, upscaler_1="ESRGAN-x2-new-sf"),
        registry,
        on_image=lambda d, t: seen.append((d, t)),
    )
    assert [o.size for o in outs] == [(80, 48), (64, 32), (48, 48)]
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert info == "Postprocess upscale by: 2.0, Postprocess upscaler: ESRGAN-x2-new-sf"


def test_alpha_and_palette_inputs(registry: UpscalerRegistry) -> None:
    rgba = photo("coffee", 60, 40).convert("RGBA")
    rgba.putalpha(200)
    params = ExtrasParams(
        resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=101, upscaler_1="Compact-x4"
    )
    (out, palette), _ = run_extras([rgba, photo("coffee", 60, 40).convert("P")], params, registry)
    assert out.mode == "RGBA" and out.size == (100, 101)
    alpha = arr(out.getchannel("A"))
    # the 144x96 result sits at y=2 on the 100x101 canvas: transparent bands, the image opaque
    assert alpha[:2].max() == 0 and alpha[98:].max() == 0
    assert abs(alpha[2:98].mean() - 200) <= 1
    assert palette.mode == "RGB" and palette.size == (100, 101)


def test_infotext_quoting_and_html() -> None:
    assert format_infotext({"Postprocess upscaler": "4x, sharp: v2", "Postprocess upscale by": 2.0}) == (
        'Postprocess upscaler: "4x, sharp: v2", Postprocess upscale by: 2.0'
    )
    assert html_info("a <b> & c\nnext") == "<p>a &lt;b&gt; &amp; c<br>\nnext</p>"


def test_names_are_checked_first_and_listed(registry: UpscalerRegistry) -> None:
    with pytest.raises(UnknownUpscaler, match="SwinIR 4x"):
        params = ExtrasParams(upscaler_1="None", upscaler_2="4x-UltraSharp")
        run_extras([photo("chelsea", 40, 24)], params, registry)
    [out], info = run_extras([photo("chelsea", 40, 24)], ExtrasParams(upscaler_1="SwinIR_4x"), registry)
    assert info.endswith("Postprocess upscaler: SwinIR 4x")


def test_face_restoration_is_a_clear_error_before_work(copy_models) -> None:
    reg = UpscalerRegistry(copy_models(**{"ESRGAN/x2.pth": "ESRGAN/ESRGAN-x2-old.pth"}))
    with pytest.raises(FaceRestorationUnavailable, match="gfpgan_visibility"):
        run_extras([photo("chelsea", 40, 24)], ExtrasParams(upscaler_1="x2", gfpgan_visibility=0.5), reg)
    with pytest.raises(FaceRestorationUnavailable, match="CodeFormer"):
        run_extras([photo("chelsea", 40, 24)], ExtrasParams(upscaler_1="x2", codeformer_visibility=1), reg)
    assert reg.cached_names() == []


def test_pixel_budget_is_enforced_before_any_model_work(copy_models) -> None:
    reg = UpscalerRegistry(copy_models(**{"ESRGAN/x2.pth": "ESRGAN/ESRGAN-x2-old.pth"}))
    seen: list[tuple[int, int]] = []
    images = [photo("chelsea", 40, 24), photo("chelsea", 400, 240)]
    with pytest.raises(TooLarge, match="3200x1920"):
        run_extras(
            images,
            ExtrasParams(upscaling_resize=8, upscaler_1="x2"),
            reg,
            max_pixels=2_000_000,
            on_image=lambda d, t: seen.append((d, t)),
        )
    assert seen == [] and reg.cached_names() == []
    with pytest.raises(TooLarge):
        params = ExtrasParams(
            resize_mode=1, upscaling_resize_w=4000, upscaling_resize_h=4000, upscaler_1="x2"
        )
        run_extras(images[:1], params, reg, max_pixels=2_000_000)
    assert reg.cached_names() == []


def test_empty_images_are_rejected_up_front(registry: UpscalerRegistry) -> None:
    with pytest.raises(BadImage) as info:
        images = [photo("chelsea", 40, 24), Image.new("RGB", (0, 0))]
        run_extras(images, ExtrasParams(upscaler_1="Lanczos"), registry)
    assert info.value.item == 1
    with pytest.raises(BadImage, match="0x0"):
        run_extras([photo("chelsea", 6, 6)], ExtrasParams(upscaling_resize=1, upscaler_1="Lanczos"), registry)


def test_swinir_takes_swin_tile() -> None:
    """SwinIR (spandrel: tiling discouraged, so tiled only after an out-of-memory error) takes `SWIN_tile`."""
    from upscalers.tiling import tile_for

    options = {"SWIN_tile": 96, "SWIN_tile_overlap": 4, "ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8}
    assert tile_for("SwinIR", options) == (96, 4)
    assert tile_for("HAT", options) == tile_for(None, options) == (192, 8)


@pytest.mark.parametrize("name,own", [("DAT-x2", "DAT"), ("ESRGAN-x4-new", "ESRGAN")])
def test_each_architecture_tiles_by_its_own_a1111_option(registry: UpscalerRegistry, name: str, own: str) -> None:
    """A1111 tiles DAT by `DAT_tile` and every other model (SwinIR aside) by `ESRGAN_tile`."""
    image = photo("chelsea", 80, 64)
    params = ExtrasParams(upscaling_resize=2, upscaler_1=name)

    def tiles(options: dict) -> int:
        seen: list[int] = []
        run_extras([image], params, registry, tile_options=options, on_tile=lambda done, total: seen.append(total))
        return max(seen)

    off = {k: 0 for k in ("DAT_tile", "SWIN_tile", "ESRGAN_tile")}
    overlaps = {f"{k}_overlap": 8 for k in ("DAT_tile", "SWIN_tile", "ESRGAN_tile")}
    assert tiles({**off, **overlaps}) == 1
    assert tiles({**off, **overlaps, f"{own}_tile": 32}) > 1  # its own option tiles it
    others = {f"{k}_tile": 32 for k in ("DAT", "SWIN", "ESRGAN") if k != own}
    assert tiles({**off, **overlaps, **others}) == 1  # the other architectures' options do not
