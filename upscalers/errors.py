"""Typed errors of the upscaler library; the server maps them to HTTP status codes."""

from __future__ import annotations

from pathlib import Path


class UpscalerError(Exception):
    """Base class of every error this package raises on purpose."""


class UnknownUpscaler(UpscalerError):
    """A name matches no upscaler; the message names it and lists the valid names."""

    def __init__(self, name: str, valid: list[str], hint: str = "") -> None:
        self.name = name
        self.valid = list(valid)
        self.hint = hint
        message = f"could not find upscaler named {name!r}"
        if hint:
            message += f" ({hint})"
        message += "; valid names: " + ", ".join(self.valid)
        super().__init__(message)


class AmbiguousUpscaler(UnknownUpscaler):
    """A loosely written name matches several upscalers; the message lists them."""

    def __init__(self, name: str, candidates: list[str], valid: list[str]) -> None:
        self.candidates = list(candidates)
        super().__init__(name, valid, hint="ambiguous, it could mean " + " or ".join(map(repr, candidates)))


class BadImage(UpscalerError):
    """An input image cannot be processed (empty, or it would become empty)."""

    def __init__(self, item: int | str, reason: str) -> None:
        self.item = item
        self.reason = reason
        super().__init__(f"image {item}: {reason}")


class TooLarge(UpscalerError):
    """The requested result (or an intermediate of it) exceeds the pixel budget; raised before work."""

    def __init__(self, width: int, height: int, max_pixels: int, what: str = "output") -> None:
        self.width = width
        self.height = height
        self.max_pixels = max_pixels
        super().__init__(
            f"the {what} would be {width}x{height} = {width * height} pixels, "
            f"more than the limit of {max_pixels} pixels"
        )


class UnsafeModelFile(UpscalerError):
    """A model file was refused without executing it (a pickle payload, an unsupported format)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"refused model file {self.path}: {reason}")


class ModelLoadError(UpscalerError):
    """A listed model file could not be read or recognised when it was needed."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot load upscaler model {self.path}: {reason}")


class FaceRestorationUnavailable(UpscalerError):
    """A face restoration was requested but no usable model file of that restorer is installed."""

    def __init__(self, restorer: str, field: str, folder: str | None = None) -> None:
        self.restorer = restorer
        self.field = field
        where = f" (put a {restorer} .safetensors or .pth file under <models>/{folder})" if folder else ""
        super().__init__(
            f"{field} asks for {restorer} face restoration, but no {restorer} face restoration "
            f"model is installed on this server{where}; send {field}: 0"
        )


class Interrupted(UpscalerError):
    """`should_stop()` returned true between two tiles or passes; no partial result is returned."""


class DeviceOutOfMemory(UpscalerError):
    """The device ran out of memory even at the smallest tile size."""

    def __init__(self, tile: int, detail: str) -> None:
        self.tile = tile
        super().__init__(f"out of memory even with {tile}px tiles: {detail}")
