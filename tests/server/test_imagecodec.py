"""Image codec: safe base64 decoding, metadata-preserving encoding, png-info style reading."""
from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from pipeline.runtime.errors import InvalidRequest
from server.imagecodec import (
    ImageDecodeError,
    ImageEncodeError,
    decode_image,
    encode_image,
    encode_image_b64,
    read_image_info,
)

LIMIT = 4096 * 4096
INFOTEXT = (
    "a cat on a windowsill, 猫, (sunlight:1.2)\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234, Size: 64x48, "
    'Hires upscaler: Latent, Lora hashes: "a: 123, b: 456", Version: v1.10.1'
)


def _gradient(mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> Image.Image:
    img = Image.new("RGB", size)
    w, h = size
    img.putdata([((x * 4) % 256, (y * 5) % 256, (x + y) % 256) for y in range(h) for x in range(w)])
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(128)
    return img


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int, idat_raw: bytes = b"\x00" * 16) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(idat_raw))
        + _png_chunk(b"IEND", b"")
    )


def _png_bytes(img: Image.Image, **texts: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in texts.items():
        info.add_text(k, v)
    out = io.BytesIO()
    img.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


# --- decoding: accepted inputs ------------------------------------------------------------------------


def test_decodes_raw_base64_png_and_keeps_its_text_chunks():
    img = decode_image(_b64(_png_bytes(_gradient(), parameters=INFOTEXT)), max_pixels=LIMIT)
    assert img.size == (64, 48) and img.mode == "RGB"
    assert img.tobytes() == _gradient().tobytes()
    assert read_image_info(img)[0] == INFOTEXT


@pytest.mark.parametrize(
    "prefix", ["data:image/png;base64,", "data:image/jpeg;base64,", "DATA:image/png;BASE64,"]
)
def test_decodes_data_urls(prefix):
    img = decode_image(prefix + _b64(_png_bytes(_gradient())), max_pixels=LIMIT)
    assert img.size == (64, 48)


def test_whitespace_and_missing_padding_are_tolerated():
    raw = next(r for n in range(3) if len(r := _png_bytes(_gradient(size=(5, 3)), note="x" * n)) % 3)
    text = _b64(raw)
    assert text.endswith("=")  # the test must exercise missing padding
    wrapped = "\n  ".join(text.rstrip("=")[i:i + 60] for i in range(0, len(text.rstrip("=")), 60))
    img = decode_image("  " + wrapped + "\r\n", max_pixels=LIMIT)
    assert img.size == (5, 3)


def test_url_safe_base64_is_accepted():
    texts = (base64.urlsafe_b64encode(_png_bytes(_gradient(size=(33, 17 + n)))).decode() for n in range(50))
    text = next(t for t in texts if ("-" in t or "_" in t))
    assert decode_image(text, max_pixels=LIMIT).width == 33


def test_palette_png_with_alpha_table_becomes_rgba_like_a1111():
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    out = io.BytesIO()
    pal.save(out, format="PNG", transparency=bytes([0, 128, 255]))
    img = decode_image(_b64(out.getvalue()), max_pixels=LIMIT)
    assert img.mode == "RGBA"


def test_exif_orientation_is_applied_like_a1111():
    src = _gradient(size=(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = io.BytesIO()
    src.save(out, format="JPEG", exif=exif.tobytes())
    img = decode_image(_b64(out.getvalue()), max_pixels=LIMIT)
    assert img.size == (20, 40)


# --- decoding: refused inputs ------------------------------------------------------------------------


def _refused(data, field: str = "init_images[0]", max_pixels: int = LIMIT) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, field=field, max_pixels=max_pixels)
    err = info.value
    assert err.field == field
    assert str(err).startswith(f"{field}: ")
    assert isinstance(err, InvalidRequest)  # the server's 4xx family
    return err


def test_bomb_png_is_refused_from_the_header():
    # 100000 x 100000 declared, a few bytes of IDAT: Pillow's own guard fires inside Image.open.
    err = _refused(_b64(_png_declaring(100_000, 100_000)))
    assert "too large" in err.reason and str(LIMIT) in err.reason


def test_large_declared_size_below_pillows_guard_is_refused_before_decoding():
    # 5000 x 5000 is under Pillow's limit but over ours; decoding it would fail on the tiny IDAT
    # ("truncated"), so a "too large" error proves the header check came first.
    err = _refused(_b64(_png_declaring(5000, 5000)), max_pixels=1024 * 1024)
    assert "5000x5000" in err.reason and "too large" in err.reason


def test_truncated_png_is_refused():
    raw = _png_bytes(_gradient(size=(256, 256)))
    err = _refused(_b64(raw[: len(raw) // 2]))
    assert "truncated" in err.reason and "complete" in err.reason


def test_truncated_jpeg_is_refused():
    out = io.BytesIO()
    _gradient(size=(256, 256)).save(out, format="JPEG")
    raw = out.getvalue()
    err = _refused(_b64(raw[: len(raw) // 3]))
    assert "truncated" in err.reason or "corrupt" in err.reason


def test_random_bytes_are_not_an_image():
    raw = bytes((i * 97 + 13) % 256 for i in range(3000))
    err = _refused(_b64(raw))
    assert "not an image" in err.reason and "PNG" in err.reason
    assert "BytesIO" not in str(err)


def test_text_that_is_base64_but_not_an_image():
    err = _refused(_b64(b"hello world, this is text"))
    assert "not an image" in err.reason


@pytest.mark.parametrize("data", ["", "   \n\t", "data:image/png;base64,"])
def test_empty_input_is_refused(data):
    err = _refused(data)
    assert "empty" in err.reason or "no data" in err.reason


@pytest.mark.parametrize("url", ["http://example.com/cat.png", "https://example.com/cat.png", "HTTPS://x/y"])
def test_urls_are_refused_without_a_fetch_policy(url):
    err = _refused(url)  # the routes pass one (A1111's api_* options): tests/server/test_image_urls_http.py
    assert "not fetched" in err.reason and "base64" in err.reason


@pytest.mark.parametrize("url", ["ftp://example.com/cat.png", "file:///etc/passwd"])
def test_other_url_schemes_are_refused(url):
    err = _refused(url)
    assert "only http and https" in err.reason


def test_bad_base64_characters_are_reported_with_position():
    text = _b64(_png_bytes(_gradient()))
    bad = text[:10] + "!" + text[11:]
    err = _refused(bad)
    assert "'!'" in err.reason and "position 10" in err.reason


def test_padding_in_the_middle_is_refused():
    err = _refused("QUJD=QUJD")
    assert "padding" in err.reason


def test_impossible_base64_length_is_refused():
    err = _refused("QUJDR")
    assert "base64" in err.reason


def test_non_base64_data_url_is_refused():
    err = _refused("data:image/png," + _b64(_png_bytes(_gradient())))
    assert "base64" in err.reason


def test_zero_size_image_is_refused():
    err = _refused(_b64(_png_declaring(0, 0)))
    assert "not an image" in err.reason or "zero" in err.reason


def test_non_string_input_is_refused():
    err = _refused(None)
    assert "base64 string" in err.reason


def test_error_names_the_field_used_by_the_caller():
    err = _refused("", field="imageList[3].data")
    assert str(err).startswith("imageList[3].data: ")


# --- encoding ---------------------------------------------------------------------------------------


def _reopen(raw: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(raw))
    img.load()
    return img


def test_png_round_trip_with_unicode_infotext_and_extra_chunks():
    chunks = {"parameters": INFOTEXT, "postprocessing": "Postprocess upscale by: 2.0"}
    raw = encode_image(_gradient(), "png", text_chunks=chunks)
    img = _reopen(raw)
    assert img.format == "PNG"
    info, items = read_image_info(img)
    assert info == INFOTEXT
    assert items == {"postprocessing": "Postprocess upscale by: 2.0"}
    assert img.tobytes() == _gradient().tobytes()


def test_png_keeps_existing_text_entries_unless_overridden_or_removed():
    src = _gradient()
    src.info.update({"parameters": "old", "extras": "keep me", "Software": "tool", "dpi": (72, 72)})
    img = _reopen(encode_image(src, text_chunks={"parameters": "new", "Software": None}))
    assert img.info["parameters"] == "new"
    assert img.info["extras"] == "keep me"
    assert "Software" not in img.info


def test_png_bytes_are_deterministic():
    a = encode_image(_gradient("RGBA"), text_chunks={"parameters": INFOTEXT})
    b = encode_image(_gradient("RGBA"), text_chunks={"parameters": INFOTEXT})
    assert a == b
    assert b"tIME" not in a


@pytest.mark.parametrize("fmt", ["jpg", "jpeg", "JPEG", "webp"])
def test_jpeg_and_webp_store_the_infotext_in_exif_user_comment(fmt):
    raw = encode_image(_gradient("RGBA"), fmt, text_chunks={"parameters": INFOTEXT}, jpeg_quality=90)
    img = _reopen(raw)
    assert img.format == ("WEBP" if fmt == "webp" else "JPEG")
    assert img.mode == "RGB"
    info, items = read_image_info(img)
    assert info == INFOTEXT
    assert "exif" not in items


def test_exif_user_comment_is_written_as_a1111_does():
    raw = encode_image(_gradient(), "jpeg", text_chunks={"parameters": "猫 cat"})
    comment = _reopen(raw).getexif().get_ifd(0x8769)[0x9286]
    assert comment == b"UNICODE\x00" + "猫 cat".encode("utf-16-be")


def test_exif_user_comment_from_other_writers_is_read():
    for body in (b"UNICODE\x00" + "a cat".encode("utf-16-le"), b"ASCII\x00\x00\x00a cat", b"a cat"):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9286] = body
        out = io.BytesIO()
        _gradient().save(out, format="JPEG", exif=exif.tobytes())
        assert read_image_info(_reopen(out.getvalue()))[0] == "a cat", body


def test_jpeg_and_webp_bytes_are_deterministic():
    for fmt in ("jpeg", "webp"):
        a = encode_image(_gradient(), fmt, text_chunks={"parameters": INFOTEXT})
        b = encode_image(_gradient(), fmt, text_chunks={"parameters": INFOTEXT})
        assert a == b, fmt


def test_info_parameters_are_used_for_jpeg_when_no_chunks_given():
    src = _gradient()
    src.info["parameters"] = INFOTEXT
    assert read_image_info(_reopen(encode_image(src, "jpg")))[0] == INFOTEXT


def test_unknown_output_format_is_a_typed_error():
    with pytest.raises(ImageEncodeError) as info:
        encode_image(_gradient(), "gif")
    assert info.value.valid == ["png", "jpg", "jpeg", "webp"]
    assert "gif" in str(info.value)


def test_webp_size_limit_is_a_typed_error():
    with pytest.raises(ImageEncodeError) as info:
        encode_image(Image.new("RGB", (16384 + 1, 1)), "webp")
    assert "webp" in str(info.value)


def test_encode_b64_has_no_data_prefix_and_decodes_back():
    text = encode_image_b64(_gradient(), text_chunks={"parameters": INFOTEXT})
    assert not text.startswith("data:")
    img = decode_image(text, max_pixels=LIMIT)
    assert read_image_info(img)[0] == INFOTEXT


def test_unusual_modes_are_encoded():
    for mode in ("L", "LA", "P", "CMYK", "I;16", "1"):
        img = _gradient().convert(mode) if mode != "I;16" else Image.new("I;16", (8, 8))
        for fmt in ("png", "jpeg", "webp"):
            assert _reopen(encode_image(img, fmt)).size == img.size


# --- reading metadata ----------------------------------------------------------------------------------


def test_read_info_of_plain_image_is_empty():
    info, items = read_image_info(_gradient())
    assert info == "" and items == {}


def test_technical_keys_are_dropped_and_bytes_decoded():
    img = _gradient()
    img.info.update(
        {"dpi": (72, 72), "gamma": 0.45, "icc_profile": b"\0\1", "extras": b"upscaled", "note": "x"}
    )
    info, items = read_image_info(img)
    assert items == {"extras": "upscaled", "note": "x"}
    json.dumps(items)


def test_gif_comment_is_the_infotext():
    out = io.BytesIO()
    _gradient().convert("P").save(out, format="GIF", comment=INFOTEXT.encode("utf-8"))
    info, _ = read_image_info(_reopen(out.getvalue()))
    assert info == INFOTEXT


def test_novelai_png_is_converted_to_an_infotext():
    comment = json.dumps(
        {"uc": "lowres, bad anatomy", "steps": 28, "scale": 11, "seed": 42, "sampler": "k_euler_ancestral"}
    )
    raw = _png_bytes(_gradient(), Software="NovelAI", Description="1girl, smile", Comment=comment)
    info, items = read_image_info(_reopen(raw))
    assert info == (
        "1girl, smile\nNegative prompt: lowres, bad anatomy\n"
        "Steps: 28, Sampler: Euler a, CFG scale: 11, Seed: 42, Size: 64x48, Clip skip: 2, ENSD: 31337"
    )
    assert items["Software"] == "NovelAI"


def test_broken_novelai_comment_leaves_info_alone():
    raw = _png_bytes(_gradient(), Software="NovelAI", Comment="{not json")
    assert read_image_info(_reopen(raw))[0] == ""
