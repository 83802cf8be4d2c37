"""Extra-network tags in prompts, with A1111 v1.10's grammar: `<type:arg:arg:k=v>`.

A tag is `<`, a type (word characters, case-sensitive), `:`, then anything but `>`, then `>`. Every tag is
removed from the text that is conditioned (unknown types too); the spaces and commas around it stay. The
arguments split on every `:`; an item with exactly one `=` is named, the others positional (the first
positional is the network's name). Pure text processing: nothing here imports torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline.runtime.errors import InvalidRequest

__all__ = ["LORA_TYPES", "LoraParams", "Tag", "lora_params", "parse_tags", "strip_tags"]

_TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_TYPES = ("lora", "lyco")
"""Tag types the LoRA handler takes (`lyco` is A1111's alias for the same code)."""


@dataclass(frozen=True)
class Tag:
    """One tag as written: its type, positional and named arguments, and the text it was."""

    type: str
    positional: tuple[str, ...]
    named: tuple[tuple[str, str], ...] = ()
    text: str = ""

    @property
    def name(self) -> str:
        return self.positional[0] if self.positional else ""


@dataclass(frozen=True)
class LoraParams:
    """A LoRA tag resolved to A1111's numbers: `te` and `unet` multipliers, `dyn` rank limit."""

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None
    tag: str = field(default="", compare=False)


def _split_args(text: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    positional: list[str] = []
    named: list[tuple[str, str]] = []
    for item in text.split(":"):
        parts = item.split("=")
        if len(parts) == 2:
            named.append((parts[0], parts[1]))
        else:
            positional.append(item)
    return tuple(positional), tuple(named)


def parse_tags(prompt: str) -> tuple[str, list[Tag]]:
    """(the prompt with every tag removed, the tags in prompt order)."""
    tags: list[Tag] = []

    def take(m: re.Match[str]) -> str:
        positional, named = _split_args(m.group(2))
        tags.append(Tag(m.group(1), positional, named, m.group(0)))
        return ""

    return _TAG.sub(take, prompt), tags


def strip_tags(prompt: str) -> str:
    """The prompt without its tags: what the text encoder sees."""
    return _TAG.sub("", prompt)


def _number(tag: Tag, what: str, text: str, kind: type) -> float | int:
    try:
        return kind(text)
    except ValueError:
        example = "0.8" if kind is float else "8"
        raise InvalidRequest("prompt", f"{tag.text}: the {what} {text!r} is not a number; write e.g. "
                             f"<{tag.type}:{tag.name}:{example}>") from None


def lora_params(tags: list[Tag]) -> list[LoraParams]:
    """The LoRA tags (`lora` and `lyco`) as A1111 combines them: the type mentioned first goes first, each
    type's tags in prompt order. A non-numeric multiplier or dyn is an InvalidRequest (A1111 logs it and
    silently applies no LoRA at all)."""
    order = list(dict.fromkeys(t.type for t in tags if t.type in LORA_TYPES))
    out: list[LoraParams] = []
    for kind in order:
        for tag in (t for t in tags if t.type == kind):
            if not tag.name.strip():
                raise InvalidRequest("prompt", f"{tag.text}: the tag names no network; "
                                     f"write <{kind}:NAME:0.8>")
            pos, named = tag.positional, dict(tag.named)
            te = float(_number(tag, "te multiplier", pos[1], float)) if len(pos) > 1 else 1.0
            if "te" in named:
                te = float(_number(tag, "te multiplier", named["te"], float))
            unet = float(_number(tag, "unet multiplier", pos[2], float)) if len(pos) > 2 else te
            if "unet" in named:
                unet = float(_number(tag, "unet multiplier", named["unet"], float))
            dyn = int(_number(tag, "dyn rank", pos[3], int)) if len(pos) > 3 else None
            if "dyn" in named:
                dyn = int(_number(tag, "dyn rank", named["dyn"], int))
            out.append(LoraParams(tag.name, te, unet, dyn, tag.text))
    return out
