"""A1111's image grid of a generation job (v1.10 `processing.process_images_inner` and `images.image_grid`).

Through A1111's API a grid is made only when the request has `save_images` (the API sets
`do_not_save_grid = not save_images`), option `return_grid` is on, and the job has at least two images
unless `grid_only_if_multiple` is off. The grid then comes first in `images`, its infotext (the first
image's) first in `info.infotexts`, and `index_of_first_image` is 1. Rows: option `n_rows` (> 0: that many,
0: the batch size, -1: about the square root, ...; pipeline/grids.py, the layout live previews share).
With `grid_save` (and the same conditions) the grid is also written, as
`grid-NNNN.<grid_format>` under `outdir_grids` or the kind's `outdir_txt2img_grids` / `outdir_img2img_grids`
(relative: under --outputs-dir), in the folder `directories_filename_pattern` names with
`grid_save_to_dirs` (server/saving.py)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.grids import grid_rows, image_grid
from server.filenames import FilenameGenerator, JobFacts
from server.saving import save_image

__all__ = ["grid_rows", "grid_wanted", "image_grid", "save_grid"]


def grid_wanted(opts: dict[str, Any], save_images: bool, count: int) -> bool:
    """Whether A1111's API makes a grid (to return or to save) for a job of `count` images."""
    few = count < 2 and bool(opts.get("grid_only_if_multiple", True))
    wanted = bool(opts.get("return_grid", True)) or bool(opts.get("grid_save", True))
    return bool(save_images) and wanted and count > 0 and not few


def save_grid(outputs_dir: Path, grid: Image.Image, infotext: str, opts: dict[str, Any],
              encode: Callable[[Image.Image, str], bytes], job: JobFacts | None = None, count: int = 1) -> Path:
    """The grid file as A1111 saves it (server/saving.py, basename `grid`): `grid-NNNN.<ext>`, or with
    `grid_extended_filename` `grid-NNNN-<samples_filename_pattern>.<ext>` named from the job's first seed
    and prompt; `encode` makes its bytes (Services.encoder: the infotext in it with `enable_pnginfo`).
    `count`: the job's images."""
    root = Path(opts.get("outdir_grids") or opts.get("outdir_txt2img_grids") or "txt2img-grids")
    if not root.is_absolute():
        root = outputs_dir / root
    fmt = str(opts.get("grid_format") or "png")
    job = job or JobFacts(max_prompt_words=int(opts.get("directories_max_prompt_words", 8)))
    # A1111 names the grid after the job's first seed and prompt, at the job's last position
    seed = job.all_seeds[0] if job.all_seeds else None
    prompt = job.all_prompts[0] if job.all_prompts else None
    namegen = FilenameGenerator.for_image(job, max(0, count - 1), grid, basename="grid", seed=seed,
                                          prompt=prompt)
    return save_image(root, grid, fmt, opts, namegen, encode, basename="grid", grid=True,
                      short_filename=not opts.get("grid_extended_filename", False), infotext=infotext)
