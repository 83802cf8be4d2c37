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


def test_every_operation_documents_its_error_responses() -> None:
    """400/413/422 where there is a body, 401 on guarded paths, 503 with Retry-After where a job can
    queue, 500 everywhere: all in A1111's error model, a named component."""
    schema = json.loads(render())
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert set(error["required"]) == {"error", "detail", "body", "errors"}
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, item in schema["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            assert responses["500"]["content"]["application/json"]["schema"] == ref, (method, path)
            if path.startswith("/sdapi/"):
                assert "WWW-Authenticate" in responses["401"]["headers"], (method, path)
            if "requestBody" in op:
                for status in ("400", "413"):
                    assert responses[status]["content"]["application/json"]["schema"] == ref, (method, path)
                assert ref in responses["422"]["content"]["application/json"]["schema"]["anyOf"]
    txt2img = schema["paths"]["/sdapi/v1/txt2img"]["post"]["responses"]
    assert "Retry-After" in txt2img["503"]["headers"]
    assert "503" not in schema["paths"]["/sdapi/v1/interrupt"]["post"]["responses"]  # answered at once
