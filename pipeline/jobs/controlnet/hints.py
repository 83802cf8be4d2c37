"""A detected map brought to a pass's size by the unit's resize mode, as the extension's `detectmap_proc`:

- Just Resize: stretched to the size;
- Crop and Resize: scaled to cover the size, centre-cropped;
- Resize and Fill: scaled to fit inside, centred on the median colour of the map's border.
Its resampling (`high_quality_resize`): maps with 3..199 colours nearest-neighbour (segmentation), else
area when shrinking and cubic when enlarging; a black-and-white map is re-binarised with Otsu's threshold
after resizing, and a map of one-pixel edges (canny, lineart) is kept one pixel wide: non-maximum
suppression along the four directions, Otsu, then hit-or-miss thinning (and spur pruning when enlarging),
Lvmin Zhang's edge thinning as the extension applies it."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from pipeline.jobs.controlnet.preprocessors import hwc3

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL = "Just Resize", "Crop and Resize", "Resize and Fill"
# A1111's img2img resize_mode (0..3) as the extension maps it for units that use the init image
FROM_A1111 = {0: JUST_RESIZE, 1: CROP_AND_RESIZE, 2: RESIZE_AND_FILL, 3: JUST_RESIZE}


def _kernels(*shapes: tuple[str, ...]) -> list[np.ndarray]:
    """3x3 hit-or-miss elements ("#" must be set, "." must be clear, "?" either), each rotation of all of
    them in turn (the order in which they strip pixels matters)."""
    bases = [
        np.array([[{"#": 1, ".": -1, "?": 0}[c] for c in row] for row in rows], dtype=np.int32)
        for rows in shapes
    ]
    return [np.rot90(b, k) for k in range(4) for b in bases]


_THIN = _kernels(("...", "?#?", "###"), ("?..", "##.", "?#?"))
_PRUNE = _kernels(("...", ".#.", "??."), ("...", ".#.", ".??"))
_DIRECTIONS = [
    np.array(k, np.uint8)
    for k in (
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
        [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
    )
]


def _strip(x: np.ndarray, kernels: list[np.ndarray]) -> bool:
    """Clear the pixels each element matches, in turn; whether any was cleared."""
    changed = False
    for k in kernels:
        hits = cv2.morphologyEx(x, cv2.MORPH_HITMISS, k) > 127
        if hits.any():
            x[hits] = 0
            changed = True
    return changed


def thin_edges(x: np.ndarray, prune: bool) -> np.ndarray:
    """Thin a binary (0/255) edge map to one pixel (at most 32 rounds); `prune` removes one-pixel spurs."""
    y = x.copy()
    for _ in range(32):
        if not _strip(y, _THIN):
            break
    if prune:
        _strip(y, _PRUNE)
    return y


def directional_nms(x: np.ndarray) -> np.ndarray:
    """Keep a pixel where it is the maximum of its 3-neighbourhood along at least one of four directions."""
    y = np.zeros_like(x)
    for k in _DIRECTIONS:
        np.putmask(y, cv2.dilate(x, kernel=k) == x, x)
    return y


def high_quality_resize(x: np.ndarray, width: int, height: int) -> np.ndarray:
    """The extension's resampling; a 4th (inpaint mask) channel is resized alike, then made 0 / 255."""
    mask = None
    if x.shape[2] == 4:
        x, mask = x[:, :, :3], x[:, :, 3]
    if x.shape[0] == height and x.shape[1] == width:
        y = x
    else:
        smaller = width * height < x.shape[0] * x.shape[1]
        colours = len(np.unique(x.reshape(-1, x.shape[2]), axis=0))
        binary = colours == 2 and int(x.min()) < 16 and int(x.max()) > 240
        one_pixel = False
        if binary:  # mostly one-pixel edges: what an opening (3x3) removes is over half of the edge pixels
            opened = cv2.dilate(cv2.erode(x, np.ones((3, 3), np.uint8)), np.ones((3, 3), np.uint8))
            one_pixel = int((opened < x).sum()) * 2 > int((x > 127).sum())
        if 2 < colours < 200:
            interp = cv2.INTER_NEAREST
        elif smaller:
            interp = cv2.INTER_AREA
        else:
            interp = cv2.INTER_CUBIC
        y = cv2.resize(x, (width, height), interpolation=interp)
        if mask is not None:
            mask = cv2.resize(mask, (width, height), interpolation=interp)
        if binary:
            y = np.mean(y.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
            if one_pixel:
                y = directional_nms(y)
            _, y = cv2.threshold(y, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            if one_pixel:
                y = thin_edges(y, prune=not smaller and width * height > x.shape[0] * x.shape[1])
            y = np.stack([y] * 3, axis=2)
    if mask is not None:
        y = np.concatenate([y, np.where(mask > 127, 255, 0).astype(y.dtype)[:, :, None]], axis=2)
    return y


def fit(detected: np.ndarray, mode: str, width: int, height: int) -> np.ndarray:
    """The map (H, W, 3 uint8; or 4 with an inpaint mask) at width x height by `mode`."""
    m = detected if detected.ndim == 3 and detected.shape[2] == 4 else hwc3(detected)
    if mode == JUST_RESIZE:
        return np.ascontiguousarray(high_quality_resize(m, width, height))
    old_h, old_w = float(m.shape[0]), float(m.shape[1])
    k0, k1 = height / old_h, width / old_w
    if mode == RESIZE_AND_FILL:
        k = min(k0, k1)
        borders = np.concatenate([m[0, :, :], m[-1, :, :], m[:, 0, :], m[:, -1, :]], axis=0)
        colour = np.median(borders, axis=0).astype(m.dtype)
        if len(colour) == 4:
            colour[3] = 255  # the filled border is to be painted
        canvas = np.tile(colour[None, None], [height, width, 1])
        inner = high_quality_resize(m, int(np.round(old_w * k)), int(np.round(old_h * k)))
        nh, nw = inner.shape[:2]
        ph, pw = max(0, (height - nh) // 2), max(0, (width - nw) // 2)
        canvas[ph : ph + nh, pw : pw + nw] = inner
        return np.ascontiguousarray(canvas)
    k = max(k0, k1)
    inner = high_quality_resize(m, int(np.round(old_w * k)), int(np.round(old_h * k)))
    nh, nw = inner.shape[:2]
    ph, pw = max(0, (nh - height) // 2), max(0, (nw - width) // 2)
    return np.ascontiguousarray(inner[ph : ph + height, pw : pw + width])


def to_tensor(hint: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1], as the extension feeds the ControlNet. With an
    inpaint mask (4 channels) the extension's inpaint protocol: the picture where kept, -1 where masked."""
    t = torch.from_numpy(hint.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0).contiguous()
    if t.shape[1] == 4:
        c, m = t[:, :3], (t[:, 3:4] > 0.5).float()
        t = c * (1 - m) - m
    return t


def show_inpaint(hint: np.ndarray) -> np.ndarray:
    """An RGBA inpaint map as the extension shows it: the mask at half transparency."""
    if hint.ndim == 3 and hint.shape[2] == 4:
        out = hint.copy()
        out[:, :, 3] = 255 - hint[:, :, 3] // 2
        return out
    return hint


def pixel_perfect_resolution(image: np.ndarray, width: int, height: int, mode: str) -> int:
    """The processor resolution that maps the input 1:1 onto the target, as the extension's pixel perfect."""
    raw_h, raw_w = image.shape[:2]
    k0, k1 = height / float(raw_h), width / float(raw_w)
    k = min(k0, k1) if mode == RESIZE_AND_FILL else max(k0, k1)
    return int(np.round(k * float(min(raw_h, raw_w))))
