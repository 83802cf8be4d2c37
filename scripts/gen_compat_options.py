"""Rewrites the option lists of docs/compatibility.md ("## Options", from the "- **Applied**" bullet to the
next section) from the catalogue in server/a1111_options.py. Run after moving an option between groups:

    .venv/bin/python scripts/gen_compat_options.py

The prose bullets above "- **Applied**" are left as they are; tests/server/test_a1111_options_http.py checks
that every option is listed under its group."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.a1111_options import APPLIED, unapplied_groups  # noqa: E402

PAGE = ROOT / "docs" / "compatibility.md"
WIDTH = 110


def names(group: dict) -> str:
    return ", ".join(f"`{n}`" for n in sorted(group, key=str.lower)) + "."


def bullet(head: str, body: str) -> str:
    return textwrap.fill(f"{head} {body}", width=WIDTH, initial_indent="- ", subsequent_indent="  ",
                         break_on_hyphens=False, break_long_words=False)


def render() -> str:
    out = [bullet("**Applied** (with A1111's default and A1111's meaning):", names(APPLIED))]
    for reason, group in unapplied_groups():
        out.append(bullet(f"**Accepted without effect: {reason}.**", names(group)))
    return "\n".join(out) + "\n"


def main() -> None:
    page = PAGE.read_text("utf-8")
    start = page.index("## Options")
    first = page.index("- **Applied**", start)
    end = page.index("\n## ", first)
    PAGE.write_text(page[:first] + render() + page[end:], "utf-8")


if __name__ == "__main__":
    main()
