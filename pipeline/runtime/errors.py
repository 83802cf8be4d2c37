"""Typed errors raised by the pipeline. `server/` maps them to HTTP status codes; nothing here knows HTTP."""
from __future__ import annotations


class PipelineError(Exception):
    """Base class: a request that cannot be served as asked. The message is shown to the client."""


class InvalidRequest(PipelineError):
    """The request names something that does not exist or asks for something impossible (a 4xx)."""

    def __init__(self, field: str, message: str, valid: list[str] | None = None):
        self.field = field
        self.valid = list(valid) if valid is not None else None
        text = f"{field}: {message}"
        if self.valid is not None:
            choices = ", ".join(repr(v) for v in self.valid) or "none available"
            text += f". Valid values: {choices}"
        super().__init__(text)


class UnknownName(InvalidRequest):
    """A sampler, scheduler, upscaler, checkpoint or VAE name that matches nothing."""

    def __init__(self, field: str, name: object, valid: list[str]):
        super().__init__(field, f"unknown name {name!r}", valid)
        self.name = name


class UnknownScript(InvalidRequest):
    """An `alwayson_scripts` entry naming a script the server does not have (A1111 answers 422)."""

    def __init__(self, name: object, known: list[str]):
        listing = (f"known always-on scripts: {', '.join(repr(k) for k in known)}" if known
                   else "this server has no always-on scripts")
        super().__init__("alwayson_scripts", f"Script {name!r} not found ({listing}; see /sdapi/v1/scripts)")
        self.name = name
        self.known = list(known)


class TooLarge(InvalidRequest):
    """A job whose pixels exceed the configured budget."""


class ModelLoadError(PipelineError):
    """A model file that could not be loaded; names the file and the reason."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"could not load {path}: {reason}")


class Interrupted(Exception):
    """Raised inside a sampling or tiling loop when the job was interrupted (carries nothing)."""
