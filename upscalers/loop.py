"""The A1111 upscale loop: up to three native passes, then Lanczos to the exact destination.

Used by the extras operations and by hires fix alike, with any registry entry.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import BadImage, Interrupted, TooLarge, UpscalerError
from .images import merge_alpha, split_alpha, to_rgb_or_rgba
from .ldsr.upscale import LdsrOptions, output_size, super_resolution
from .registry import UpscalerEntry, UpscalerRegistry
from .tiling import DEFAULT_OVERLAP, DEFAULT_TILE, OnTile, ShouldStop, TileModel, count_tiles, upscale_array

MAX_PASSES = 3
"""A1111 runs a model at most three times per upscale."""


@dataclass(frozen=True)
class UpscalePlan:
    """What `upscale` will do to an image of a given size."""

    source: tuple[int, int]
    """Input width, height."""
    destination: tuple[int, int]
    """Final width, height: floor(side * factor / 8) * 8."""
    passes: tuple[tuple[int, int], ...]
    """The size after each native pass (model run or PIL resize), in order."""

    @property
    def largest(self) -> tuple[int, int]:
        """The biggest image (by pixels) that will exist on the way."""
        return max((*self.passes, self.destination), key=lambda s: s[0] * s[1])


def destination(width: int, height: int, factor: float) -> tuple[int, int]:
    """A1111's destination size: each side times `factor`, rounded down to a multiple of 8."""
    return int((width * factor) // 8 * 8), int((height * factor) // 8 * 8)


def _pass_size(size: tuple[int, int], factor: float, entry: UpscalerEntry) -> tuple[int, int]:
    if entry.kind == "model":
        assert entry.scale is not None
        return size[0] * entry.scale, size[1] * entry.scale
    if entry.kind in ("lanczos", "nearest"):
        return int(size[0] * factor), int(size[1] * factor)
    if entry.kind == "ldsr":
        return output_size(size[0], size[1], factor)
    return size


def plan_upscale(size: tuple[int, int], factor: float, entry: UpscalerEntry) -> UpscalePlan:
    """Replay A1111's loop on sizes only: stop before a pass once the destination is covered
    (a factor of exactly 1 still gets one pass), after a pass that changed nothing, or after 3."""
    if not (isinstance(factor, int | float) and math.isfinite(factor) and factor > 0):
        raise BadImage("input", f"the upscale factor must be a positive number, got {factor!r}")
    if size[0] < 1 or size[1] < 1:
        raise BadImage("input", f"the image is empty ({size[0]}x{size[1]})")
    dest = destination(size[0], size[1], factor)
    if dest[0] < 1 or dest[1] < 1:
        raise BadImage(
            "input",
            f"upscaling {size[0]}x{size[1]} by {factor} gives {dest[0]}x{dest[1]} "
            "(sizes are rounded down to multiples of 8)",
        )
    passes: list[tuple[int, int]] = []
    current = size
    for index in range(MAX_PASSES):
        if current[0] >= dest[0] and current[1] >= dest[1] and (index > 0 or factor != 1):
            break
        following = _pass_size(current, factor, entry)
        passes.append(following)
        if following == current:
            break
        current = following
    return UpscalePlan(size, dest, tuple(passes))


def check_budget(plan: UpscalePlan, max_pixels: int | None) -> None:
    """Raise TooLarge if the result, or any image on the way to it, exceeds `max_pixels`."""
    if not max_pixels:
        return
    w, h = plan.destination
    if w * h > max_pixels:
        raise TooLarge(w, h, max_pixels)
    for i, (pw, ph) in enumerate(plan.passes, start=1):
        if pw * ph > max_pixels:
            raise TooLarge(pw, ph, max_pixels, what=f"intermediate image after upscaler pass {i}")


def upscale(
    image: Image.Image,
    factor: float,
    entry: UpscalerEntry,
    registry: UpscalerRegistry | None = None,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    should_stop: ShouldStop | None = None,
    on_tile: OnTile | None = None,
    max_pixels: int | None = None,
    ldsr: LdsrOptions = LdsrOptions(),
) -> Image.Image:
    """Upscale `image` by `factor` with `entry`, exactly as A1111's upscaler loop sizes it.

    The result is RGB, or RGBA when the input has alpha (the model sees RGB; alpha is resized
    with Lanczos). Any input mode is accepted (see `images.to_rgb_or_rgba`). `registry` is needed
    for model entries. `on_tile(done, total)` counts tiles over all model passes; `should_stop()`
    is polled before each pass and each tile and makes this raise Interrupted (A1111 would
    instead return a Lanczos resize: a caller wanting that catches Interrupted and calls
    `upscale` again with the Lanczos entry). Raises TooLarge before any work when the result or
    an intermediate exceeds `max_pixels`, BadImage for empty inputs or results. The LDSR entry runs with
    `ldsr` (A1111's `ldsr_steps`, `ldsr_cached`); its `on_tile` counts sampling steps.
    """
    image = to_rgb_or_rgba(image)
    plan = plan_upscale(image.size, factor, entry)
    check_budget(plan, max_pixels)
    rgb, alpha = split_alpha(image)

    model: TileModel | None = None
    progress: _Progress | None = None
    if entry.kind == "model" and plan.passes:
        if registry is None:
            raise UpscalerError(f"upscaler {entry.name!r} runs a model and needs a registry")
        model = registry.load(entry)
        sources = (plan.source, *plan.passes[:-1])
        counts = [count_tiles(w, h, entry.tiling, entry.size_requirements, tile, overlap) for w, h in sources]
        progress = _Progress(on_tile, counts)

    if entry.kind == "ldsr" and plan.passes:
        if registry is None:
            raise UpscalerError(f"upscaler {entry.name!r} runs a model and needs a registry")
        current = _ldsr_passes(rgb, factor, len(plan.passes), registry, ldsr, should_stop, on_tile)
        if current.size != plan.destination:
            current = current.resize(plan.destination, resample=Image.Resampling.LANCZOS)
        return merge_alpha(current, alpha)

    current = rgb
    # under --medvram the model sits on the GPU only for its passes (UpscalerRegistry.running)
    with registry.running(model) if registry is not None and model is not None else contextlib.nullcontext():
        for index in range(len(plan.passes)):
            if should_stop is not None and should_stop():
                raise Interrupted("upscaling was interrupted")
            if model is not None and progress is not None:
                current = _model_pass(current, model, entry, tile, overlap, should_stop,
                                      progress.for_pass(index))
            elif entry.kind in ("lanczos", "nearest"):
                resample = Image.Resampling.LANCZOS if entry.kind == "lanczos" else Image.Resampling.NEAREST
                current = current.resize(_pass_size(current.size, factor, entry), resample=resample)
    if current.size != plan.destination:
        current = current.resize(plan.destination, resample=Image.Resampling.LANCZOS)
    return merge_alpha(current, alpha)


def _ldsr_passes(rgb: Image.Image, factor: float, passes: int, registry: UpscalerRegistry,
                 options: LdsrOptions, should_stop: ShouldStop | None, on_tile: OnTile | None) -> Image.Image:
    """LDSR's passes (A1111 gives each the loop's factor; one always covers the destination)."""
    make_room = registry.make_room if registry.offload is not None else None
    with registry.ldsr.running(options.cached, make_room, registry.offload) as model:
        for index in range(passes):
            if should_stop is not None and should_stop():
                raise Interrupted("upscaling was interrupted")

            def report(done: int, total: int, index: int = index) -> None:
                if on_tile is not None:
                    on_tile(index * total + done, passes * total)

            rgb = super_resolution(model, rgb, factor, options, should_stop, report)
    return rgb


def _model_pass(
    rgb: Image.Image,
    model: TileModel,
    entry: UpscalerEntry,
    tile: int,
    overlap: int,
    should_stop: ShouldStop | None,
    on_tile: OnTile,
) -> Image.Image:
    source = rgb if entry.input_channels == 3 else rgb.convert("L")
    array = np.asarray(source)
    if array.ndim == 2:
        array = array[..., None]
    out = upscale_array(model, array, tile=tile, overlap=overlap, should_stop=should_stop, on_tile=on_tile)
    if out.shape[2] == 1:
        return Image.fromarray(out[..., 0], "L").convert("RGB")
    return Image.fromarray(out, "RGB")


class _Progress:
    """Turns per-pass tile counts into one running count over all passes."""

    def __init__(self, on_tile: OnTile | None, counts: list[int]) -> None:
        self.on_tile = on_tile
        self.counts = counts

    def for_pass(self, index: int) -> OnTile:
        before = sum(self.counts[:index])
        after = sum(self.counts[index + 1 :])

        def report(done: int, total: int) -> None:
            if self.on_tile is not None:
                self.on_tile(before + done, before + total + after)

        return report
