"""The generation requests' `infotext` field over HTTP (A1111 v1.10): posting an image's infotext gives that
image; fields the request sets itself win; the settings an infotext carries (RNG, ENSD, Clip skip, ...)
apply to that job only."""
from __future__ import annotations

import base64
import hashlib
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import ServerConfig
from tests.fixtures.networks import make_network

BASE = {"prompt": "a red fox in the snow", "negative_prompt": "blurry", "steps": 4, "width": 64, "height": 64,
        "seed": 1234, "cfg_scale": 7.0, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    from pipeline.models.builtin import build_builtin_model

    root = tmp_path_factory.mktemp("srv-infotext")
    model = build_builtin_model(torch.device("cpu"), torch.float32)
    make_network(model, "lora", seed=1).save(root / "models" / "Lora" / "fox_detail_v2.safetensors")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


def _post(client: TestClient, payload: dict, endpoint: str = "txt2img") -> dict:
    r = client.post(f"/sdapi/v1/{endpoint}", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    body["info"] = json.loads(body["info"])
    return body


def _sha(b64: str) -> str:
    return hashlib.sha256(base64.b64decode(b64)).hexdigest()


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


ROUND_TRIPS = {
    "euler_a_nv_ensd_hires_clip_skip": {
        **BASE, "sampler_name": "Euler a", "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent",
        "hr_second_pass_steps": 2, "denoising_strength": 0.6, "hr_prompt": "a red fox, detailed fur",
        "override_settings": {"randn_source": "NV", "eta_noise_seed_delta": 31337,
                              "CLIP_stop_at_last_layers": 2}},
    "dpmpp_2m_karras_variation_cpu": {
        **BASE, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "subseed": 99, "subseed_strength": 0.3,
        "override_settings": {"randn_source": "CPU"}},
    "dpmpp_sde_second_image_of_a_batch": {**BASE, "sampler_name": "DPM++ SDE", "seed": 1235},
    "sampling_options": {
        **BASE, "prompt": "a (red:1.2) [fox:cat:1.0] in the snow", "sampler_name": "DPM++ 2M",
        "scheduler": "Karras", "negative_prompt": ", ".join(["blurry, lowres, bad anatomy, watermark"] * 12),
        "override_settings": {"always_discard_next_to_last_sigma": True, "s_min_uncond": 3.0, "emphasis": "No norm",
                              "skip_early_cond": 0.2, "rho": 5.0, "sigma_max": 10.0, "sgm_noise_multiplier": True,
                              "use_old_scheduling": True, "pad_cond_uncond": True}},
}


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_posting_an_images_infotext_gives_the_same_image_bytes(client: TestClient, name: str) -> None:
    original = _post(client, ROUND_TRIPS[name])
    infotext = original["info"]["infotexts"][0]
    if name == "sampling_options":  # every option wrote its key, so the text carries it back
        for key in ("Discard penultimate sigma: True", "NGMS: 3.0", "Emphasis: No norm", "Skip Early CFG: 0.2",
                    "Schedule rho: 5.0", "Schedule max sigma: 10.0", "SGM noise multiplier: True",
                    "Old prompt editing timelines: True", "Pad conds: True"):
            assert key in infotext, key
    again = _post(client, {"infotext": infotext})
    assert _sha(again["images"][0]) == _sha(original["images"][0])  # pixels and the PNG's infotext
    assert again["info"]["infotexts"][0] == infotext
    assert again["parameters"]["prompt"] == ROUND_TRIPS[name]["prompt"]  # the applied request is answered


def test_the_settings_an_infotext_carries_change_the_image_and_do_not_stay(client: TestClient) -> None:
    plain = _post(client, {**BASE, "sampler_name": "Euler a"})
    text = plain["info"]["infotexts"][0]
    assert "RNG" not in text and "ENSD" not in text  # A1111's defaults write neither key
    nv = _post(client, {"infotext": text.replace("Version:", "RNG: NV, ENSD: 31337, Version:")})
    assert "RNG: NV" in nv["info"]["infotexts"][0] and "ENSD: 31337" in nv["info"]["infotexts"][0]
    assert np.abs(_pixels(nv["images"][0]).astype(int) - _pixels(plain["images"][0])).mean() > 1
    options = client.get("/sdapi/v1/options").json()
    assert options["randn_source"] == "GPU" and options["eta_noise_seed_delta"] == 0  # per job only
    assert _sha(_post(client, {**BASE, "sampler_name": "Euler a"})["images"][0]) == _sha(plain["images"][0])


def test_fields_the_request_sets_win_over_the_infotext(client: TestClient) -> None:
    text = _post(client, BASE)["info"]["infotexts"][0]
    body = _post(client, {"infotext": text, "seed": 99, "steps": 3,
                          "override_settings": {"CLIP_stop_at_last_layers": 2}})
    info = body["info"]
    assert info["seed"] == 99 and info["steps"] == 3 and info["clip_skip"] == 2
    assert info["prompt"] == BASE["prompt"] and info["all_negative_prompts"] == ["blurry"]


def test_an_a1111_written_infotext_runs_as_the_request_it_describes(client: TestClient) -> None:
    """Written by A1111 v1.10.1 (its key order, a model hash of another machine that does not resolve here,
    its legacy combined sampler name): the job runs with those parameters, on the current checkpoint."""
    text = ("a red fox in the snow\nNegative prompt: blurry\nSteps: 4, Sampler: DPM++ 2M Karras, CFG scale: 6.5, "
            "Seed: 777, Size: 64x64, Model hash: 0123456789, Model: someone-elses-model, Clip skip: 2, "
            "ENSD: 31337, Version: v1.10.1")
    via_text = _post(client, {"infotext": text})
    explicit = _post(client, {**BASE, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "cfg_scale": 6.5,
                              "seed": 777, "override_settings": {"CLIP_stop_at_last_layers": 2,
                                                                 "eta_noise_seed_delta": 31337}})
    assert _sha(via_text["images"][0]) == _sha(explicit["images"][0])
    assert via_text["info"]["sampler_name"] == "DPM++ 2M" and via_text["info"]["cfg_scale"] == 6.5


def test_an_infotext_with_a_hires_section_turns_hires_fix_on(client: TestClient) -> None:
    text = ("a red fox in the snow\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, "
            "Denoising strength: 0.5, Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent, Version: v1.10.1")
    body = _post(client, {"infotext": text})
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).size == (128, 128)
    assert body["info"]["denoising_strength"] == 0.5


def test_img2img_takes_the_infotext_too(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    init = base64.b64encode(buf.getvalue()).decode()
    payload = {**BASE, "init_images": [init], "denoising_strength": 0.5, "sampler_name": "Euler a",
               "override_settings": {"randn_source": "NV", "initial_noise_multiplier": 0.9,
                                     "img2img_extra_noise": 0.2}}
    original = _post(client, payload, "img2img")
    for key in ("Noise multiplier: 0.9", "Extra noise: 0.2", "RNG: NV"):
        assert key in original["info"]["infotexts"][0]
    again = _post(client, {"init_images": [init], "infotext": original["info"]["infotexts"][0]}, "img2img")
    assert _sha(again["images"][0]) == _sha(original["images"][0])


def test_a_bad_value_in_the_infotext_is_a_4xx_naming_it(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={"infotext": "a fox\nSteps: many, Sampler: Euler, Seed: 1"})
    assert r.status_code == 400 and "infotext.steps" in r.text
    r = client.post("/sdapi/v1/txt2img", json={"infotext": "a fox\nSteps: 2, Sampler: Euler, Seed: 1, RNG: XPU"})
    assert r.status_code in (400, 422) and "randn_source" in r.text


def test_an_old_versions_infotext_switches_its_back_compat_options_on(client: TestClient) -> None:
    """A1111 before 1.6.0 padded DDIM's negative prompt by repeating its last vector, and before 1.7.0-225
    sampled with float16 alphas_cumprod: its infotexts carry no key for either, the Version says it
    (infotext_versions.backcompat -> `Pad conds v0`, `Downcast alphas_cumprod`)."""
    negative = ", ".join(["blurry, lowres, bad anatomy, watermark"] * 12)  # two chunks against the prompt's one
    text = (f"a red fox in the snow\nNegative prompt: {negative}\nSteps: 4, Sampler: DDIM, CFG scale: 7, "
            "Seed: 9, Size: 64x64, Version: v1.5.1")
    via_text = _post(client, {"infotext": text})
    explicit = _post(client, {**BASE, "negative_prompt": negative, "sampler_name": "DDIM", "seed": 9,
                              "override_settings": {"pad_cond_uncond_v0": True, "use_downcasted_alpha_bar": True}})
    unpadded = _post(client, {**BASE, "negative_prompt": negative, "sampler_name": "DDIM", "seed": 9})
    assert "Pad conds v0: True" in via_text["info"]["infotexts"][0]
    assert "Downcast alphas_cumprod: True" in via_text["info"]["infotexts"][0]
    assert np.array_equal(_pixels(via_text["images"][0]), _pixels(explicit["images"][0]))
    assert not np.array_equal(_pixels(via_text["images"][0]), _pixels(unpadded["images"][0]))


def test_lora_hashes_find_a_renamed_local_file(client: TestClient) -> None:
    """The image was made with a LoRA called `fox_detail` elsewhere; here the same file (same hash) is
    `fox_detail_v2`: the tag is rewritten to the local name (the Lora extension's infotext rule)."""
    made = _post(client, {**BASE, "prompt": "a red fox in the snow <lora:fox_detail_v2:0.8>"})
    text = made["info"]["infotexts"][0]
    assert "Lora hashes" in text
    elsewhere = text.replace("fox_detail_v2", "fox_detail")  # the prompt's tag and the hash's key
    again = _post(client, {"infotext": elsewhere})
    assert again["info"]["prompt"] == "a red fox in the snow <lora:fox_detail_v2:0.8>"
    assert _sha(again["images"][0]) == _sha(made["images"][0])
    unknown = elsewhere.replace(text.split("fox_detail_v2: ")[1][:12], "000000000000")
    r = client.post("/sdapi/v1/txt2img", json={"infotext": unknown})
    assert r.status_code == 400 and "fox_detail" in r.text  # no file with that hash: the tag stays, unknown
