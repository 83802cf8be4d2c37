"""A1111's grid layout (v1.10 `modules/images.py` `image_grid`), shared by the job grids of the API
(server/grids.py) and the live previews of a batch (diffusion/preview.py, option `show_progress_grid`).

Rows: option `n_rows` (> 0: that many, 0: `batch_size`, -1: about the square root, or with
`grid_prevent_empty_spots` the largest divisor of the count not above it), never more than the images;
cells as big as the largest image, smaller ones centred on `grid_background_color`."""
from __future__ import annotations

import math
from typing import Any

from PIL import Image, ImageColor


def grid_rows(opts: dict[str, Any], count: int, batch_size: int) -> int:
    n_rows = int(opts.get("n_rows", -1))
    if n_rows > 0:
        rows = n_rows
    elif n_rows == 0:
        rows = batch_size
    elif opts.get("grid_prevent_empty_spots"):
        rows = math.floor(math.sqrt(count))
        while count % rows != 0:
            rows -= 1
    else:
        rows = round(math.sqrt(count))
    return max(1, min(rows, count))


def image_grid(images: list[Image.Image], batch_size: int, opts: dict[str, Any]) -> Image.Image:
    rows = grid_rows(opts, len(images), batch_size)
    cols = math.ceil(len(images) / rows)
    w, h = (max(sizes) for sizes in zip(*(img.size for img in images), strict=True))
    background = ImageColor.getcolor(str(opts.get("grid_background_color") or "#ffffff"), "RGB")
    grid = Image.new("RGB", (cols * w, rows * h), background)
    for i, img in enumerate(images):
        dx, dy = (w - img.width) // 2, (h - img.height) // 2
        grid.paste(img.convert("RGB"), (i % cols * w + dx, i // cols * h + dy))
    return grid
