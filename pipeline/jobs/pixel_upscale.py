"""Hires fix's pixel path through the upscaler registry: A1111's `resize_image` ("just resize") with a
named upscaler, and the name resolution hires fix needs (latent modes and pixel upscalers together)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PIL import Image

from pipeline.runtime.errors import UnknownName
from upscalers.errors import Interrupted as UpscaleInterrupted
from upscalers.errors import UnknownUpscaler
from upscalers.ldsr import LdsrOptions
from upscalers.loop import upscale
from upscalers.registry import UpscalerRegistry
from upscalers.tiling import tile_for

log = logging.getLogger("hiresd.hires")


def resolve_hires_upscaler(registry: UpscalerRegistry, name: str, field: str = "hr_upscaler") -> str:
    """The canonical name of a latent mode or pixel upscaler; unknown names list every valid one."""
    try:
        if registry.is_latent(name):
            return registry.resolve_latent(name).name
        return registry.resolve(name).name
    except UnknownUpscaler:
        raise UnknownName(field, name, registry.latent_modes() + registry.names()) from None


class HiresUpscaler:
    """Upscales a first-pass image to the hires size with the job's tile and LDSR options. `on_progress(done,
    total)` follows LDSR's sampling steps (a sampling pass of its own)."""

    def __init__(self, registry: UpscalerRegistry, options: dict[str, Any],
                 on_progress: Callable[[int, int], None] | None = None) -> None:
        self.registry = registry
        self.on_progress = on_progress
        self.options = options  # the tile options of each architecture (upscalers.tiling.tile_for)
        self.ldsr = LdsrOptions(steps=int(options.get("ldsr_steps", 100)),
                                cached=bool(options.get("ldsr_cached", False)))

    def upscale_to(self, image: Image.Image, name: str, width: int, height: int,
                   should_stop: Callable[[], bool]) -> Image.Image:
        """`None`: a plain Lanczos resize. Otherwise the A1111 upscale loop by max(width/w, height/h)
        when that is above 1, then a Lanczos resize to exactly width x height (aspect stretched).
        An interrupt in the middle of the upscaler leaves the image un-upscaled, as in A1111."""
        if name != "None":
            scale = max(width / image.width, height / image.height)
            if scale > 1:
                entry = self.registry.resolve(name)
                tile, overlap = tile_for(entry.architecture, self.options)
                try:
                    image = upscale(image, scale, entry, self.registry, tile=tile, overlap=overlap,
                                    should_stop=should_stop, ldsr=self.ldsr,
                                    on_tile=self.on_progress if entry.kind == "ldsr" else None)
                except UpscaleInterrupted:
                    log.info("upscaler %s interrupted; continuing with a Lanczos resize", name)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        return image
