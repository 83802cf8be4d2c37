"""openapi.json is generated from the app and committed; this fails when it is stale."""
from __future__ import annotations

import json
from pathlib import Path

from scripts.gen_openapi import render

ROOT = Path(__file__).resolve().parent.parent


def test_openapi_json_is_current() -> None:
    committed = (ROOT / "openapi.json").read_text(encoding="utf-8")
    assert committed == render(), "openapi.json is stale: run .venv/bin/python scripts/gen_openapi.py"


def test_openapi_lists_the_a1111_routes() -> None:
    paths = json.loads(render())["paths"]
    for route in ("/sdapi/v1/txt2img", "/sdapi/v1/png-info", "/sdapi/v1/extra-single-image",
                  "/sdapi/v1/extra-batch-images", "/sdapi/v1/progress", "/sdapi/v1/sd-models",
                  "/sdapi/v1/samplers", "/sdapi/v1/schedulers", "/sdapi/v1/upscalers",
                  "/sdapi/v1/latent-upscale-modes", "/sdapi/v1/options"):
        assert route in paths
