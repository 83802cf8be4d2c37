"""Textual-inversion embeddings stored in images, as A1111 v1.10 writes and reads them (`.png`, `.webp`,
`.jxl`, `.avif` in the embeddings folder; `<name>.preview.<ext>` files are previews, never embeddings).

Two carriers, tried in this order:
  text chunk  the PNG text key `sd-ti-embedding`: base64 of the embedding dict as JSON, each tensor written
              as {"TORCHTENSOR": nested lists}.
  pixels      the same JSON, zlib-compressed, hidden in the low 4 bits of two side panels: the image is laid
              out as [low-nibble panel | black column | picture | black column | high-nibble panel]. After
              cropping the black border, the columns whose low nibbles are all zero separate the panels;
              each panel's low nibbles (row-major, RGB) are XORed with a fixed linear-congruential stream
              (x <- 1664525 x + 1013904223 mod 2^32, from 0; byte = x mod 255, its low 4 bits), and the
              bytes are high << 4 | low.
An image with neither is a plain picture (None). Only JSON is parsed: nothing in the file can run code."""
from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

SUFFIXES = (".png", ".webp", ".jxl", ".avif")
TEXT_KEY = "sd-ti-embedding"
MAX_JSON_BYTES = 64 << 20  # a decompressed payload beyond this is refused (no zip bombs)


def is_preview(path: Path) -> bool:
    return Path(path.stem).suffix.lower() == ".preview"


def _tensors(obj: Any) -> Any:
    """json object hook: {"TORCHTENSOR": lists} -> a float32 tensor."""
    if isinstance(obj, dict) and "TORCHTENSOR" in obj:
        return torch.tensor(np.asarray(obj["TORCHTENSOR"], dtype=np.float64), dtype=torch.float32)
    return obj


def _json(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw, object_hook=_tensors)
    if not isinstance(data, dict):
        raise ValueError(f"the embedded JSON is a {type(data).__name__}, not an object")
    return data


def lcg_nibbles(n: int) -> np.ndarray:
    """The first `n` values of the stream that masks the panels (low 4 bits of each)."""
    out = np.empty(n, dtype=np.uint8)
    x = 0
    for i in range(n):
        x = (1664525 * x + 1013904223) % 2**32
        out[i] = (x % 255) & 0x0F
    return out


def _crop_black(pixels: np.ndarray) -> np.ndarray:
    """The bounding box of the pixels whose three channels are all above zero."""
    lit = (pixels > 0).all(axis=2)
    cols, rows = np.flatnonzero(lit.any(axis=0)), np.flatnonzero(lit.any(axis=1))
    if cols.size == 0:
        return pixels[:0, :0]
    return pixels[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]


def _from_pixels(image: Image.Image) -> dict[str, Any] | None:
    low_bits = _crop_black(np.asarray(image.convert("RGB"), dtype=np.uint8)) & 0x0F
    black = np.flatnonzero(low_bits.sum(axis=(0, 2)) == 0)
    if black.size < 2:
        return None
    lower, upper = low_bits[:, : black.min()], low_bits[:, black.max() + 1:]
    if lower.shape != upper.shape or lower.size == 0:
        return None
    mask = lcg_nibbles(lower.size).reshape(lower.shape)
    payload = (((upper ^ mask) << 4) | (lower ^ mask)).astype(np.uint8).tobytes()
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(payload, MAX_JSON_BYTES)
    except zlib.error:
        return None  # black columns by chance, no data: a picture
    if inflater.unconsumed_tail:
        raise ValueError(f"the hidden data inflates beyond {MAX_JSON_BYTES >> 20} MiB")
    return _json(raw)


def read_image_embedding(path: Path) -> tuple[str, dict[str, Any]] | None:
    """(name, embedding dict) of an image embedding: the dict's `name` if it has one, else the file stem.
    None for a preview or a plain picture. Raises ValueError / OSError for a broken file."""
    if is_preview(path):
        return None
    with Image.open(path) as image:
        text = getattr(image, "text", None) or {}
        if TEXT_KEY in text:
            data = _json(base64.b64decode(text[TEXT_KEY]))
        else:
            data = _from_pixels(image)
    if data is None:
        return None
    name = data.get("name")
    return (name if isinstance(name, str) and name else path.stem), data
