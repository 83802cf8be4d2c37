"""Prompt styles from `styles.csv`, in A1111's format and with A1111's semantics.

The file has a header row `name,prompt,negative_prompt` (standard CSV quoting; extra columns are
ignored, a missing `negative_prompt` column is empty). Applying a style to a prompt: when the style's
text contains `{prompt}`, the prompt replaces that placeholder; otherwise the style's text is appended
after a ", " (empty parts are dropped). Several styles apply one after the other, in the order given;
the negative prompt is styled the same way with the style's `negative_prompt`. The file is re-read
when it changes on disk."""
from __future__ import annotations

import csv
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from pipeline.runtime.errors import UnknownName

log = logging.getLogger("hiresd.styles")

PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative_prompt: str

    def as_api(self) -> dict[str, str]:
        """The `/sdapi/v1/prompt-styles` entry."""
        return {"name": self.name, "prompt": self.prompt, "negative_prompt": self.negative_prompt}


def merge(style_text: str, prompt: str) -> str:
    """A1111's merge of one style text into a prompt."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def read_styles(path: Path) -> list[Style]:
    """The styles of a CSV file ([] when it does not exist). Rows without a name are skipped."""
    if not path.is_file():
        return []
    styles: dict[str, Style] = {}
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            name = (row.get("name") or "").strip()
            if not name:
                continue
            styles[name] = Style(name, row.get("prompt") or "", row.get("negative_prompt") or "")
    return list(styles.values())


class StyleStore:
    """The styles of one `styles.csv`, re-read when the file's mtime or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._styles: list[Style] = []

    def list(self) -> list[Style]:
        with self._lock:
            try:
                st = os.stat(self.path)
                stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
            except OSError:
                stamp = None
            if stamp != self._stamp:
                try:
                    self._styles = read_styles(self.path) if stamp is not None else []
                except (OSError, csv.Error, UnicodeDecodeError) as exc:
                    log.error("cannot read %s: %s", self.path, exc)
                    self._styles = []
                self._stamp = stamp
            return list(self._styles)

    def find(self, name: str, field: str = "styles") -> Style:
        styles = self.list()
        for style in styles:
            if style.name == name:
                return style
        raise UnknownName(field, name, [s.name for s in styles])

    def apply(self, prompt: str, negative_prompt: str, names: list[str] | None) -> tuple[str, str]:
        """(prompt, negative prompt) with the named styles applied in order; an unknown name raises
        UnknownName listing the styles that exist."""
        for name in names or []:
            style = self.find(name)
            prompt = merge(style.prompt, prompt)
            negative_prompt = merge(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt
