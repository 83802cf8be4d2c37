"""Starting `python -m server` as A1111 users do: an A1111 launch line in `COMMANDLINE_ARGS`, a saved
options file naming files that are gone and a `--ckpt` that does not exist: the server starts, says what
it does instead of each A1111-only flag, and serves txt2img."""
from __future__ import annotations

import json

import pytest

from pipeline.models.builtin import BUILTIN_NAME
from tests.server.livesrv import LiveServer

SMALL = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "seed": 7}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("live-launch")
    # the launch line of a webui-user.sh; --server-name keeps the test on 127.0.0.1 despite --listen
    line = (f'--xformers --medvram --no-half-vae --api --listen --theme dark --skip-torch-cuda-test '
            f'--opt-sdp-attention --api-log --enable-console-prompts '
            f'--ckpt "{root / "moved away.safetensors"}"')
    server = LiveServer(root, "--server-name", "127.0.0.1", env={"COMMANDLINE_ARGS": line})
    (server.data / "options.json").write_text(json.dumps({
        "sd_model_checkpoint": "renamed-since.safetensors [0123456789]", "sd_vae": "deleted.vae.safetensors",
        "jpeg_quality": 91}))
    server.start().wait_ready()
    yield server
    server.stop()


def test_stale_saved_names_fall_back_and_txt2img_works(srv: LiveServer) -> None:
    with srv.client() as c:
        opts = c.get("/sdapi/v1/options").json()
        assert opts["sd_model_checkpoint"].startswith(BUILTIN_NAME)
        assert opts["sd_vae"] == "Automatic"
        assert opts["jpeg_quality"] == 91  # the rest of the saved options still apply
        r = c.post("/sdapi/v1/txt2img", json=SMALL)
        assert r.status_code == 200, r.text
        assert json.loads(r.json()["info"])["sd_model_name"] == BUILTIN_NAME
    log = srv.log()
    assert log.count("renamed-since.safetensors") == 1, log
    assert log.count("deleted.vae.safetensors") == 1, log
    assert log.count("moved away.safetensors") == 1, log


def test_the_launch_line_is_read_and_each_a1111_only_flag_noted_once(srv: LiveServer) -> None:
    log = srv.log()
    for flag, says in [("--xformers", "SDPA"), ("--medvram", "no separate device memory"),
                       ("--theme", "no web UI"), ("--enable-console-prompts", "not printed")]:
        lines = [line for line in log.splitlines() if f" {flag}: " in line]
        assert len(lines) == 1 and says in lines[0], (flag, lines)
    with srv.client() as c:
        flags = c.get("/sdapi/v1/cmd-flags").json()
    assert flags["xformers"] is True and flags["medvram"] is True and flags["theme"] == "dark"
    assert flags["no_half_vae"] is True and flags["api"] is True and flags["listen"] is True
    assert flags["server_name"] == "127.0.0.1" and flags["ckpt"].endswith("moved away.safetensors")
