"""The leniency A1111 clients rely on, stated in the JSON schema so that a generated client, a fuzzer and
the server agree on what a request may hold.

A1111 (pydantic 1) coerces freely. We keep what real clients send and say so in the schema:
- an integer field takes a JSON integer, a float (truncated, as pydantic 1 does, where the model says
  so) and a boolean (false = 0, true = 1); range limits apply to the converted value;
- a number field takes a number or a boolean;
- a boolean field takes a boolean or the integers 0 and 1.
Numbers written as JSON strings ("512", "true") are refused with a 422 naming the field: stricter than
A1111, so that every accepted body is one the schema describes."""
from __future__ import annotations

import math
import types
import typing
from typing import Any

from pydantic_core import PydanticCustomError

Kind = typing.Literal["int", "float", "bool"]
_KINDS: dict[Any, Kind] = {int: "int", float: "float", bool: "bool"}


def scalar_kind(annotation: Any) -> Kind | None:
    """'int', 'float' or 'bool' for that type or its Optional; None for anything else."""
    if annotation in _KINDS:
        return _KINDS[annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = {_KINDS.get(a) for a in typing.get_args(annotation) if a is not type(None)}
        if len(kinds) == 1:
            return kinds.pop()
    return None


def refuse_strings(field: str, kind: Kind | None, value: Any) -> None:
    """A JSON string where a number or boolean belongs is a 422 naming the field."""
    if kind is not None and isinstance(value, str):
        expected = {"int": "an integer", "float": "a number", "bool": "true or false"}[kind]
        raise PydanticCustomError("json_scalar_type",
                                  "{field}: expected {expected} as a JSON value, not the string {value}",
                                  {"field": field, "expected": expected, "value": repr(value[:40])})


MAX_DEPTH = 64  # nesting a request may hold (A1111 script args need a handful); deeper cannot be echoed back


def refuse_deep(field: str, value: Any, limit: int = MAX_DEPTH) -> None:
    """Lists and objects nested deeper than `limit` are a 422 naming the field (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                raise PydanticCustomError("json_too_deep", "{field}: nested deeper than {limit} levels",
                                          {"field": field, "limit": limit})
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def truncate_float(kind: Kind | None, value: Any) -> Any:
    """pydantic 1's int(value) for a finite float sent to an integer field."""
    if kind == "int" and isinstance(value, float) and math.isfinite(value):
        return int(value)
    return value


def nullable(schema: dict[str, Any]) -> None:
    """`json_schema_extra` for a field whose validator maps null to its default: the schema takes null."""
    branch = {k: schema.pop(k) for k in ("type", "minLength", "maxLength", "pattern", "enum") if k in schema}
    schema["anyOf"] = [branch, {"type": "null"}]


def _allowed_bools(lo: float, hi: float) -> list[bool]:
    return [b for b in (False, True) if lo <= int(b) <= hi]


def _bounds(s: dict[str, Any]) -> tuple[float, float]:
    lo = s.get("minimum", -math.inf)
    if "exclusiveMinimum" in s:
        lo = math.nextafter(s["exclusiveMinimum"], math.inf)
    hi = s.get("maximum", math.inf)
    if "exclusiveMaximum" in s:
        hi = math.nextafter(s["exclusiveMaximum"], -math.inf)
    return lo, hi


def _bool_branch(lo: float, hi: float) -> dict[str, Any] | None:
    allowed = _allowed_bools(lo, hi)
    if not allowed:
        return None
    return {"type": "boolean"} if len(allowed) == 2 else {"type": "boolean", "enum": allowed}


def _truncated_number_branch(s: dict[str, Any]) -> dict[str, Any]:
    """Floats whose truncation (towards zero) lands in the integer range [lo, hi]."""
    lo, hi = _bounds(s)
    out: dict[str, Any] = {"type": "number"}
    if lo > -math.inf:
        lo = math.ceil(lo)
        if lo > 0:
            out["minimum"] = lo
        else:
            out["exclusiveMinimum"] = lo - 1
    if hi < math.inf:
        hi = math.floor(hi)
        if hi >= 0:
            out["exclusiveMaximum"] = hi + 1
        else:
            out["maximum"] = hi
    return out


_KEYWORDS = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "enum")


def _lenient(s: dict[str, Any], truncate_floats: bool) -> dict[str, Any] | None:
    """The union a scalar's schema becomes, or None when it stays as it is."""
    kind = s.get("type")
    if kind == "integer" and "enum" in s:  # an int Literal: booleans that equal a member are taken
        allowed = [b for b in (False, True) if int(b) in s["enum"]]
        core = {k: v for k, v in s.items() if k in _KEYWORDS}
        return {"anyOf": [core, {"type": "boolean", "enum": allowed}]} if allowed else None
    if kind not in ("integer", "number", "boolean") or "enum" in s:
        return None
    core = {k: v for k, v in s.items() if k in _KEYWORDS}
    lo, hi = _bounds(s)
    branches = [core]
    if kind == "integer" and truncate_floats:
        branches.append(_truncated_number_branch(s))
    if kind in ("integer", "number"):
        branch = _bool_branch(lo, hi)
        if branch is not None:
            branches.append(branch)
    if kind == "boolean":
        branches.append({"type": "integer", "enum": [0, 1]})
    return {"anyOf": branches}


def document(schema: dict[str, Any], truncate_floats: bool, blank_ok: tuple[str, ...] = ()) -> None:
    """Rewrite the integer, number and boolean properties of a model's JSON schema into the unions the
    model accepts (Optional ones keep their null branch); titles, defaults and descriptions stay. Fields in
    `blank_ok` also take "" and null (A1111's random seed)."""
    for name, prop in schema.get("properties", {}).items():
        if name in blank_ok:
            _document_one(prop, truncate_floats)
            prop["anyOf"] = prop.get("anyOf", []) + [{"type": "string", "maxLength": 0}, {"type": "null"}]
            continue
        _document_one(prop, truncate_floats)


def _document_one(prop: dict[str, Any], truncate_floats: bool) -> None:
    if "anyOf" in prop:
        new: list[dict[str, Any]] = []
        for branch in prop["anyOf"]:
            union = _lenient(branch, truncate_floats)
            new += union["anyOf"] if union else [branch]
        prop["anyOf"] = new
        return
    union = _lenient(prop, truncate_floats)
    if union is not None:
        for k in _KEYWORDS:
            prop.pop(k, None)
        prop["anyOf"] = union["anyOf"]
