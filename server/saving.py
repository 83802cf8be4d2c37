"""Writing one image file as A1111 v1.10's `modules/images.py` `save_image` names and places it, for the
API's saves (results, their intermediate copies, grids).

Folder: `<root>/<directories_filename_pattern>` (default `[date]`; `[prompt_words]` when empty) with option
`save_to_dirs` (`grid_save_to_dirs` for grids), else `<root>`. Name: the file decoration is
`samples_filename_pattern`, by default `[seed]` with `save_to_dirs` on and `[seed]-[prompt_spaces]` with
it off; grids have none unless `grid_extended_filename`. With `save_images_add_number` (or an empty
decoration) the name is `NNNNN-<decoration>` (`<basename>-NNNN-...` for grids), numbered one past the
highest number in the folder; without it the name is the decoration itself, and an existing file is
replaced (`save_images_replace_action` "Replace") or the new one gets `-1`, `-2`, ... ("Add number suffix").
Every write goes to a private temporary file first, then is linked (never overwriting) or renamed into
place (only "Replace" overwrites), so a reader never sees a half-written file.

Then, as A1111: with `export_for_4chan` a JPEG copy `<name>.jpg` is written when the file is larger than
`img_downscale_threshold` MB or a side is longer than `target_side_length` (downscaled to it, LANCZOS);
with `save_txt` the infotext goes beside the image as `<name>.txt`."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from server.filenames import FilenameGenerator

REPLACE = "Replace"
ADD_SUFFIX = "Add number suffix"
LANCZOS = Image.Resampling.LANCZOS


def _tmp_file(folder: Path, data: bytes) -> Path:
    fd, tmp_name = tempfile.mkstemp(prefix=".saving-", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(tmp_name)


def next_number(folder: Path, basename: str = "") -> int:
    """A1111's sequence number: one more than the highest `NNNNN-` prefix in the folder (with a `basename`:
    the highest number after `<basename>-`)."""
    best = -1
    for f in folder.iterdir():
        name = f.name
        if basename:
            if not name.startswith(f"{basename}-"):
                continue
            name = name[len(basename) + 1:]
        head = os.path.splitext(name)[0].split("-", 1)[0]
        if head.isdigit():
            best = max(best, int(head))
    return best + 1


def write_numbered(folder: Path, suffix: str, data: bytes, basename: str = "") -> Path:
    """Write `data` as `folder/NNNNN<suffix>` (with a `basename`: `<basename>-NNNN<suffix>`, A1111's grid
    names) with the next free number; atomic, never overwrites."""
    tmp = _tmp_file(folder, data)
    try:
        number = next_number(folder, basename)
        while True:
            path = folder / (f"{basename}-{number:04d}{suffix}" if basename else f"{number:05d}{suffix}")
            try:
                os.link(tmp, path)  # atomic, and fails rather than overwrite
                return path
            except FileExistsError:
                number += 1
    finally:
        tmp.unlink(missing_ok=True)


def write_named(folder: Path, stem: str, ext: str, data: bytes, replace: bool) -> Path:
    """Write `data` as `folder/<stem><ext>`: atomically replacing a file of that name (`replace`), else as
    the first free one of `<stem><ext>`, `<stem>-1<ext>`, `<stem>-2<ext>`, ... (never overwriting)."""
    tmp = _tmp_file(folder, data)
    try:
        path = folder / f"{stem}{ext}"
        if replace:
            os.replace(tmp, path)
            return path
        n = 0
        while True:
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                n += 1
                path = folder / f"{stem}-{n}{ext}"
    finally:
        tmp.unlink(missing_ok=True)


def safe_dirname(dirname: str) -> Path:
    """The folder a directory pattern names, kept under the output folder: empty, `.` and `..` parts and
    leading separators dropped (A1111 follows them; a request must not write outside the outputs)."""
    parts = [p for p in dirname.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return Path(*parts) if parts else Path()


def _name_max(folder: Path) -> int:
    try:
        return os.statvfs(folder).f_namemax
    except (AttributeError, OSError):
        return 255


Encoder = Callable[[Image.Image, str], bytes]


def save_image(root: Path, image: Image.Image, fmt: str, opts: dict[str, Any], namegen: FilenameGenerator,
               encode: Encoder, *, basename: str = "", suffix: str = "", grid: bool = False,
               short_filename: bool = False, infotext: str | None = None,
               forced_filename: str | None = None) -> Path:
    """Save `image` as A1111's `save_image` does (module doc); returns the image file's path. `encode(image,
    fmt)` gives the file's bytes (with the infotext in it as the options say); `infotext`, when given, is
    what `save_txt` writes. `forced_filename`: this name in `root` itself (no pattern, no number)."""
    if forced_filename is not None:
        root.mkdir(parents=True, exist_ok=True)
        replace = str(opts.get("save_images_replace_action") or REPLACE) == REPLACE
        path = write_named(root, forced_filename, f".{'jpg' if fmt == 'jpeg' else fmt}", encode(image, fmt),
                           replace)
        return _beside(path, image, opts, encode, replace, infotext)
    save_to_dirs = bool(opts.get("grid_save_to_dirs", True) if grid else opts.get("save_to_dirs", True))
    folder = root
    if save_to_dirs:
        pattern = str(opts.get("directories_filename_pattern") or "[prompt_words]")
        folder = root / safe_dirname(namegen.apply(pattern).lstrip(" ").rstrip("\\ /"))
    folder.mkdir(parents=True, exist_ok=True)

    ext = "jpg" if fmt == "jpeg" else fmt
    # JPEG and WEBP have a largest side (65535 / 16383): A1111 writes PNG instead
    if (ext == "jpg" and max(image.size) > 65535) or (ext == "webp" and max(image.size) > 16383):
        ext = "png"

    if short_filename:
        decoration = ""
    elif opts.get("save_to_dirs", True):  # A1111 reads the samples' option here, for grids too
        decoration = str(opts.get("samples_filename_pattern") or "[seed]")
    else:
        decoration = str(opts.get("samples_filename_pattern") or "[seed]-[prompt_spaces]")
    decoration = namegen.apply(decoration) + suffix
    if "/" in decoration or "\\" in decoration:  # only literal text of the pattern can bring one
        decoration = decoration.replace("/", "_").replace("\\", "_")
    add_number = bool(opts.get("save_images_add_number", True)) or decoration == ""
    if decoration and add_number:
        decoration = f"-{decoration}"

    # A1111 keeps a name within the file system's limit, room left for the extension
    limit = _name_max(folder) - max(4, len(ext) + 1)
    data = encode(image, ext)
    replace = str(opts.get("save_images_replace_action") or REPLACE) == REPLACE
    if add_number:
        head = len(f"{basename}-0000") if basename else 5
        decoration = decoration[:max(0, limit - head)]
        path = write_numbered(folder, f"{decoration}.{ext}", data, basename)
    else:
        path = write_named(folder, decoration[:limit], f".{ext}", data, replace)
    return _beside(path, image, opts, encode, replace, infotext)


def _beside(path: Path, image: Image.Image, opts: dict[str, Any], encode: Encoder, replace: bool,
            infotext: str | None) -> Path:
    """What A1111 writes beside a saved image: the `export_for_4chan` JPEG and the `save_txt` infotext."""
    _export_jpeg(path, image, opts, encode, replace)
    if opts.get("save_txt") and infotext:
        path.with_suffix(".txt").write_text(f"{infotext}\n", encoding="utf-8")
    return path


def _export_jpeg(path: Path, image: Image.Image, opts: dict[str, Any], encode: Encoder,
                 replace: bool) -> None:
    """A1111's `export_for_4chan`: a JPEG beside a file over `img_downscale_threshold` MB or with a side
    over `target_side_length` (then downscaled so that its longer side is that)."""
    if not opts.get("export_for_4chan", True):
        return
    side = float(opts.get("target_side_length", 4000))
    oversize = image.width > side or image.height > side
    if not (oversize or path.stat().st_size > float(opts.get("img_downscale_threshold", 4.0)) * 1024 * 1024):
        return
    if oversize:
        if image.width / image.height > 1:
            size = round(side), round(image.height * side / image.width)
        else:
            size = round(image.width * side / image.height), round(side)
        try:
            image = image.resize(size, LANCZOS)
        except (ValueError, OSError):  # modes LANCZOS cannot take (A1111 falls back the same way)
            image = image.resize(size)
    write_named(path.parent, path.stem, ".jpg", encode(image, "jpg"), replace)
