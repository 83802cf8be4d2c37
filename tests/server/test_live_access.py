"""Access control against a real server: --api-auth Basic auth on /sdapi/v1, /docs and /openapi.json
(401 + WWW-Authenticate), webuiapi's set_auth, CORS headers only for the configured origins, /login for
bots, and the server-stop / server-restart routes that exist only with --api-server-stop."""
from __future__ import annotations

import httpx
import pytest
import webuiapi

from tests.fixtures.alwayson import BUILTIN_ALWAYSON
from tests.server.livesrv import LiveServer

USERS = "alice:s3cret,bob:pa55"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    server = LiveServer(tmp_path_factory.mktemp("live-access"), "--api-auth", USERS, "--api-server-stop",
                        "--cors-allow-origins", "http://ui.example", auth=("alice", "s3cret"))
    server.start().wait_ready()
    yield server
    server.stop()


@pytest.mark.parametrize("path", ["/sdapi/v1/progress", "/sdapi/v1/options", "/sdapi/v1/sd-models",
                                  "/docs", "/openapi.json", "/controlnet/version", "/controlnet/model_list"])
def test_every_route_needs_credentials(srv: LiveServer, path: str) -> None:
    r = httpx.get(srv.base + path)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert r.json()["detail"] == "Not authenticated"
    r = httpx.get(srv.base + path, auth=("alice", "wrong"))
    assert r.status_code == 401 and r.json()["detail"] == "Incorrect username or password"
    assert httpx.get(srv.base + path, auth=("bob", "pa55")).status_code == 200
    assert httpx.post(srv.base + "/sdapi/v1/txt2img", json={"prompt": "x"}).status_code == 401


def test_webuiapi_with_set_auth(srv: LiveServer) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=srv.port, sampler="Euler", steps=2)
    assert api.get_sd_models()["detail"] == "Not authenticated"  # list getters return the error body
    with pytest.raises(RuntimeError, match="401"):
        api.txt2img(prompt="x", width=64, height=64)
    api.set_auth("alice", "s3cret")
    assert api.get_scripts()["txt2img"] == ["slowmo", *BUILTIN_ALWAYSON]
    assert api.get_options()["samples_format"] == "png"
    flags = api.get_cmd_flags()
    assert flags["api_auth"] == "alice:***,bob:***" and "s3cret" not in str(flags)  # never echo passwords
    assert flags["api_server_stop"] is True and flags["cors_allow_origins"] == "http://ui.example"
    res = api.txt2img(prompt="a boat", width=64, height=64, seed=3)
    assert res.images[0].size == (64, 64) and res.info["all_seeds"] == [3]


def test_cors_only_for_configured_origins(srv: LiveServer) -> None:
    r = httpx.get(srv.api + "/progress", auth=srv.auth, headers={"Origin": "http://ui.example"})
    assert r.headers["access-control-allow-origin"] == "http://ui.example"
    r = httpx.get(srv.api + "/progress", auth=srv.auth, headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = httpx.options(srv.api + "/txt2img", headers={"Origin": "http://ui.example",
                                                       "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://ui.example"
    r = httpx.get(srv.api + "/progress", headers={"Origin": "http://ui.example"})  # a 401 a browser can read
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://ui.example"


def test_login_checks_the_form(srv: LiveServer) -> None:
    assert httpx.post(srv.base + "/login", data={"username": "bob", "password": "pa55"}).json() == {"success": True}
    assert httpx.post(srv.base + "/login", data={"username": "bob", "password": "no"}).status_code == 400


def test_server_restart_is_501_and_server_stop_stops(srv: LiveServer) -> None:
    assert httpx.post(srv.api + "/server-restart", auth=srv.auth).status_code == 501
    r = httpx.post(srv.api + "/server-stop", auth=srv.auth)
    assert r.status_code == 200 and r.text == "Stopping."
    assert srv.proc is not None and srv.proc.wait(60) == 0
