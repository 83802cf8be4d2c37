"""Writes openapi.json from the app (run after changing any route or schema):

    .venv/bin/python scripts/gen_openapi.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def render() -> str:
    from server.app import create_app
    from server.config import ServerConfig

    return json.dumps(create_app(ServerConfig()).openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    (ROOT / "openapi.json").write_text(render(), encoding="utf-8")
    print("wrote openapi.json")
