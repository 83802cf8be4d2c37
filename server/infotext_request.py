"""The generation requests' `infotext` field (A1111 v1.10): paste an image's parameters, get its image.

`apply_infotext` returns the request with the infotext's fields filled in where the request did not set
them, and the settings it carries added to `override_settings` (pipeline/infotext/apply.py says which).
Names are resolved here, as A1111 resolves them when it loads: `Model hash` picks the local checkpoint
with that hash (else the one named by `Model`, else the current one stays, where A1111 would fall back to
its first checkpoint), `VAE` a VAE file of that name (else the setting is left alone)."""
from __future__ import annotations

import types
import typing
from typing import Any, TypeVar

from pydantic import ValidationError

from pipeline.infotext.apply import option_overrides, rename_loras, request_fields
from pipeline.infotext.codec import parse_infotext
from pipeline.runtime.errors import InvalidRequest, UnknownName
from server.options import OPTIONS
from server.services import Services

R = TypeVar("R")


def _checkpoint(svc: Services, params: dict[str, Any], current: str) -> str | None:
    for candidate in (params.get("Model hash"), params.get("Model")):
        if not candidate:
            continue
        try:
            info = svc.models.find(str(candidate))
        except UnknownName:
            continue
        return None if info.title == current or info.filename == current else info.title
    return None


def _coerce(annotation: Any, value: Any, name: str) -> Any:
    """A text value converted to the request field's type, as A1111 converts it (`target_type(value)`)."""
    kinds = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    if value is None or isinstance(value, bool) or not isinstance(value, str):
        return value
    try:
        for kind in (bool, int, float):
            if kind in kinds:
                if kind is bool:
                    return value == "True"
                return int(float(value)) if kind is int else float(value)
    except ValueError:
        raise InvalidRequest(f"infotext.{name}", f"the infotext gives {value!r}, not a number") from None
    return value


def _local_lora(svc: Services, name: str, shorthash: str) -> str | None:
    """The local LoRA file with `shorthash` (A1111's 12-character hash): the named file when it has it,
    else the first file that does, by its alias when the alias finds it (A1111's preferred name)."""
    if svc.networks is None:
        return None
    index = svc.networks.loras
    named = index.find(name)
    if named is not None and named.shorthash == shorthash:
        return None  # already right: the tag stays as written
    for lf in index.list():
        if lf.shorthash == shorthash:
            return lf.alias if index.find(lf.alias) is lf else lf.name
    return None


def apply_infotext(svc: Services, req: R, endpoint: str) -> R:
    """`req` (a Txt2ImgRequest or Img2ImgRequest) with its `infotext` applied; unchanged without one."""
    text = getattr(req, "infotext", None)
    if not text:
        return req
    params = parse_infotext(text, backcompat=bool(svc.options.get("auto_backcompat")))
    rename_loras(params, lambda name, short: _local_lora(svc, name, short))
    set_fields = set(req.model_fields_set)
    fields = request_fields(params, endpoint, set_fields)
    requested = dict(req.override_settings or {})
    current = svc.options.all()
    defaults = {name: option.default for name, option in OPTIONS.items()}
    overrides = option_overrides(params, current, defaults, requested)
    overrides.pop("sd_model_checkpoint", None)
    if "sd_model_checkpoint" not in requested:
        title = _checkpoint(svc, params, str(current.get("sd_model_checkpoint") or ""))
        if title is not None:
            overrides["sd_model_checkpoint"] = title
    if "sd_vae" in overrides:
        try:
            svc.models.check_vae(overrides["sd_vae"])
        except UnknownName:
            overrides.pop("sd_vae")
    model_fields = type(req).model_fields
    fields = {k: _coerce(model_fields[k].annotation, v, k) for k, v in fields.items() if k in model_fields}
    data = {**req.model_dump(exclude_unset=True), **fields}
    if overrides:
        data["override_settings"] = {**overrides, **requested}
    try:
        return type(req).model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise InvalidRequest(f"infotext.{where}", f"{first['msg']} (from the infotext)") from None
