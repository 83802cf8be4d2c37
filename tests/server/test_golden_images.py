"""Golden images: a fixed set of requests over HTTP (in-process app, real worker, tiny models with fixed
seeds) whose answers must not change by a single byte across refactors that mean to change no behaviour.

For every named request in `REQUESTS` the test compares, with `tests/server/golden_images.json`:
`images` (sha256 of each returned PNG, base64-decoded: pixels and the PNG's text chunks), `pixels` (sha256
of each image's decoded pixels, to tell a pixel change from a metadata change), `infotexts`, and a few
`info` fields (seeds, prompts, sizes). The requests cover every job kind: txt2img (batches, samplers,
variation seeds, prompt syntax, SD1/SDXL files, tiling, Tiled Diffusion, LoRA), hires fix (latent, pixel
and model upscalers, hires prompt/CFG/steps, denoising 0, a hires checkpoint), the SDXL refiner, img2img
(resize modes, inpainting in both areas with each fill, a 9-channel inpainting model) and the img2img
scripts "sd upscale" and "ultimate sd upscale" (with a seam fix).

Pixel and PNG hashes hold for one kind of CPU only: float32 (the HTTP tests' precision), 2 torch threads,
the versions pinned in pyproject.toml (torch 2.14.1, diffusers 0.42.1, pillow 13.0.0, ...) and the CPU's vector
instructions as torch reports them (`torch.backends.cpu.get_cpu_capability()`: AVX512, AVX2, ...), which pick
other kernels and so legitimately give other last bits. They are recorded per capability under "hashes"; on a
capability without a record only the infotexts and info fields are compared (machine-independent), and the
test says so. Record the hashes of a new capability on a commit whose images are known good.

Re-record (after a change that is meant to change images, or on another machine), from the repo root:

    HIRESD_RECORD_GOLDEN=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \\
        .venv/bin/python -m pytest tests/server/test_golden_images.py

The tests then write (merge into) the JSON file instead of comparing; `-k NAME` re-records only those
requests. Run again without the variable to check the recording."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import ServerConfig
from tests.fixtures.networks import make_network
from tests.fixtures.tinymodels import build_tiny_refiner, build_tiny_sd1
from tests.server.livesrv import write_tiny_esrgan
from tests.server.test_live_img2img import box_mask, noise
from tests.server.test_live_ultimate_upscale import usdu_args

GOLDEN = Path(__file__).with_name("golden_images.json")
RECORD = os.environ.get("HIRESD_RECORD_GOLDEN") == "1"
CPU = torch.backends.cpu.get_cpu_capability()  # the kernels torch picks, hence the last bits of the images
# not all_subseeds: a subseed of -1 is drawn at random (as in A1111); only a variation strength uses it
INFO_FIELDS = ("all_prompts", "all_negative_prompts", "all_seeds", "subseed_strength",
               "width", "height", "sampler_name", "steps", "cfg_scale", "denoising_strength", "sd_model_name")

BUILTIN = "hiresd-builtin-tiny"  # the server's built-in model, as /sdapi/v1/sd-models names it
SD1, SDXL, INPAINT, REFINER = "tiny-sd1", "tiny-sdxl", "tiny-sd1-inpaint", "tiny-xl-refiner"
LORA = "golden"


def _ckpt(name: str) -> dict[str, Any]:
    return {"override_settings": {"sd_model_checkpoint": name}}


def _b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


BASE = {"prompt": "a red fox in the snow", "negative_prompt": "blurry", "steps": 4, "width": 64, "height": 64,
        "seed": 1234, "cfg_scale": 7.0, "sampler_name": "Euler", **_ckpt(BUILTIN)}
HIRES = {**BASE, "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2, "denoising_strength": 0.6,
         "hr_prompt": "a red fox in the snow, detailed fur", "hr_negative_prompt": "lowres", "hr_cfg": 5.0}
I2I = {**BASE, "init_images": [_b64(noise(96, 64, seed=1))], "denoising_strength": 0.5}
MASK = _b64(box_mask(96, 64, (24, 16, 72, 48)))
INPAINT_BASE = {**I2I, "mask": MASK, "denoising_strength": 0.75, "mask_blur": 4,
                "inpaint_full_res_padding": 8}
UPSCALE = {**BASE, "init_images": [_b64(noise(48, 48, seed=4))], "steps": 2, "denoising_strength": 0.3}


def _tiled(*args: Any) -> dict[str, Any]:
    return {"alwayson_scripts": {"Tiled Diffusion": {"args": list(args)}}}


def _chess(args: list[Any]) -> list[Any]:
    return [*args[:10], 1, *args[11:]]  # redraw_mode (args[10]) 1: Chess


# name -> (endpoint, payload); names are the keys of golden_images.json
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    # txt2img
    "txt2img_plain": ("txt2img", BASE),
    "txt2img_batch2_iter2": ("txt2img", {**BASE, "batch_size": 2, "n_iter": 2}),
    "txt2img_euler_a": ("txt2img", {**BASE, "sampler_name": "Euler a"}),
    "txt2img_dpmpp_2m_karras": ("txt2img", {**BASE, "sampler_name": "DPM++ 2M", "scheduler": "Karras"}),
    "txt2img_dpmpp_sde": ("txt2img", {**BASE, "sampler_name": "DPM++ SDE"}),
    "txt2img_variation_seed": ("txt2img", {**BASE, "subseed": 99, "subseed_strength": 0.3}),
    "txt2img_prompt_syntax_clip_skip": ("txt2img", {
        **BASE, "prompt": "(a red fox:1.3) in the [snow:rain:0.5], AND a forest",
        "override_settings": {"sd_model_checkpoint": BUILTIN, "CLIP_stop_at_last_layers": 2}}),
    "txt2img_sd1_file": ("txt2img", {**BASE, **_ckpt(SD1)}),
    "txt2img_sdxl_file": ("txt2img", {**BASE, **_ckpt(SDXL)}),
    "txt2img_tiling": ("txt2img", {**BASE, "tiling": True}),
    "txt2img_tiled_diffusion_multidiffusion": ("txt2img", {
        **BASE, "width": 192, "height": 64,
        **_tiled(True, "MultiDiffusion", False, True, 1024, 1024, 8, 8, 4, 2)}),
    "txt2img_tiled_diffusion_mixture": ("txt2img", {
        **BASE, "width": 128, "height": 96,
        **_tiled(True, "Mixture of Diffusers", False, True, 1024, 1024, 8, 8, 4, 1)}),
    "txt2img_lora": ("txt2img", {**BASE, "prompt": f"a red fox in the snow <lora:{LORA}:0.8>", **_ckpt(SD1)}),
    # hires fix
    "hires_latent": ("txt2img", {**HIRES, "hr_upscaler": "Latent"}),
    "hires_lanczos": ("txt2img", {**HIRES, "hr_upscaler": "Lanczos"}),
    "hires_esrgan_resize": ("txt2img", {**HIRES, "hr_upscaler": "4x-Tiny", "hr_resize_x": 128,
                                        "hr_resize_y": 96, "hr_sampler_name": "DPM++ 2M"}),
    "hires_latent_denoise0": ("txt2img", {**HIRES, "hr_upscaler": "Latent", "denoising_strength": 0}),
    "hires_lanczos_denoise0": ("txt2img", {**HIRES, "hr_upscaler": "Lanczos", "denoising_strength": 0}),
    "hires_checkpoint": ("txt2img", {**HIRES, "hr_upscaler": "Latent (nearest)", "hr_checkpoint_name": SD1}),
    # SDXL refiner
    "txt2img_refiner": ("txt2img", {**BASE, "steps": 6, **_ckpt(SDXL), "refiner_checkpoint": REFINER,
                                    "refiner_switch_at": 0.5}),
    # img2img
    "img2img_plain": ("img2img", I2I),
    "img2img_batch2": ("img2img", {**I2I, "batch_size": 2}),
    "img2img_resize_crop": ("img2img", {**I2I, "resize_mode": 1}),
    "img2img_resize_fill": ("img2img", {**I2I, "resize_mode": 2}),
    "img2img_resize_latent": ("img2img", {**I2I, "resize_mode": 3}),
    "img2img_tiled_diffusion": ("img2img", {
        **I2I, **_tiled(True, "Mixture of Diffusers", False, True, 1024, 1024, 8, 8, 4, 1)}),
    **{f"inpaint_{'only_masked' if full else 'whole'}_fill{fill}": ("img2img", {
        **INPAINT_BASE, "inpaint_full_res": full, "inpainting_fill": fill})
       for full in (True, False) for fill in (0, 1, 2)},
    "inpaint_invert_latent_nothing": ("img2img", {**INPAINT_BASE, "inpaint_full_res": False,
                                                  "inpainting_fill": 3, "inpainting_mask_invert": 1}),
    "inpaint_9channel_model": ("img2img", {**INPAINT_BASE, **_ckpt(INPAINT), "inpaint_full_res": False,
                                           "inpainting_fill": 1}),
    # img2img scripts
    "sd_upscale": ("img2img", {**UPSCALE, "script_name": "sd upscale",
                               "script_args": ["", 16, "Lanczos", 2.0]}),
    "ultimate_sd_upscale": ("img2img", {**UPSCALE, "script_name": "ultimate sd upscale",
                                        "script_args": usdu_args("Lanczos", tile=64, target=2, scale=2)}),
    "ultimate_sd_upscale_esrgan_chess": ("img2img", {
        **UPSCALE, "script_name": "ultimate sd upscale",
        "script_args": _chess(usdu_args("4x-Tiny", tile=64, target=2, scale=2))}),
    "ultimate_sd_upscale_seam_fix": ("img2img", {
        **UPSCALE, "script_name": "ultimate sd upscale",
        "script_args": usdu_args("Lanczos", tile=64, seams_fix_type=3, target=2, scale=2)}),
}


@pytest.fixture(scope="module")
def client(tiny_checkpoints: dict[str, Any], tmp_path_factory: pytest.TempPathFactory):
    """A models folder with the session's tiny SD1 / SD1-inpainting / SDXL files (copied), a tiny SDXL
    refiner, a tiny 4x ESRGAN and a LoRA for tiny-sd1; the built-in model is there too."""
    root = tmp_path_factory.mktemp("srv-golden")
    models = root / "models"
    ckpts = models / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    for key in ("sd1", "sd1_inpaint", "sdxl"):
        shutil.copy(tiny_checkpoints["root"] / "Stable-diffusion" / tiny_checkpoints[key], ckpts)
    work = root / "build"
    build_tiny_refiner(work).write_safetensors(ckpts / f"{REFINER}.safetensors")
    write_tiny_esrgan(models)
    sd1 = build_tiny_sd1(work, seed=7)  # the same weights as the fixture's tiny-sd1 file
    make_network(sd1, "lora", seed=1).save(models / "Lora" / f"{LORA}.safetensors")
    cfg = ServerConfig(models_dir=models, data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


@pytest.fixture(scope="module")
def recorded():
    """The stored records; in record mode, the new ones, merged into the file at the module's end."""
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    new: dict[str, Any] = {}
    yield stored, new
    if RECORD and new:
        merged = {}
        for name in REQUESTS:
            old, got = stored.get(name), new.get(name)
            if got is None:
                if old is not None:
                    merged[name] = old
                continue
            # the hashes of other CPU capabilities are kept while this request's meaning is unchanged
            hashes = dict(old.get("hashes", {})) if old and old["infotexts"] == got["infotexts"] else {}
            hashes.update(got["hashes"])
            merged[name] = {**got, "hashes": dict(sorted(hashes.items()))}
        GOLDEN.write_text(json.dumps(merged, indent=1, sort_keys=False) + "\n")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record(body: dict[str, Any]) -> dict[str, Any]:
    raw = [base64.b64decode(b) for b in body["images"]]
    pixels = []
    for data in raw:
        img = Image.open(io.BytesIO(data))
        arr = np.asarray(img)
        pixels.append(_sha(f"{img.mode}{arr.shape}".encode() + arr.tobytes()))
    info = json.loads(body["info"])
    return {"infotexts": info["infotexts"], "info": {k: info.get(k) for k in INFO_FIELDS},
            "hashes": {CPU: {"pixels": pixels, "images": [_sha(d) for d in raw]}}}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_golden(client: TestClient, recorded, name: str) -> None:
    endpoint, payload = REQUESTS[name]
    r = client.post(f"/sdapi/v1/{endpoint}", json=payload)
    assert r.status_code == 200, f"{name}: {r.status_code} {r.text[:500]}"
    got = _record(r.json())
    stored, new = recorded
    if RECORD:
        new[name] = got
        return
    assert name in stored, f"{name}: no record in {GOLDEN.name}; re-record with HIRESD_RECORD_GOLDEN=1"
    want = stored[name]
    assert got["infotexts"] == want["infotexts"], f"request {name!r} changed: its infotexts differ"
    assert got["info"] == want["info"], f"request {name!r} changed: its info fields differ"
    if CPU not in want["hashes"]:
        pytest.skip(f"infotexts and info equal; no pixel hashes recorded for CPU capability {CPU} "
                    f"(recorded: {', '.join(want['hashes'])})")
    have, expect = got["hashes"][CPU], want["hashes"][CPU]
    assert have["pixels"] == expect["pixels"], f"request {name!r} changed: its image PIXELS differ"
    assert have["images"] == expect["images"], \
        f"request {name!r} changed: its PNG bytes differ (pixels are equal)"


def test_golden_file_covers_exactly_the_requests() -> None:
    if RECORD:
        pytest.skip("recording")
    stored = json.loads(GOLDEN.read_text())
    assert set(stored) == set(REQUESTS), (f"stale: {sorted(set(stored) - set(REQUESTS))}, "
                                          f"missing: {sorted(set(REQUESTS) - set(stored))}")
