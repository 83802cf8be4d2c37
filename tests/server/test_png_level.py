"""--png-compress-level and batch encoding: every level gives a valid PNG of the same pixels with the infotext
chunk; a batch encoded on threads gives the same strings, in order, as one by one."""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from server.config import from_args
from server.imagecodec import encode_image, encode_images_b64


def _picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:96, 0:96]
    base = np.stack([x * 2, y * 2, (x + y)], -1) + rng.integers(0, 8, (96, 96, 3))
    return Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")


def test_every_level_is_the_same_picture_with_its_infotext() -> None:
    img = _picture(0)
    sizes = {}
    for level in (0, 1, 6, 9):
        raw = encode_image(img, "png", text_chunks={"parameters": "a cat\nSteps: 4"}, compress_level=level)
        back = Image.open(io.BytesIO(raw))
        assert back.format == "PNG" and back.info["parameters"] == "a cat\nSteps: 4"
        assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(img))
        sizes[level] = len(raw)
    assert sizes[0] > sizes[1] >= sizes[9]  # level 0 stores, higher levels compress


def test_batch_encoding_keeps_order_and_bytes() -> None:
    images = [_picture(s) for s in range(5)]
    chunks = [{"parameters": f"image {i}"} for i in range(5)]
    one_by_one = encode_images_b64(images, "png", text_chunks=chunks, threads=1)
    threaded = encode_images_b64(images, "png", text_chunks=chunks, threads=4)
    assert threaded == one_by_one
    for i, b64 in enumerate(threaded):
        assert Image.open(io.BytesIO(base64.b64decode(b64))).info["parameters"] == f"image {i}"


def test_flag_defaults_to_the_fast_level() -> None:
    assert from_args([], environ={}).png_compress_level == 1
    assert from_args(["--png-compress-level", "6"], environ={}).png_compress_level == 6
