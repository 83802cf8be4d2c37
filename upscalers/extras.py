"""The Extras tab's upscale operation (A1111 `/sdapi/v1/extra-*-image*`), on PIL images."""

from __future__ import annotations

import hashlib
import html
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from PIL import Image

from .errors import BadImage, TooLarge
from .faces import FaceRestorer, FaceRestorers
from .images import text_info, to_rgb_or_rgba
from .ldsr import LdsrOptions
from .loop import check_budget, plan_upscale, upscale
from .registry import UpscalerEntry, UpscalerRegistry
from .tiling import DEFAULT_OVERLAP, DEFAULT_TILE, OnTile, ShouldStop, tile_for

DEFAULT_MAX_OUTPUT_PIXELS = 8192 * 8192
"""Default pixel budget of one result (64 megapixels)."""


@dataclass(frozen=True)
class ExtrasParams:
    """The upscale fields of an extras request, with A1111's names and defaults."""

    resize_mode: Literal[0, 1] = 0
    """0: scale by `upscaling_resize`; 1: cover `upscaling_resize_w` x `upscaling_resize_h`."""
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    """Mode 1 only: centre the result on a canvas of exactly the target size."""
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ExtrasParams:
        """Build from a request dict (e.g. `model_dump()`); unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def quote(value: object) -> str:
    """An infotext value: as is, or JSON-quoted when it holds `,`, `:` or a newline."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def format_infotext(info: Mapping[str, object]) -> str:
    """`key: value, key: value` in insertion order, None values left out."""
    return ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in info.items() if v is not None)


def html_info(infotext: str) -> str:
    """A1111's `html_info`: the HTML-escaped text in a `<p>`, line breaks as `<br>`."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in infotext.split("\n")) + "</p>"


def _factor(params: ExtrasParams, size: tuple[int, int]) -> float:
    if params.resize_mode == 1:
        return max(params.upscaling_resize_w / size[0], params.upscaling_resize_h / size[1])
    return params.upscaling_resize


class UpscaleCache:
    """A1111's extras upscale cache (`scripts/postprocessing_upscale.py`, option
    `upscaling_max_images_in_cache`): the last upscales, keyed as A1111 keys them, by the source pixels, the
    upscaler and the size arguments only (not the tile options, nor LDSR's steps: as in A1111, a request that
    differs only in those gets the cached result). A hit moves to the newest end; past `size` entries the
    oldest goes, so size 0 keeps nothing. A smaller size applies before the lookup (A1111 trims after it, so
    its first request after the option drops to 0 can still be answered from the cache)."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple, Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(source: Image.Image, upscaler: str, params: ExtrasParams, factor: float) -> tuple:
        digest = hashlib.sha256(source.tobytes()).hexdigest()
        return (digest, source.mode, source.size, upscaler, params.resize_mode, factor,
                params.upscaling_resize_w, params.upscaling_resize_h, params.upscaling_crop)

    def trim(self, size: int) -> None:
        """Keep at most the newest `size` upscales."""
        with self._lock:
            self._trim(size)

    def take(self, key: tuple, size: int) -> Image.Image | None:
        with self._lock:
            self._trim(size)
            image = self._items.pop(key, None)
        return None if image is None else image.copy()

    def put(self, key: tuple, image: Image.Image, size: int) -> None:
        with self._lock:
            self._items[key] = image
            self._trim(size)

    def _trim(self, size: int) -> None:
        while len(self._items) > max(size, 0):
            self._items.popitem(last=False)


OPERATIONS = ("Upscale", "GFPGAN", "CodeFormer")
"""The extras operations, named as A1111 names its postprocessing scripts, in A1111's default order (the
scripts' `order`: 1000, 2000, 3000)."""


def operation_order(options: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The operations an extras request runs, in the order it runs them, by A1111's options
    (modules/scripts_postprocessing.py `scripts_in_preferred_order`): those named in
    `postprocessing_disable_in_extras` are left out; those named in `postprocessing_operation_order` come
    first, in the order named (the first mention counts), the others after them in the default order."""
    options = options or {}
    wanted = list(options.get("postprocessing_operation_order") or [])
    disabled = set(options.get("postprocessing_disable_in_extras") or [])

    def score(name: str) -> tuple[int, int]:
        return (wanted.index(name) if name in wanted else len(wanted), OPERATIONS.index(name))

    return tuple(sorted((n for n in OPERATIONS if n not in disabled), key=score))


def _face_stages(params: ExtrasParams, faces: FaceRestorers,
                 operations: tuple[str, ...] = OPERATIONS) -> list[tuple[FaceRestorer, float]]:
    """(restorer, visibility) for each requested face restoration that `operations` runs, in its order
    (A1111's default: GFPGAN, then CodeFormer); FaceRestorationUnavailable when one is requested but not
    installed."""
    stages = []
    for name in operations:
        if name == "GFPGAN" and params.gfpgan_visibility > 0:
            stages.append((faces.require("GFPGAN", "gfpgan_visibility"), params.gfpgan_visibility))
        if name == "CodeFormer" and params.codeformer_visibility > 0:
            restorer = faces.require("CodeFormer", "codeformer_visibility")
            stages.append((restorer, params.codeformer_visibility))
    return stages


def run_extras(
    images: list[Image.Image],
    params: ExtrasParams,
    registry: UpscalerRegistry,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    max_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS,
    should_stop: ShouldStop | None = None,
    on_tile: OnTile | None = None,
    on_image: Callable[[int, int], None] | None = None,
    ldsr: LdsrOptions = LdsrOptions(),
    tile_options: Mapping[str, Any] | None = None,
    cache: tuple[UpscaleCache, int] | None = None,
    operations: tuple[str, ...] = OPERATIONS,
) -> tuple[list[Image.Image], str]:
    """Upscale, then restore faces in, each image as A1111's extras does; returns (results, infotext
    of the last). `operations` (`operation_order`) says which of the three run, in which order (its
    infotext entries follow that order).

    Everything that can be checked is checked before any model runs: upscaler names (both,
    even when upscaler_1 is "None"), face restorers (FaceRestorationUnavailable when a visibility
    > 0 asks for one that is not installed), empty images, and the pixel budget (TooLarge).
    `upscaler_1` "None" leaves images unresized and ignores upscaler 2. GFPGAN, then CodeFormer
    (with `codeformer_weight`), run on the upscaled image, each blended by its visibility.
    Each result is RGB (RGBA if the input had alpha) and carries the input's text `.info`
    entries plus `postprocessing` = its infotext. `on_image(done, total)` follows images;
    `on_tile`, `should_stop` and `ldsr` are passed to `upscale` (Interrupted propagates). `tile_options`
    (A1111's options) sets each model's tiles by its architecture (`tiling.tile_for`: `DAT_tile`,
    `SWIN_tile`, else `ESRGAN_tile`); without it every model takes `tile` and `overlap`. `cache` (the
    server's UpscaleCache and A1111's `upscaling_max_images_in_cache`) keeps that many upscales for identical
    later ones; None uses no cache.
    """
    first, second = check_extras(images, params, registry, max_pixels=max_pixels, operations=operations)
    results: list[Image.Image] = []
    infotext = ""
    unload = bool((tile_options or {}).get("face_restoration_unload", False))
    for index, image in enumerate(images):
        result = to_rgb_or_rgba(image)
        info: dict[str, object] = {}
        for name in operations:
            if name == "Upscale":
                result = _upscale_one(result, params, first, second, registry, (tile, overlap, tile_options),
                                      should_stop, on_tile, ldsr, cache, info)
            else:
                result = _restore_faces(result, params, registry.faces, info, should_stop, unload, (name,))
        if result is image:
            result = result.copy()
        infotext = format_infotext(info)
        result.info = {**text_info(image), "postprocessing": infotext}
        results.append(result)
        if on_image is not None:
            on_image(index + 1, len(images))
    return results, infotext


def check_extras(
    images: list[Image.Image],
    params: ExtrasParams,
    registry: UpscalerRegistry,
    *,
    max_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS,
    operations: tuple[str, ...] = OPERATIONS,
) -> tuple[UpscalerEntry, UpscalerEntry]:
    """Every check `run_extras` makes before any model runs (names, face restoration, empty images,
    pixel budget), on its own: the server calls it before queueing. Returns (upscaler_1, upscaler_2).
    Upscaler names are checked even when `operations` leaves "Upscale" out; a face restorer and the
    budget only when it runs."""
    first = registry.resolve(params.upscaler_1)
    second = registry.resolve(params.upscaler_2)
    _face_stages(params, registry.faces, operations)
    for index, image in enumerate(images):
        if image.width < 1 or image.height < 1:
            raise BadImage(index, f"the image is empty ({image.width}x{image.height})")
        if first.kind == "none" or "Upscale" not in operations:
            continue
        for entry in (first, second) if _uses_second(params, second) else (first,):
            try:
                plan = plan_upscale(image.size, _factor(params, image.size), entry)
            except BadImage as exc:
                raise BadImage(index, exc.reason) from None
            check_budget(plan, max_pixels)
        target_w, target_h = params.upscaling_resize_w, params.upscaling_resize_h
        cropped = params.resize_mode == 1 and params.upscaling_crop
        if cropped and max_pixels and target_w * target_h > max_pixels:
            raise TooLarge(target_w, target_h, max_pixels)

    return first, second


def _uses_second(params: ExtrasParams, second: UpscalerEntry) -> bool:
    return second.kind != "none" and params.extras_upscaler_2_visibility > 0


def _upscale_one(
    image: Image.Image,
    params: ExtrasParams,
    first: UpscalerEntry,
    second: UpscalerEntry,
    registry: UpscalerRegistry,
    tiles: tuple[int, int, Mapping[str, Any] | None],
    should_stop: ShouldStop | None,
    on_tile: OnTile | None,
    ldsr: LdsrOptions,
    cache: tuple[UpscaleCache, int] | None = None,
    info: dict[str, object] | None = None,
) -> Image.Image:
    """The Upscale operation on one image; its infotext entries go into `info`."""
    source = to_rgb_or_rgba(image)
    info = {} if info is None else info
    if first.kind == "none":
        return source

    def stage(entry: UpscalerEntry) -> Image.Image:
        tile, overlap, options = tiles
        if options is not None:
            tile, overlap = tile_for(entry.architecture, options)
        factor = _factor(params, source.size)
        if params.resize_mode == 1:
            info["Postprocess upscale to"] = f"{params.upscaling_resize_w}x{params.upscaling_resize_h}"
        else:
            info["Postprocess upscale by"] = float(params.upscaling_resize)
        store, keep = cache if cache is not None else (None, 0)
        if store is not None and keep <= 0:
            store.trim(0)  # the option at 0: nothing kept, and no key to compute
        key = UpscaleCache.key(source, entry.name, params, factor) if store is not None and keep > 0 else None
        out = store.take(key, keep) if store is not None and key is not None else None
        if out is None:
            out = upscale(
                source,
                factor,
                entry,
                registry,
                tile=tile,
                overlap=overlap,
                should_stop=should_stop,
                on_tile=on_tile,
                ldsr=ldsr,
            )
        if store is not None and key is not None:
            store.put(key, out.copy(), keep)
        if params.resize_mode == 1 and params.upscaling_crop:
            out = _centre_crop(out, params.upscaling_resize_w, params.upscaling_resize_h)
            info["Postprocess crop to"] = f"{out.width}x{out.height}"
        return out

    result = stage(first)
    info["Postprocess upscaler"] = first.name
    if _uses_second(params, second):
        other = stage(second)
        if other.mode != result.mode:
            other = other.convert(result.mode)
        if other.size != result.size:
            other = other.resize(result.size, resample=Image.Resampling.LANCZOS)
        result = Image.blend(result, other, params.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = second.name
    return result


def _restore_faces(
    image: Image.Image,
    params: ExtrasParams,
    faces: FaceRestorers,
    info: dict[str, object],
    should_stop: ShouldStop | None,
    unload: bool = False,
    operations: tuple[str, ...] = OPERATIONS,
) -> Image.Image:
    """A1111's GFPGAN and CodeFormer postprocessing stages (those `operations` names), with their infotext
    entries (`unload`: option `face_restoration_unload`)."""
    for restorer, visibility in _face_stages(params, faces, operations):
        weight = params.codeformer_weight
        image = faces.restore(image, restorer, visibility, weight, should_stop=should_stop, unload=unload)
        info[f"{restorer.name} visibility"] = round(visibility, 3)
        if restorer.name == "CodeFormer":
            info["CodeFormer weight"] = round(weight, 3)
    return image


def _centre_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Paste `image` centred on a black canvas of exactly width x height (transparent if RGBA)."""
    canvas = Image.new(image.mode, (width, height))
    canvas.paste(image, (width // 2 - image.width // 2, height // 2 - image.height // 2))
    return canvas
