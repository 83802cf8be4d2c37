"""The API contract over HTTP (in-process app, real worker, built-in model): `alwayson_scripts` as A1111
answers it, and a matrix of malformed requests that must all be a clear 4xx with the worker still
serving afterwards."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ServerConfig

SMALL = {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "seed": 1234}

RECORDER = '''
NAME = "Arg Recorder"
CALLS = []

def process_before_every_sampling(p, *args, **kwargs):
    CALLS.append((kwargs["pass_no"], args))
'''


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("contract")
    ext = root / "extensions"
    ext.mkdir()
    (ext / "arg_recorder.py").write_text(RECORDER)
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=ext, max_pixels=512 * 512, max_body_mb=8)
    with TestClient(create_app(cfg)) as c:
        yield c


def _recorded(client: TestClient) -> list:
    ext = next(e for e in client.app.state.services.extensions.items if e.name == "Arg Recorder")
    return ext.hooks["process_before_every_sampling"].__globals__["CALLS"]


def _a1111_error(r) -> dict:
    body = r.json()
    assert set(body) == {"error", "detail", "body", "errors"}, body
    return body


def test_unknown_alwayson_script_is_422_naming_it_and_the_known_ones(client: TestClient) -> None:
    # (ADetailer, the usual example, is a known title now: accepted disabled, a 400 when enabled)
    unknown = {"Regional Prompter": {"args": [True]}}
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": unknown})
    assert r.status_code == 422, r.text
    detail = _a1111_error(r)["detail"]
    assert "Script 'Regional Prompter' not found" in detail and "'arg recorder'" in detail


def test_known_alwayson_script_gets_its_args(client: TestClient) -> None:
    calls = _recorded(client)
    calls.clear()
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {
        "ARG RECORDER": {"args": [0.5, "x", {"k": 1}]}}})  # names are case-insensitive, as in A1111
    assert r.status_code == 200, r.text
    assert calls == [(1, (0.5, "x", {"k": 1}))]
    calls.clear()
    assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200
    assert calls == [(1, ())]  # no entry: the hook is called with p alone


@pytest.mark.parametrize("entry", [5, {"args": "not a list"}, None])
def test_alwayson_entry_must_hold_an_args_list(client: TestClient, entry: object) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"arg recorder": entry}})
    assert r.status_code == 400, r.text
    assert "alwayson_scripts.arg recorder" in _a1111_error(r)["detail"]


JSON = {"content-type": "application/json"}
DEEP = 100_000


@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/sdapi/v1/extra-single-image", "/sdapi/v1/png-info",
                                  "/sdapi/v1/options"])
@pytest.mark.parametrize("name, body, headers", [
    ("truncated JSON", json.dumps(SMALL)[:-7].encode(), JSON),
    ("empty body", b"", JSON),
    ("a JSON array", b"[1, 2, 3]", JSON),
    ("a JSON string", b'"prompt"', JSON),
    ("non-UTF-8 bytes", b'{"prompt": "\xff\xfe\xfa"}', JSON),
    ("latin-1 declared as UTF-8", '{"prompt": "caf\xe9"'.encode("latin-1") + b"}", JSON),
    ("deeply nested JSON", b'{"prompt": ' + b"[" * DEEP + b"]" * DEEP + b"}", JSON),
    ("text/plain", json.dumps(SMALL).encode(), {"content-type": "text/plain"}),
    ("a form", b"prompt=a+fox&steps=2", {"content-type": "application/x-www-form-urlencoded"}),
    ("multipart", b"--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nfox\r\n--b--\r\n",
     {"content-type": "multipart/form-data; boundary=b"}),
    ("no content type", json.dumps(SMALL).encode(), {}),
])
def test_malformed_requests_are_a_clear_4xx(client: TestClient, path: str, name: str, body: bytes,
                                           headers: dict) -> None:
    r = client.post(path, content=body, headers=headers)
    if name == "no content type" and path != "/sdapi/v1/extra-single-image":
        # FastAPI reads a body without a content type as JSON: txt2img runs, png-info lacks its image,
        # options reject the txt2img keys
        assert r.status_code in (200, 400, 422), (name, r.status_code, r.text)
        return
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    body_json = r.json()  # always JSON, in FastAPI's 422 shape or A1111's error shape
    assert "detail" in body_json


@pytest.mark.parametrize("field", ["comments", "override_settings", "alwayson_scripts"])
def test_deep_but_parseable_json_is_a_422(client: TestClient, field: str) -> None:
    """Nesting under the JSON parser's limit but too deep to echo back in `parameters` is refused up front."""
    deep: object = 1
    for _ in range(900):
        deep = [deep]
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, field: {"x": deep}})
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert f"{field}: nested deeper than 64 levels" in r.text


def test_a_100_mb_body_is_413(client: TestClient) -> None:
    """Chunked, without a length, over --max-body-mb (8 here); that the server stops reading near the
    limit needs a real socket: tests/server/test_live_limits.py."""
    chunk = b'{"prompt": "' + b"x" * (1024 * 1024)
    r = client.post("/sdapi/v1/txt2img", content=(chunk for _ in range(100)), headers=JSON)
    assert r.status_code == 413, r.text[:300]
    assert "max-body-mb" in _a1111_error(r)["detail"]


def test_the_worker_serves_after_the_bad_inputs(client: TestClient) -> None:
    for body in (b"{", b'{"prompt": "\xff"}', b"[" * DEEP):
        assert 400 <= client.post("/sdapi/v1/txt2img", content=body, headers=JSON).status_code < 500
    r = client.post("/sdapi/v1/txt2img", json=SMALL)
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_options_preflight_answers_its_allow_header(client: TestClient) -> None:
    """OPTIONS is not an operation of the schema; the answer's Allow header lists what the path serves."""
    r = client.options("/sdapi/v1/options")
    assert r.status_code == 405
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    schema = client.get("/openapi.json").json()
    assert "options" not in schema["paths"]["/sdapi/v1/options"]



def test_an_unreadable_body_is_400_in_a1111_shape(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", content=b'{"prompt": "\xff\xfe"}', headers=JSON)
    assert r.status_code == 400
    assert "UTF-8 JSON" in _a1111_error(r)["detail"]
    assert client.get("/sdapi/v1/no-such-route").json() == {"detail": "Not Found"}  # FastAPI's, as A1111
