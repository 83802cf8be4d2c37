"""A1111 v1.10's model, VAE, LoRA and memory options over HTTP (in-process app, real worker, tiny models
written as files): which VAE a checkpoint runs with (`sd_vae_overrides_per_model_preferences` against the
checkpoint's user metadata and a VAE named after it), float8 weights (`fp8_storage`, `cache_fp16_weight`),
`lora_functional`, `sd_checkpoints_limit` and `lora_in_memory_limit`."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ServerConfig

SMALL = {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler"}


def _config(root: Path) -> ServerConfig:
    return ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                        extensions_dir=None, max_pixels=512 * 512)


def _vae_file(path: Path, seed: int) -> None:
    """A VAE for the tiny SD 1.x checkpoint with weights of its own (diffusers layout, torch.save)."""
    from diffusers import AutoencoderKL

    from tests.fixtures.tinymodels import tiny_sd1_file_configs

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(AutoencoderKL(**tiny_sd1_file_configs()["vae"]).state_dict(), path)


def _params(body: dict) -> dict[str, str]:
    text = json.loads(body["info"])["infotexts"][0]
    return dict(re.findall(r"(?:^|, )([A-Za-z ][\w \-/]*): ((?:\"[^\"]*\")|[^,]*)", text.splitlines()[-1]))


@pytest.fixture(scope="module")
def vae_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.tinymodels import build_tiny_sd1, build_tiny_sdxl

    root = tmp_path_factory.mktemp("srv-vae-prefs")
    ckpts = root / "models" / "Stable-diffusion"
    tiny = build_tiny_sd1(tmp_path_factory.mktemp("build"), seed=3)
    tiny.write_safetensors(ckpts / "liked.safetensors")  # user metadata names x.pt
    (ckpts / "liked.json").write_text(json.dumps({"description": "mine", "vae": "x.pt"}))
    tiny.write_safetensors(ckpts / "paired.safetensors")  # a VAE named after it: paired.vae.pt
    tiny.write_safetensors(ckpts / "plain.safetensors")  # no preference
    build_tiny_sdxl(tmp_path_factory.mktemp("build-xl")).write_safetensors(ckpts / "xl.safetensors")
    _vae_file(root / "models" / "VAE" / "x.pt", 11)
    _vae_file(root / "models" / "VAE" / "y.pt", 12)
    _vae_file(ckpts / "paired.vae.pt", 13)
    return root


@pytest.mark.parametrize("ckpt,overrides,sd_vae,used", [
    # option on (A1111's default): a chosen VAE wins over every per-model preference
    ("liked", True, "y.pt", "y.pt"), ("paired", True, "y.pt", "y.pt"), ("liked", True, "None", None),
    # off: the checkpoint's user metadata, then a VAE named after it, then the chosen one
    ("liked", False, "y.pt", "x.pt"), ("paired", False, "y.pt", "paired.vae.pt"),
    ("plain", False, "y.pt", "y.pt"), ("liked", False, "None", "x.pt"),
    # Automatic: the per-model preference whatever the option says; without one the checkpoint's own
    ("liked", True, "Automatic", "x.pt"), ("paired", True, "Automatic", "paired.vae.pt"),
    ("plain", True, "Automatic", None),
])
def test_selected_vae_against_per_model_preferences(vae_root: Path, ckpt: str, overrides: bool, sd_vae: str,
                                                    used: str | None) -> None:
    with TestClient(create_app(_config(vae_root))) as client:
        body = {**SMALL, "override_settings": {"sd_model_checkpoint": ckpt, "sd_vae": sd_vae,
                                               "sd_vae_overrides_per_model_preferences": overrides}}
        r = client.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        params = _params(r.json())
        assert params["Model"] == ckpt
        assert params.get("VAE") == used, params


# -- fp8_storage, cache_fp16_weight, lora_functional (built-in SD 1.x model, a LoRA over it) --------------
@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    from pipeline.models.builtin import build_builtin_model
    from tests.fixtures.networks import make_network

    root = tmp_path_factory.mktemp("srv-weights")
    model = build_builtin_model()
    make_network(model, "lora", seed=5).save(root / "models" / "Lora" / "net.safetensors")
    make_network(model, "loha", seed=6).save(root / "models" / "Lora" / "ha.safetensors")  # convs too
    make_network(model, "lora", seed=7).save(root / "models" / "Lora" / "third.safetensors")
    with TestClient(create_app(_config(root))) as c:
        yield c


def _run(client: TestClient, prompt: str = "a red fox", **options: object) -> tuple[list, dict[str, str]]:
    """(the pixels, the infotext's parameters) of a small txt2img with these override_settings."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": prompt, "override_settings": options})
    assert r.status_code == 200, r.text
    body = r.json()
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("RGB")).tolist()
    return pixels, _params(body)


def test_fp8_storage_stores_weights_in_float8_and_says_so(client: TestClient) -> None:
    plain, params = _run(client)
    assert "FP8 weight" not in params and "Cache FP16 weight for LoRA" not in params
    fp8, params = _run(client, fp8_storage="Enable")
    assert fp8 != plain  # float8's rounding of the weights shows in the pixels
    assert params["FP8 weight"] == "Enable" and params["Cache FP16 weight for LoRA"] == "False"
    again, _ = _run(client, fp8_storage="Enable")
    assert again == fp8
    # the built-in model is SD 1.x: "Enable for SDXL" leaves it as it is (the float8 one is read again)
    sdxl_only, params = _run(client, fp8_storage="Enable for SDXL")
    assert sdxl_only == plain and "FP8 weight" not in params
    assert _run(client)[0] == plain
    assert client.get("/sdapi/v1/options").json()["fp8_storage"] == "Disable"


def test_fp8_storage_bad_value_is_a_400_naming_it(client: TestClient) -> None:
    r = client.post("/sdapi/v1/options", json={"fp8_storage": "Sometimes"})
    assert r.status_code == 400 and "fp8_storage" in r.text and "Enable for SDXL" in r.text, r.text


def test_cache_fp16_weight_merges_a_lora_onto_the_float16_copies(client: TestClient) -> None:
    lora = "a red fox <lora:net:1>"
    plain_lora, _ = _run(client, lora)
    fp8_lora, params = _run(client, lora, fp8_storage="Enable")
    assert fp8_lora != plain_lora and params["Lora hashes"]
    cached, params = _run(client, lora, fp8_storage="Enable", cache_fp16_weight=True)
    assert params["Cache FP16 weight for LoRA"] == "True" and params["FP8 weight"] == "Enable"
    assert cached != fp8_lora  # merged onto float16 weights, rounded to float8 once
    # without a LoRA the float16 copies change nothing
    fp8 = _run(client, fp8_storage="Enable")[0]
    assert _run(client, fp8_storage="Enable", cache_fp16_weight=True)[0] == fp8
    # cache_fp16_weight alone (no float8) changes nothing and writes nothing
    alone, params = _run(client, lora, cache_fp16_weight=True)
    assert alone == plain_lora and "Cache FP16 weight for LoRA" not in params


@pytest.mark.parametrize("net", ["net", "ha"])
def test_lora_functional_adds_the_networks_to_layer_outputs(client: TestClient, net: str) -> None:
    import numpy as np

    lora = f"a red fox <lora:{net}:1>"
    plain, _ = _run(client)
    merged, _ = _run(client, lora)
    functional, params = _run(client, lora, lora_functional=True)
    assert params["Lora hashes"].strip('"').startswith(f"{net}: ")
    assert functional != plain  # the network acts
    # the same sums in another order: equal up to rounding
    assert np.abs(np.asarray(functional, np.int16) - np.asarray(merged, np.int16)).max() <= 2
    assert _run(client, lora)[0] == merged  # merged again, bit for bit (the hooks are gone)
    assert _run(client, lora_functional=True)[0] == plain  # no network: nothing to add
    # on float8 weights the difference is plain: merged, the network's delta is rounded to float8 with
    # the weights; functional, it keeps the input's precision
    fp8_merged, _ = _run(client, lora, fp8_storage="Enable")
    fp8_functional, _ = _run(client, lora, fp8_storage="Enable", lora_functional=True)
    assert fp8_functional != fp8_merged


@pytest.mark.parametrize("limit,loads", [(1, ["plain", "paired", "plain"]), (2, ["plain", "paired"])])
def test_sd_checkpoints_limit_keeps_checkpoints_loaded(vae_root: Path, limit: int, loads: list[str],
                                                       caplog) -> None:
    """A -> B -> A: with room for two, A is not read from its file again (the log says each load)."""
    import logging

    with TestClient(create_app(_config(vae_root))) as client:
        caplog.clear()
        caplog.set_level(logging.INFO, logger="hiresd.models")
        for ckpt in ("plain", "paired", "plain"):
            options = {"sd_model_checkpoint": ckpt, "sd_checkpoints_limit": limit}
            body = {**SMALL, "override_settings": options}
            r = client.post("/sdapi/v1/txt2img", json=body)
            assert r.status_code == 200, r.text
            assert _params(r.json())["Model"] == ckpt
        loaded = [Path(r.getMessage().split("loading checkpoint ", 1)[1]).stem for r in caplog.records
                  if r.getMessage().startswith("loading checkpoint ")]
        assert loaded == loads
        r = client.post("/sdapi/v1/options", json={"sd_checkpoints_limit": 11})
        assert r.status_code == 400 and "sd_checkpoints_limit" in r.text, r.text


def test_lora_in_memory_limit_caps_the_parsed_files_kept(client: TestClient) -> None:
    """How many parsed LoRA files stay in memory (the server's network cache, read through its public
    API): without the option the byte budget (`lora_cache_mb`) alone; with it, at most that many, the
    files of the set in use always."""
    cache = client.app.state.services.networks.cache
    for net in ("net", "ha", "third"):
        _run(client, f"a red fox <lora:{net}:0.5>")
    assert len(cache) == 3
    _run(client, "a red fox <lora:net:0.5>", lora_in_memory_limit=2)
    assert len(cache) == 2
    _run(client, "a red fox <lora:ha:0.5> <lora:third:0.5>", lora_in_memory_limit=1)
    assert len(cache) == 2  # the set in use stays whole
    _run(client, "a red fox <lora:net:0.5>", lora_in_memory_limit=1)
    assert len(cache) == 1


def test_fp8_storage_enable_for_sdxl_acts_on_sdxl_models(vae_root: Path) -> None:
    with TestClient(create_app(_config(vae_root))) as client:
        plain, params = _run(client, sd_model_checkpoint="xl")
        assert params["Model"] == "xl" and "FP8 weight" not in params
        fp8, params = _run(client, sd_model_checkpoint="xl", fp8_storage="Enable for SDXL")
        assert params["FP8 weight"] == "Enable for SDXL" and fp8 != plain
        assert _run(client, sd_model_checkpoint="xl", fp8_storage="Enable")[0] == fp8


def test_sd_lora_adds_its_lora_to_every_prompt_with_the_default_multiplier(client: TestClient) -> None:
    """A1111's Lora extension appends `<lora:sd_lora:extra_networks_default_multiplier>` to each prompt
    that does not name that LoRA already (the infotext's prompt shows it); a name no file has adds
    nothing."""
    plain, _ = _run(client)
    tagged, tagged_params = _run(client, "a red fox<lora:net:0.5>")
    added, params = _run(client, sd_lora="net", extra_networks_default_multiplier=0.5)
    assert added == tagged and added != plain
    assert params["Lora hashes"] == tagged_params["Lora hashes"]
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"sd_lora": "net"}})
    assert json.loads(r.json()["info"])["infotexts"][0].startswith("a red fox<lora:net:1.0>\n")
    assert _run(client, "a red fox<lora:net:0.5>", sd_lora="net")[0] == tagged  # named already: as named
    assert _run(client, sd_lora="nosuch")[0] == plain
    bad = {"extra_networks_default_multiplier": "x"}
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": bad})
    assert r.status_code == 400 and "extra_networks_default_multiplier" in r.text


def test_sd_lora_with_a_hires_prompt_equal_to_the_prompt_writes_a_hires_prompt_line(
        client: TestClient) -> None:
    """A1111 1.10 compares the hires prompt with the infotext's prompt when it writes the infotext
    (processing.py get_hr_prompt), after its Lora extension appended the `sd_lora` tag to the prompts
    (not to the hires prompts): a hires prompt sent equal to the prompt differs from the tagged prompt
    then, and `Hires prompt` names it, untagged. Without `sd_lora` no such line."""
    hires = {**SMALL, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "hr_second_pass_steps": 1,
             "denoising_strength": 0.5, "hr_prompt": SMALL["prompt"]}
    r = client.post("/sdapi/v1/txt2img", json={**hires, "override_settings": {"sd_lora": "net"}})
    assert r.status_code == 200, r.text
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert text.startswith("a red fox<lora:net:1.0>\n")
    assert _params(r.json())["Hires prompt"] == "a red fox"
    r = client.post("/sdapi/v1/txt2img", json={**hires, "override_settings": {}})
    assert r.status_code == 200, r.text
    assert "Hires prompt" not in _params(r.json())
