"""Extra networks through a live server and webuiapi: /loras, /refresh-loras, /embeddings,
/refresh-embeddings, a LoRA tag in txt2img (400 for a bad one, `Lora hashes` read back by png-info)."""
from __future__ import annotations

import json

import pytest
import torch
import webuiapi
from safetensors.torch import save_file

from tests.fixtures.networks import make_network
from tests.server.livesrv import LiveServer

SMALL = {"prompt": "a fox", "steps": 3, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    from pipeline.models.builtin import build_builtin_model

    root = tmp_path_factory.mktemp("live-networks")
    server = LiveServer(root)
    model = build_builtin_model(torch.device("cpu"), torch.float32)
    make_network(model, "lora", seed=1).save(server.models / "Lora" / "styles" / "detail.safetensors",
                                              {"ss_output_name": "add_detail",
                                               "ss_base_model_version": "sd_v1",
                                               "ss_tag_frequency": '{"a": {"b": 1}}'})
    torch.save(make_network(model, "lora", seed=2).tensors, server.models / "Lora" / "old.pt")
    make_network(model, "loha", seed=3).save(server.models / "LyCORIS" / "hada.safetensors")
    width = model.text_encoders[0].get_input_embeddings().weight.shape[1]
    (server.models / "embeddings").mkdir()
    emb = server.models / "embeddings"
    save_file({"emb_params": torch.randn(2, width)}, str(emb / "goodemb.safetensors"))
    save_file({"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)},
              str(server.models / "embeddings" / "xlemb.safetensors"))
    server.start().wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(srv: LiveServer) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=srv.port, sampler="Euler", steps=3)


def test_get_loras_lists_both_folders_with_a1111_fields(srv, api):
    loras = {item["name"]: item for item in api.get_loras()}
    assert set(loras) == {"detail", "old", "hada"}
    detail = loras["detail"]
    assert detail["alias"] == "add_detail"
    assert detail["path"] == str((srv.models / "Lora" / "styles" / "detail.safetensors").resolve())
    assert detail["metadata"]["ss_tag_frequency"] == {"a": {"b": 1}}
    assert loras["old"]["metadata"] == {} and loras["old"]["alias"] == "old"


def test_refresh_loras_finds_a_new_file(srv, api):
    from pipeline.models.builtin import build_builtin_model

    model = build_builtin_model(torch.device("cpu"), torch.float32)
    make_network(model, "lokr", seed=4).save(srv.models / "LyCORIS" / "newone.safetensors")
    with srv.client() as http:
        r = http.post("/sdapi/v1/refresh-loras")
        assert r.status_code == 200 and r.json() is None
    assert "newone" in {item["name"] for item in api.get_loras()}


def test_a_lora_by_alias_runs_and_png_info_reads_its_hash_back(srv):
    with srv.client() as http:
        prompt = "a fox <lora:add_detail:0.7> <lyco:hada>"
        r = http.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": prompt})
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert info["prompt"] == "a fox <lora:add_detail:0.7> <lyco:hada>"
        back = http.post("/sdapi/v1/png-info", json={"image": r.json()["images"][0]}).json()
    hashes = back["parameters"]["Lora hashes"]
    assert hashes.startswith("add_detail: ") and ", hada: " in hashes
    assert back["parameters"]["Prompt"] == "a fox <lora:add_detail:0.7> <lyco:hada>"


@pytest.mark.parametrize(("prompt", "says"), [
    ("a fox <lora:add_detial:0.7>", "'add_detail'"),
    ("a fox <lora:detail:lots>", "not a number"),
])
def test_bad_lora_tags_are_400_naming_the_tag(srv, prompt, says):
    with srv.client() as http:
        r = http.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": prompt})
    assert r.status_code == 400
    body = r.json()
    text = json.dumps(body)
    assert prompt.split(" ", 2)[2] in text and says in text


def test_embeddings_loaded_and_skipped_for_the_current_model(srv, api):
    with srv.client() as http:
        assert http.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "goodemb"}).status_code == 200
    listing = api.get_embeddings()
    assert listing["loaded"]["goodemb"]["vectors"] == 2
    assert listing["skipped"]["xlemb"]["shape"] == 2048
    sub = srv.models / "embeddings" / "sub"
    sub.mkdir()
    width = listing["loaded"]["goodemb"]["shape"]
    save_file({"emb_params": torch.randn(1, width)}, str(sub / "later.safetensors"))
    with srv.client() as http:
        assert http.post("/sdapi/v1/refresh-embeddings").json() is None
    assert "later" in api.get_embeddings()["loaded"]


def test_get_embeddings_lists_a_bundled_embedding_while_its_lora_is_applied(srv, api):
    from pipeline.models.builtin import build_builtin_model

    model = build_builtin_model(torch.device("cpu"), torch.float32)
    width = model.text_encoders[0].get_input_embeddings().weight.shape[1]
    tensors = dict(make_network(model, "lora", seed=5).tensors)
    tensors["bundle_emb.packedkitty.string_to_param.*"] = torch.randn(3, width)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              str(srv.models / "Lora" / "bundled.safetensors"))
    with srv.client() as http:
        http.post("/sdapi/v1/refresh-loras")
        ok = http.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "packedkitty <lora:bundled:0.5>"})
        assert ok.status_code == 200, ok.text
        assert "packedkitty: bundled" in json.loads(ok.json()["info"])["infotexts"][0]  # TI hashes
        assert api.get_embeddings()["loaded"]["packedkitty"]["vectors"] == 3
        assert http.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200  # no LoRA: no bundled embedding
    assert "packedkitty" not in api.get_embeddings()["loaded"]


def test_lora_backup_device_is_an_option_with_three_choices(srv):
    with srv.client() as http:
        bad = http.post("/sdapi/v1/options", json={"lora_backup_device": "gpu"})
        assert bad.status_code == 400 and "'auto', 'device', 'cpu'" in bad.text
        images = []
        for where in ("cpu", "device"):  # the same picture wherever the backups live
            r = http.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a fox <lora:detail:0.8>",
                                                     "override_settings": {"lora_backup_device": where}})
            assert r.status_code == 200, r.text
            images.append(r.json()["images"][0])
            http.post("/sdapi/v1/txt2img", json=SMALL)  # restore between them
        assert images[0] == images[1]
        assert http.get("/sdapi/v1/options").json()["lora_backup_device"] == "auto"
