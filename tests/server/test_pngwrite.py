"""server/pngwrite.py: the banded, multi-threaded PNG writer gives files that Pillow and libpng (through
torchvision) decode to exactly the same pixels, one valid zlib stream (zlib checks its Adler-32) with valid
chunk CRCs, the same bytes whatever the thread count, and A1111's `parameters` text chunk as Pillow writes
it."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from torchvision.io import decode_png

from server.imagecodec import encode_image
from server.pngwrite import _adler32_combine, write_png

CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def _pixels(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    smooth = (x * 3 + y * 5)[..., None] + np.arange(c) * 40
    return ((smooth + rng.integers(0, 6, (h, w, c))) % 256).astype(np.uint8)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, checking each CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        out.append((kind, body))
        pos += 12 + length
    return out


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(1, 1), (7, 3), (64, 48), (33, 130)])
def test_pillow_and_libpng_decode_the_same_pixels(mode: str, size: tuple[int, int]) -> None:
    h, w = size
    pixels = _pixels(h, w, CHANNELS[mode])
    # small bands: many independent deflate streams glued into one, also for a 1-pixel-high picture
    data = write_png(pixels, mode, level=6, band_bytes=64, threads=3)
    back = Image.open(io.BytesIO(data))
    assert back.mode == mode and back.size == (w, h)
    assert np.array_equal(np.asarray(back).reshape(h, w, -1), pixels)
    libpng = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    assert np.array_equal(libpng.permute(1, 2, 0).numpy(), pixels)


def test_one_zlib_stream_with_its_adler32_over_all_bands() -> None:
    pixels = _pixels(40, 50, 3)
    data = write_png(pixels, "RGB", band_bytes=300, threads=4)
    chunks = _chunks(data)
    idat = [body for kind, body in chunks if kind == b"IDAT"]
    assert len(idat) > 5 and [k for k, _ in chunks][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    filtered = zlib.decompress(b"".join(idat))  # raises on a bad Adler-32 or a stream that ends early
    assert len(filtered) == 40 * (1 + 50 * 3)


def test_adler32_combine_matches_zlib() -> None:
    data = np.random.default_rng(1).integers(0, 256, 100_000).astype(np.uint8).tobytes()
    for cut in (0, 1, 5552, 65521, 99_999):
        a, b = data[:cut], data[cut:]
        assert _adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(data)


def test_same_bytes_whatever_the_thread_count() -> None:
    pixels = _pixels(200, 300, 3)
    one = write_png(pixels, "RGB", threads=1, band_bytes=4096)
    assert write_png(pixels, "RGB", threads=2, band_bytes=4096) == one
    assert write_png(pixels, "RGB", threads=8, band_bytes=4096) == one


def test_text_chunks_as_pillow_writes_them() -> None:
    img = Image.fromarray(_pixels(16, 16, 3), "RGB")
    texts = {"parameters": "a cat\nNegative prompt: dog\nSteps: 20, Seed: 1",
             "unicode": "ein Kätzchen \u732b"}
    ours = _chunks(encode_image(img, "png", text_chunks=texts))
    info = PngImagePlugin.PngInfo()
    for k, v in texts.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    pillow = _chunks(buf.getvalue())
    wanted = [c for c in pillow if c[0] in (b"tEXt", b"iTXt")]
    assert [c for c in ours if c[0] in (b"tEXt", b"iTXt")] == wanted
    assert [k for k, _ in wanted] == [b"tEXt", b"iTXt"]
    assert Image.open(io.BytesIO(encode_image(img, "png", text_chunks=texts))).info == texts


def test_levels_keep_their_meaning() -> None:
    pixels = _pixels(128, 128, 3)
    sizes = {level: len(write_png(pixels, "RGB", level=level)) for level in (0, 1, 9)}
    assert sizes[0] > 128 * (1 + 128 * 3)  # stored: every filtered byte, not compressed
    assert sizes[1] < sizes[0] and sizes[9] <= sizes[1]
    with pytest.raises(ValueError, match="0-9"):
        write_png(pixels, "RGB", level=10)


def test_images_with_an_icc_profile_or_transparency_still_go_through_pillow() -> None:
    img = Image.fromarray(_pixels(8, 8, 3), "RGB")
    img.info["transparency"] = (1, 2, 3)
    kinds = [k for k, _ in _chunks(encode_image(img, "png"))]
    assert b"tRNS" in kinds
