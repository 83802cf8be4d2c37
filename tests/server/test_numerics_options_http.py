"""A1111's sampling, text-encoding and preview options over HTTP (issue 19): each changes the pixels when set
(or gives exactly the pixels A1111's rule says it must), and none changes the default images."""
from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipeline.models.builtin import BUILTIN_NAME
from pipeline.runtime.job_state import JobState
from server.app import create_app
from server.config import ServerConfig
from tests.conftest import Env, count_unet

JOB = {"prompt": "a red fox in the snow", "negative_prompt": "blurry", "steps": 6, "width": 64, "height": 64,
       "seed": 1234, "cfg_scale": 7.0, "sampler_name": "Euler", "scheduler": "Karras"}
SDXL = "tiny-sdxl"
BASE = {"sd_model_checkpoint": BUILTIN_NAME}  # the built-in SD1 model, unless a test names SDXL


@pytest.fixture(scope="module")
def client(tiny_checkpoints: dict[str, Any], tmp_path_factory: pytest.TempPathFactory):
    """The built-in model (the default) and the session's tiny SDXL file."""
    root = tmp_path_factory.mktemp("srv-numerics")
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    shutil.copy(Path(tiny_checkpoints["root"]) / "Stable-diffusion" / tiny_checkpoints["sdxl"], ckpts)
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


def _images(client: TestClient, options: dict[str, Any] | None = None, **fields: Any) -> list[np.ndarray]:
    body = {**JOB, **fields, "override_settings": {**BASE, **(options or {})}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB"), dtype=np.int16)
            for b in r.json()["images"]]


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DPM++ SDE"])
def test_enable_quantization_changes_k_diffusion_images(client: TestClient, sampler: str) -> None:
    plain = _images(client, sampler_name=sampler)[0]
    assert _diff(_images(client, {"enable_quantization": False}, sampler_name=sampler)[0], plain) == 0
    # the tiny model hardly tells neighbouring timesteps apart: a small but certain change
    assert _diff(_images(client, {"enable_quantization": True}, sampler_name=sampler)[0], plain) > 0


def test_enable_quantization_leaves_timestep_samplers_alone(client: TestClient) -> None:
    # A1111's DDIM / PLMS / UniPC call the UNet with their own whole timesteps; the option is k-diffusion's
    plain = _images(client, sampler_name="DDIM", scheduler="Automatic")[0]
    assert _diff(_images(client, {"enable_quantization": True}, sampler_name="DDIM", scheduler="Automatic")[0],
                 plain) == 0


# 70 one-token words, a comma, then more words: the 75-token chunk fills 5 tokens after the comma
LONG = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)


def test_comma_padding_backtrack_moves_the_words_after_a_close_comma(client: TestClient) -> None:
    default = _images(client, prompt=LONG)[0]  # 20: the 5 words after the comma move to the next chunk
    assert _diff(_images(client, {"comma_padding_backtrack": 20}, prompt=LONG)[0], default) == 0
    off = _images(client, {"comma_padding_backtrack": 0}, prompt=LONG)[0]
    assert _diff(off, default) > 0.05
    # a limit below the 5 tokens after the comma does not move them: the same chunks as off
    assert _diff(_images(client, {"comma_padding_backtrack": 4}, prompt=LONG)[0], off) == 0
    assert _diff(_images(client, {"comma_padding_backtrack": 5}, prompt=LONG)[0], default) == 0


def test_comma_padding_backtrack_out_of_range_is_a_400(client: TestClient) -> None:
    r = client.post("/sdapi/v1/options", json={"comma_padding_backtrack": 75})
    assert r.status_code == 400 and "comma_padding_backtrack" in r.text


def test_sdxl_clip_l_skip_applies_clip_skip_to_sdxl_clip_l(client: TestClient) -> None:
    ckpt = {"sd_model_checkpoint": SDXL}
    plain = _images(client, ckpt)[0]
    # off (A1111's default): clip skip does not reach SDXL
    assert _diff(_images(client, {**ckpt, "CLIP_stop_at_last_layers": 2})[0], plain) == 0
    # on: CLIP-L's hidden_states[-clip skip]; at 1 its last layer, at 2 the penultimate SDXL uses anyway
    assert _diff(_images(client, {**ckpt, "sdxl_clip_l_skip": True})[0], plain) > 0.05
    assert _diff(_images(client, {**ckpt, "sdxl_clip_l_skip": True, "CLIP_stop_at_last_layers": 2})[0],
                 plain) == 0


def test_sdxl_clip_l_skip_does_nothing_on_sd1(client: TestClient) -> None:
    plain = _images(client, {"CLIP_stop_at_last_layers": 2})[0]
    assert _diff(_images(client, {"CLIP_stop_at_last_layers": 2, "sdxl_clip_l_skip": True})[0], plain) == 0


@pytest.mark.parametrize("sampler", ["DPM++ SDE", "DPM++ 2M SDE"])
def test_no_dpmpp_sde_batch_determinism(client: TestClient, sampler: str) -> None:
    job = {"sampler_name": sampler, "batch_size": 2, "seed": 50}
    batch = _images(client, **job)
    alone = _images(client, sampler_name=sampler, seed=51)[0]
    # default: each image's tree is seeded by its own seed (a batched UNet call rounds a hair differently)
    assert _diff(batch[1], alone) < 0.01
    shared = _images(client, {"no_dpmpp_sde_batch_determinism": True}, **job)
    assert _diff(shared[1], alone) > 0.05 and _diff(shared[0], batch[0]) > 0.05
    assert _diff(_images(client, {"no_dpmpp_sde_batch_determinism": True}, **job)[1], shared[1]) == 0
    # samplers without Brownian noise are untouched
    euler = _images(client)[0]
    assert _diff(_images(client, {"no_dpmpp_sde_batch_determinism": True})[0], euler) == 0


def test_old_emphasis_implementation_on_sd1(client: TestClient) -> None:
    plain = "a red fox in the snow"
    # a prompt without brackets under 75 tokens: the old implementation encodes the same chunk
    assert _diff(_images(client, {"use_old_emphasis_implementation": True}, prompt=plain)[0],
                 _images(client, prompt=plain)[0]) == 0
    for prompt in ("a (red:1.6) fox", "a red fox BREAK in the snow", LONG):  # weight syntax, BREAK, > 75 tokens
        new = _images(client, prompt=prompt)[0]
        old = _images(client, {"use_old_emphasis_implementation": True}, prompt=prompt)[0]
        assert _diff(old, new) > 0.05, prompt


def test_old_emphasis_implementation_weights_bracket_tokens(client: TestClient) -> None:
    # the old implementation reads "((red))" as the word red weighted 1.1 * 1.1, as the new one does ...
    old = _images(client, {"use_old_emphasis_implementation": True}, prompt="a ((red)) fox")[0]
    assert _diff(old, _images(client, prompt="a ((red)) fox")[0]) == 0
    # ... and "(red:1.21)" as the tokens "red : 1 . 2 1" weighted 1.1 (no weight syntax), unlike the new one
    new = _images(client, prompt="a (red:1.21) fox")[0]
    assert _diff(_images(client, {"use_old_emphasis_implementation": True}, prompt="a (red:1.21) fox")[0],
                 new) > 0.05


def test_old_emphasis_implementation_is_a_400_on_sdxl(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**JOB, "override_settings": {
        "sd_model_checkpoint": SDXL, "use_old_emphasis_implementation": True}})
    assert r.status_code == 400 and "use_old_emphasis_implementation" in r.text


class _Previews(JobState):
    """A job state that keeps every live preview image it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[np.ndarray] = []

    def set_step(self, step: int, steps: int | None = None, preview: Any = None) -> None:
        if preview is not None:
            self.images.append(np.asarray(preview().convert("RGB"), dtype=np.int16))
        super().set_step(step, steps, preview)


def _preview_run(env: Env, content: str | None, **fields: Any) -> tuple[list[np.ndarray], Any]:
    state = _Previews()
    options = {"show_progress_every_n_steps": 1, "show_progress_type": "Approx cheap"}
    if content is not None:
        options["live_preview_content"] = content
    result = Env(env.models, env.upscalers, state=state).run(options=options, **{**JOB, **fields})
    return state.images, result


def test_live_preview_content_picks_the_prediction_previews_show(env: Env) -> None:
    runs = {c: _preview_run(env, c) for c in (None, "Prompt", "Negative prompt", "Combined")}
    default, prompt, negative, combined = (runs[c][0] for c in (None, "Prompt", "Negative prompt", "Combined"))
    assert len(prompt) == JOB["steps"]
    assert all(_diff(a, b) == 0 for a, b in zip(default, prompt, strict=True))  # A1111's default: "Prompt"
    for a, b in ((prompt, negative), (prompt, combined), (negative, combined)):
        assert _diff(a[1], b[1]) > 0.5
    images = [runs[c][1].images[0] for c in runs]
    assert all(np.array_equal(np.asarray(images[0]), np.asarray(i)) for i in images)  # images unchanged


def test_live_preview_of_the_prompt_is_the_combined_one_at_cfg_1(env: Env) -> None:
    # cfg 1: the guided prediction is the prompt's own
    prompt, _ = _preview_run(env, "Prompt", cfg_scale=1.0)
    combined, _ = _preview_run(env, "Combined", cfg_scale=1.0)
    assert all(_diff(a, b) <= 1.0 for a, b in zip(prompt, combined, strict=True))


def _grid_previews(env: Env, options: dict[str, Any], **fields: Any) -> list[np.ndarray]:
    state = _Previews()
    opts = {"show_progress_every_n_steps": 1, "show_progress_type": "Approx cheap", **options}
    Env(env.models, env.upscalers, state=state).run(options=opts, **{**JOB, **fields})
    return state.images


def test_show_progress_grid_previews_every_image_of_a_batch(env: Env) -> None:
    # A1111 (shared_state.do_set_current_image): a grid of every image's preview while on (its default),
    # the first image's preview while off
    first = _grid_previews(env, {"show_progress_grid": False}, batch_size=2)
    grid = _grid_previews(env, {}, batch_size=2)
    assert len(first) == len(grid) == JOB["steps"]
    h, w = first[-1].shape[:2]
    # two images: round(sqrt(2)) = 1 row of 2, the first image's preview on the left
    assert all(g.shape[:2] == (h, 2 * w) for g in grid)
    assert all(_diff(g[:, :w], f) == 0 for g, f in zip(grid, first, strict=True))
    assert _diff(grid[-1][:, w:], grid[-1][:, :w]) > 1  # the second image's own preview on the right
    # the second one is the preview of the second image alone (its seed as the first of a batch)
    second = _grid_previews(env, {"show_progress_grid": False}, seed=JOB["seed"] + 1)
    assert _diff(grid[-1][:, w:], second[-1]) <= 1.0
    # the grid's layout options as A1111's image_grid (batch size 1): n_rows 0 is one row, 2 stacks them
    assert _grid_previews(env, {"n_rows": 0}, batch_size=2)[-1].shape[:2] == (h, 2 * w)
    assert _grid_previews(env, {"n_rows": 2}, batch_size=2)[-1].shape[:2] == (2 * h, w)
    # one image: the grid is that image's preview
    one = _grid_previews(env, {})
    assert _diff(one[-1], _grid_previews(env, {"show_progress_grid": False})[-1]) == 0


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM++ 2M"])
def test_enable_quantization_calls_the_unet_with_whole_timesteps(env: Env, sampler: str) -> None:
    def timesteps(options: dict[str, Any]) -> list[float]:
        with count_unet(env.model()) as counter:
            env.run(options=options, **{**JOB, "sampler_name": sampler})
        return [t for _, t in counter.calls]

    plain, whole = timesteps({}), timesteps({"enable_quantization": True})
    assert any(t != round(t) for t in plain)
    assert all(t == round(t) for t in whole) and len(whole) == len(plain)
    assert all(abs(a - b) <= 0.5 for a, b in zip(plain, whole, strict=True))  # the nearest one
