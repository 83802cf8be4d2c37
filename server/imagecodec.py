"""Images in and out of the API: base64 decoding with safety checks, encoding with metadata.

Inputs are base64 strings, `data:image/...;base64,` URLs, or http(s) URLs fetched as A1111 fetches them
(`server.imagefetch`: A1111's options api_enable_requests, api_forbid_local_requests and api_useragent).
Outputs are PNG (every text entry becomes a tEXt/iTXt chunk, the infotext under `parameters`) or
JPEG/WEBP (the `parameters` text goes into EXIF UserComment, Unicode, as A1111 writes it).

Errors are typed (`ImageDecodeError`, `ImageEncodeError`); the server maps them to HTTP responses.
No FastAPI here.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import re
import struct
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

from pipeline.runtime.errors import InvalidRequest
from server.imagefetch import FetchRefused, UrlFetch, fetch_url, is_url, shown
from server.pngwrite import CHANNELS as PNG_CHANNELS
from server.pngwrite import write_png

__all__ = [
    "ImageDecodeError",
    "ImageEncodeError",
    "OUTPUT_FORMATS",
    "UrlFetch",
    "decode_image",
    "encode_image",
    "encode_image_b64",
    "read_image_info",
]

# Formats we open. Restricting Pillow to these keeps exotic decoders (EPS runs Ghostscript, ...) out.
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
# `samples_format` values we can write (A1111's set).
OUTPUT_FORMATS = ("png", "jpg", "jpeg", "webp")

_HOW_TO_SEND = ("send the image file itself as base64, optionally as a data:image/...;base64, URL, or an "
                "http(s) URL")


class ImageDecodeError(InvalidRequest):
    """An input image that cannot be used; `field` names the request field or list item."""

    def __init__(self, field: str, reason: str):
        super().__init__(field, reason)
        self.reason = reason


class ImageEncodeError(InvalidRequest):
    """An output image that cannot be written as asked (unknown format, too large for the format)."""

    def __init__(self, field: str, reason: str, valid: list[str] | None = None):
        super().__init__(field, reason, valid)
        self.reason = reason


# --------------------------------------------------------------------------------------------------
# decoding

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_DATA_URL = re.compile(r"^data:(?P<media>[^,]*?),", re.IGNORECASE)
_BASE64_BAD_CHAR = re.compile(r"[^A-Za-z0-9+/=]")


def _base64_payload(data: object, field: str) -> bytes:
    """Decode the request string to file bytes, or raise ImageDecodeError saying what is wrong."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("ascii")
        except UnicodeDecodeError:
            raise ImageDecodeError(field, f"expected a base64 string; {_HOW_TO_SEND}") from None
    if not isinstance(data, str):
        raise ImageDecodeError(field, f"expected a base64 string, got {type(data).__name__}; {_HOW_TO_SEND}")

    text = "".join(data.split())  # whitespace anywhere (line-wrapped base64 included)
    if not text:
        raise ImageDecodeError(field, f"the image is empty; {_HOW_TO_SEND}")

    if _URL_SCHEME.match(text):
        raise ImageDecodeError(field, f"only http and https URLs are fetched, not {shown(text)}; "
                                      f"{_HOW_TO_SEND}")

    m = _DATA_URL.match(text)
    if m is not None:
        params = m.group("media").split(";")
        if "base64" not in (p.lower() for p in params[1:]):
            raise ImageDecodeError(
                field, "the data: URL is not base64-encoded; expected data:image/png;base64,<base64 data>"
            )
        text = text[m.end():]
        if not text:
            raise ImageDecodeError(field, f"the data: URL carries no data; {_HOW_TO_SEND}")
    elif text[:5].lower() == "data:":
        raise ImageDecodeError(field, "malformed data: URL; expected data:image/png;base64,<base64 data>")

    if "+" not in text and "/" not in text and ("-" in text or "_" in text):
        text = text.replace("-", "+").replace("_", "/")  # URL-safe alphabet
    bad = _BASE64_BAD_CHAR.search(text)
    if bad is not None:
        raise ImageDecodeError(
            field,
            f"not valid base64: unexpected character {bad.group(0)!r} "
            f"at position {bad.start()} of the base64 data; "
            "base64 uses only A-Z, a-z, 0-9, '+', '/' and '=' padding",
        )
    body = text.rstrip("=")
    if "=" in body:
        raise ImageDecodeError(
            field, f"not valid base64: '=' padding at position {body.index('=')} before the end of the data"
        )
    if len(body) % 4 == 1:
        raise ImageDecodeError(
            field, "not valid base64: the data length is impossible (truncated or corrupted?)"
        )
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageDecodeError(field, f"not valid base64 ({e})") from None
    if not raw:
        raise ImageDecodeError(field, f"the image is empty; {_HOW_TO_SEND}")
    return raw


def _pixel_limit_text(max_pixels: int) -> str:
    side = int(max_pixels**0.5)
    return f"{max_pixels} pixels (about {side}x{side})"


def _payload(data: object, field: str, fetch_policy: UrlFetch | None) -> bytes:
    """The file bytes of a request's image: fetched for an http(s) URL, else decoded from base64."""
    if isinstance(data, str) and is_url(data.strip()):
        if fetch_policy is None:
            raise ImageDecodeError(field, f"image URLs are not fetched here ({shown(data.strip())}); "
                                          "send the image itself as base64")
        try:
            return fetch_url(data.strip(), fetch_policy)
        except FetchRefused as exc:
            raise ImageDecodeError(field, str(exc)) from None
    return _base64_payload(data, field)


def decode_image(data: str, *, field: str = "image", max_pixels: int,
                 fetch: UrlFetch | None = None) -> Image.Image:
    """Decode a base64, `data:` URL or http(s) URL image, refusing anything unsafe or broken before using it.

    An http(s) URL is fetched under `fetch` (A1111's api_* options for this request, see
    `server.imagefetch`); without it a URL is refused.

    The pixel count is checked from the header, before any pixel is decoded; Pillow's own
    decompression-bomb guard is turned into the same error. Like A1111, the image is rotated by its
    EXIF orientation and palette images with byte transparency become RGBA. `img.info` (text chunks,
    EXIF) is kept, so `read_image_info` works on the result.
    """
    raw = _payload(data, field, fetch)
    formats = _input_formats()
    too_large = (
        f"the image is too large: it declares more pixels than allowed ({_pixel_limit_text(max_pixels)}); "
        "send a smaller image"
    )
    try:
        img = Image.open(io.BytesIO(raw), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(field, f"{too_large} ({_short(e)})") from None
    except Exception as e:  # Pillow raises many types for garbage (OSError, SyntaxError, struct.error, ...)
        raise ImageDecodeError(
            field,
            f"the {len(raw)} decoded bytes are not an image in a supported format "
            f"({', '.join(formats)}): {_short(e)}",
        ) from None

    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(
            field, f"the image has zero width or height ({width}x{height}); send at least 1x1"
        )
    if width * height > max_pixels:
        raise ImageDecodeError(
            field,
            f"the image is too large: {width}x{height} = {width * height} pixels, more than the limit of "
            f"{_pixel_limit_text(max_pixels)}; downscale it before sending",
        )

    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(field, too_large) from None
    except MemoryError:
        raise ImageDecodeError(field, f"not enough memory to decode a {width}x{height} image") from None
    except Exception as e:
        what = "truncated" if isinstance(e, EOFError) or "truncat" in str(e).lower() else "corrupt"
        raise ImageDecodeError(
            field,
            f"the {img.format or 'image'} data is {what} ({_short(e)}); send the complete, unmodified file",
        ) from None

    return _fix_image(img)


def _input_formats() -> list[str]:
    Image.init()
    return [f for f in INPUT_FORMATS if f in Image.OPEN]


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the data", text)
    return text if len(text) <= 200 else text[:197] + "..."


def _fix_image(img: Image.Image) -> Image.Image:
    """A1111's post-open fixes: EXIF orientation, then palette transparency given as bytes -> RGBA."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not make a readable image unusable
        pass
    if img.mode in ("RGB", "P") and isinstance(img.info.get("transparency"), bytes):
        img = img.convert("RGBA")  # keeps `info` (text chunks), drops `transparency`
    return img


# --------------------------------------------------------------------------------------------------
# EXIF UserComment (the infotext of JPEG/WEBP files)

_EXIF_IFD_POINTER = 0x8769
_USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
_JIS_PREFIX = b"JIS\x00\x00\x00\x00\x00"


def _exif_with_user_comment(text: str) -> bytes:
    """A minimal EXIF block (big-endian TIFF) holding only UserComment = text.

    Written like A1111 (piexif `UserComment.dump(text, encoding="unicode")`): the 8-byte `UNICODE\\0`
    code followed by UTF-16 big-endian, tag type UNDEFINED. Deterministic bytes.
    """
    comment = _UNICODE_PREFIX + text.encode("utf-16-be")
    exif_ifd_offset = 8 + 2 + 12 + 4  # header, IFD0 with one entry and its next-IFD link
    data_offset = exif_ifd_offset + 2 + 12 + 4
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8)
    no_next_ifd = b"\0\0\0\0"
    # IFD0: one entry, LONG pointer to the Exif IFD.
    tiff += struct.pack(">HHHII", 1, _EXIF_IFD_POINTER, 4, 1, exif_ifd_offset) + no_next_ifd
    # Exif IFD: one entry, UserComment as UNDEFINED (type 7) bytes stored after the IFD.
    tiff += struct.pack(">HHHII", 1, _USER_COMMENT, 7, len(comment), data_offset) + no_next_ifd
    return b"Exif\x00\x00" + tiff + comment


def _decode_user_comment(value: object) -> str:
    if isinstance(value, (tuple, list)):
        try:
            value = bytes(value)
        except (TypeError, ValueError):
            return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, (bytes, bytearray)):
        return ""
    value = bytes(value)
    prefix, body = value[:8], value[8:]
    if prefix == _UNICODE_PREFIX:
        text = _decode_utf16(body)
    elif prefix == _ASCII_PREFIX:
        text = body.decode("ascii", errors="replace")
    elif prefix == _JIS_PREFIX:
        text = body.decode("shift_jis", errors="replace")
    else:  # A1111 falls back to UTF-8 over the whole value
        text = value.decode("utf-8", errors="ignore")
    return text.rstrip("\x00")


def _decode_utf16(body: bytes) -> str:
    """UTF-16 as A1111 reads it (big-endian), honouring a BOM, and accepting little-endian text.

    A1111/piexif write big-endian; some other tools write little-endian without a BOM. Mostly-ASCII
    text shows which: zero bytes sit at even offsets in big-endian and at odd offsets in little-endian.
    """
    if body[:2] == b"\xfe\xff":
        return body[2:].decode("utf-16-be", errors="replace")
    if body[:2] == b"\xff\xfe":
        return body[2:].decode("utf-16-le", errors="replace")
    even_zeros = body[0::2].count(0)
    odd_zeros = body[1::2].count(0)
    encoding = "utf-16-le" if odd_zeros > even_zeros else "utf-16-be"
    return body.decode(encoding, errors="replace")


def _exif_user_comment(img: Image.Image) -> str:
    raw = img.info.get("exif")
    if not raw:
        return ""
    try:
        exif = Image.Exif()
        exif.load(raw if isinstance(raw, bytes) else bytes(raw))
        return _decode_user_comment(exif.get_ifd(_EXIF_IFD_POINTER).get(_USER_COMMENT))
    except Exception:  # broken EXIF: no comment
        return ""


# --------------------------------------------------------------------------------------------------
# reading metadata

# `info` entries that describe the file rather than carry user metadata (A1111's list, and more).
TECHNICAL_INFO_KEYS = frozenset({
    "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
    "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop",
    "adobe", "adobe_transform", "transparency", "gamma", "srgb", "aspect", "compression", "interlace",
    "version", "extension", "xmp", "mp", "mpoffset", "mpentry", "resolution", "disposal", "blend",
    "default_image", "bbox", "palette", "n_frames", "exif_offset",
})

# NovelAI sampler ids -> A1111 sampler names (A1111 maps through its sampler aliases, else "Euler a").
_NOVELAI_SAMPLERS = {
    "k_euler_a": "Euler a", "k_euler_ancestral": "Euler a", "k_euler": "Euler", "k_lms": "LMS",
    "k_heun": "Heun", "k_dpm_2": "DPM2", "k_dpm_2_a": "DPM2 a", "k_dpmpp_2s_a": "DPM++ 2S a",
    "k_dpmpp_2m": "DPM++ 2M", "k_dpmpp_sde": "DPM++ SDE", "k_dpmpp_2m_sde": "DPM++ 2M SDE",
    "k_dpmpp_3m_sde": "DPM++ 3M SDE", "k_dpm_fast": "DPM fast", "k_dpm_ad": "DPM adaptive",
    "ddim": "DDIM", "plms": "PLMS", "unipc": "UniPC", "k_lcm": "LCM",
}


def read_image_info(img: Image.Image) -> tuple[str, dict]:
    """The infotext and the other metadata of an image, as `/sdapi/v1/png-info` reports them.

    `info` is the PNG `parameters` text, else the EXIF UserComment (JPEG/WEBP), else a `comment`
    (GIF), else "". NovelAI PNGs (`Software: NovelAI` with a JSON `Comment`) are turned into an
    A1111-style infotext. `items` holds the remaining entries minus technical ones, as JSON-friendly
    values (bytes decoded as UTF-8; other non-scalar values dropped).
    """
    items = dict(img.info or {})
    info = items.pop("parameters", None)
    if not isinstance(info, str) or not info:
        info = _exif_user_comment(img) or None
    if info is None and "comment" in items:
        comment = items["comment"]
        info = comment.decode("utf-8", errors="ignore") if isinstance(comment, bytes) else str(comment)
    for key in list(items):
        if not isinstance(key, str) or key in TECHNICAL_INFO_KEYS:
            items.pop(key)

    if items.get("Software") == "NovelAI":
        converted = _novelai_infotext(items, img.size)
        if converted is not None:
            info = converted

    clean: dict[str, object] = {}
    for key, value in items.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, (str, int, float, bool)):
            clean[key] = value
    return info or "", clean


def _novelai_infotext(items: Mapping[str, object], size: tuple[int, int]) -> str | None:
    try:
        meta = json.loads(str(items["Comment"]))
        sampler = _NOVELAI_SAMPLERS.get(str(meta["sampler"]).lower(), "Euler a")
        return (
            f"{items['Description']}\n"
            f"Negative prompt: {meta['uc']}\n"
            f"Steps: {meta['steps']}, Sampler: {sampler}, CFG scale: {meta['scale']}, Seed: {meta['seed']}, "
            f"Size: {size[0]}x{size[1]}, Clip skip: 2, ENSD: 31337"
        )
    except (KeyError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# encoding


def _png_keyword_ok(key: str) -> bool:
    try:
        encoded = key.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return 1 <= len(encoded) <= 79 and key == key.strip() and "\x00" not in key


# zlib level of the PNGs the server writes (--png-compress-level; A1111 writes Pillow's 6): see docs/speed.md "Time outside the forwards"
PNG_COMPRESS_LEVEL = 1
# `info` entries Pillow's PNG writer turns into chunks (iCCP, tRNS): such images are written by Pillow
_PILLOW_PNG_EXTRAS = ("icc_profile", "transparency")


def encode_image(
    img: Image.Image,
    fmt: str = "png",
    *,
    text_chunks: Mapping[str, str | None] | None = None,
    jpeg_quality: int = 80,
    compress_level: int = PNG_COMPRESS_LEVEL,
    webp_lossless: bool = False,
) -> bytes:
    """Encode an image as PNG, JPEG or WEBP, with A1111's metadata layout. Same input, same bytes.
    `compress_level` (PNG only, 0-9): zlib's effort; every level is a valid PNG of the same pixels.
    8-bit L/LA/RGB/RGBA PNGs are written by `server.pngwrite` (bands of rows deflated on several threads);
    other modes, and images carrying an ICC profile or transparency, by Pillow.

    PNG: every string entry of `img.info` and every entry of `text_chunks` (which override, and may
    remove with None) becomes a text chunk, in that order. JPEG/WEBP: RGBA and palette images become
    RGB and the `parameters` text goes into EXIF UserComment; `jpeg_quality` applies to both, and
    `webp_lossless` (A1111's option) makes WEBP lossless.
    """
    kind = (fmt or "").strip().lower()
    if kind not in OUTPUT_FORMATS:
        raise ImageEncodeError("samples_format", f"cannot write images as {fmt!r}", list(OUTPUT_FORMATS))

    texts: dict[str, str] = {}
    for key, value in (img.info or {}).items():
        if isinstance(key, str) and isinstance(value, str) and _png_keyword_ok(key):
            texts[key] = value
    for key, value in (text_chunks or {}).items():
        if value is None:
            texts.pop(key, None)
            continue
        if not _png_keyword_ok(key):
            raise ImageEncodeError(
                "text_chunks", f"{key!r} is not a valid PNG text keyword (1-79 Latin-1 characters)"
            )
        texts[key] = str(value)

    out = io.BytesIO()
    try:
        if kind == "png":
            if img.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
                img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
            if img.mode in PNG_CHANNELS and not any(k in img.info for k in _PILLOW_PNG_EXTRAS):
                return write_png(np.asarray(img), img.mode, level=compress_level, texts=texts.items())
            pnginfo = None
            if texts:
                pnginfo = PngImagePlugin.PngInfo()
                for key, value in texts.items():
                    pnginfo.add_text(key, value)
            img.save(out, format="PNG", pnginfo=pnginfo, compress_level=compress_level)
        else:
            if img.mode not in ("RGB", "L"):
                img = img.convert("RGB")
            parameters = texts.get("parameters", "")
            extra = {"exif": _exif_with_user_comment(parameters)} if parameters else {}
            if kind in ("jpg", "jpeg"):
                img.save(out, format="JPEG", quality=jpeg_quality, **extra)
            else:
                img.save(out, format="WEBP", quality=jpeg_quality, lossless=webp_lossless, **extra)
    except (OSError, ValueError) as e:
        raise ImageEncodeError(
            "samples_format", f"cannot write this {img.width}x{img.height} image as {kind}: {_short(e)}"
        ) from None
    return out.getvalue()


def encode_image_b64(
    img: Image.Image,
    fmt: str = "png",
    *,
    text_chunks: Mapping[str, str | None] | None = None,
    jpeg_quality: int = 80,
    compress_level: int = PNG_COMPRESS_LEVEL,
    webp_lossless: bool = False,
) -> str:
    """`encode_image` as a base64 string without a `data:` prefix (what A1111 responses carry)."""
    raw = encode_image(img, fmt, text_chunks=text_chunks, jpeg_quality=jpeg_quality,
                       compress_level=compress_level, webp_lossless=webp_lossless)
    return base64.b64encode(raw).decode("ascii")


def encode_images_b64(
    images: Sequence[Image.Image],
    fmt: str = "png",
    *,
    text_chunks: Sequence[Mapping[str, str | None] | None] | None = None,
    jpeg_quality: int = 80,
    compress_level: int = PNG_COMPRESS_LEVEL,
    threads: int = 4,
    webp_lossless: bool = False,
) -> list[str]:
    """`encode_image_b64` for a batch, in order; several images are encoded on up to `threads` threads at
    once (zlib and libjpeg release the GIL, so a batch of 4 takes about half the time of one by one)."""
    chunks = list(text_chunks) if text_chunks is not None else [None] * len(images)

    def one(i: int) -> str:
        return encode_image_b64(images[i], fmt, text_chunks=chunks[i], jpeg_quality=jpeg_quality,
                                compress_level=compress_level, webp_lossless=webp_lossless)

    if len(images) < 2 or threads < 2:
        return [one(i) for i in range(len(images))]
    with ThreadPoolExecutor(min(threads, len(images)), thread_name_prefix="hiresd-encode") as pool:
        return list(pool.map(one, range(len(images))))
