"""Starting `python -m server` as A1111 users do: a saved options file naming files that are gone and a
`--ckpt` that does not exist never lock the server out."""
from __future__ import annotations

import json

import pytest

from pipeline.builtin import BUILTIN_NAME
from tests.server.livesrv import LiveServer

SMALL = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "seed": 7}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("live-launch")
    server = LiveServer(root, "--ckpt", str(root / "moved-away.safetensors"))
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
    assert log.count("moved-away.safetensors") == 1, log
