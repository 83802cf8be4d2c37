"""The API as real clients use it, against a real uvicorn server in a subprocess, through `webuiapi`
(and httpx where a client sends raw requests): listings, options, model and VAE switching, progress
across both hires passes, interrupt and skip mid-job, styles, image formats, saving, and the request
sequences Open WebUI and SillyTavern send."""
from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import safetensors.torch
import torch
import webuiapi
from PIL import Image

from pipeline.models.builtin import BUILTIN_NAME
from tests.fixtures.alwayson import BUILTIN_ALWAYSON
from tests.server.livesrv import LiveServer, wait_for

HR = {"enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Latent", "denoising_strength": 0.6}
SMALL = {"prompt": "a fox", "steps": 3, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler"}
STYLES_CSV = 'name,prompt,negative_prompt\nframed,"{prompt} in a frame",blurry\noil,oil painting,"ugly, bad"\n'


def _build_models(models: Path, work: Path) -> None:
    from spandrel.architectures.Compact import Compact

    from tests.fixtures.ldm_export import vae_to_ldm
    from tests.fixtures.tinymodels import build_tiny_sd1

    tiny = build_tiny_sd1(work, seed=3)
    tiny.write_diffusers(models / "Stable-diffusion" / "tiny-sd1")
    # a VAE with other weights than both checkpoints' own, in both key layouts
    vae_state = {k: v.contiguous() for k, v in tiny.vae.state_dict().items()}
    (models / "VAE").mkdir(parents=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in vae_to_ldm(vae_state, tiny.vae.config).items()},
                                str(models / "VAE" / "alt-ldm.safetensors"))
    torch.save({"state_dict": vae_state}, models / "VAE" / "alt-diffusers.pt")
    torch.manual_seed(5)
    compact = Compact(num_feat=8, num_conv=2, upscale=4)
    (models / "RealESRGAN").mkdir(parents=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in compact.state_dict().items()},
                                str(models / "RealESRGAN" / "Compact-x4.safetensors"))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("live-api")
    server = LiveServer(root)
    _build_models(server.models, tmp_path_factory.mktemp("live-api-build"))
    (server.data / "styles.csv").write_text(STYLES_CSV)
    server.start().wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(srv: LiveServer) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=srv.port, sampler="Euler", steps=3)


@pytest.fixture(scope="module")
def titles(api: webuiapi.WebUIApi) -> dict[str, str]:
    models = api.get_sd_models()
    by_name = {m["model_name"]: m["title"] for m in models}
    return {"builtin": by_name[BUILTIN_NAME], "tiny": by_name["tiny-sd1"]}


@pytest.fixture()
def http(srv: LiveServer):
    with srv.client() as c:
        yield c


def _b64_image(b64: str) -> Image.Image:
    assert not b64.startswith("data:")
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _infotext_params(text: str) -> dict[str, str]:
    return dict(re.findall(r"(?:^|, )([A-Za-z ][\w \-/]*): ((?:\"[^\"]*\")|[^,]*)", text.splitlines()[-1]))


class Poller:
    """Polls /progress in a thread until stopped; keeps every snapshot."""

    def __init__(self, srv: LiveServer, skip_image: bool = True) -> None:
        self.snaps: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._url = f"{srv.api}/progress" + ("?skip_current_image=true" if skip_image else "")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as c:
            while not self._stop.is_set():
                self.snaps.append(c.get(self._url).json())
                time.sleep(0.01)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _in_background(fn, *args, **kwargs) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            out["error"] = exc
        out["done_at"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _running(srv: LiveServer, job_no: int = 0, step: int = 1):
    def check() -> dict | None:
        s = httpx.get(f"{srv.api}/progress?skip_current_image=true").json()
        st = s["state"]
        return s if st["job_count"] and (st["job_no"], st["sampling_step"]) >= (job_no, step) else None
    return wait_for(check, timeout=60)


# -- idle state, listings -----------------------------------------------------------------------------

def test_idle_progress_is_what_a1111_reports(api: webuiapi.WebUIApi) -> None:
    p = api.get_progress()
    assert p["progress"] == 0 and p["eta_relative"] == 0 and p["current_image"] is None
    assert set(p["state"]) == {"skipped", "interrupted", "stopping_generation", "job", "job_count",
                               "job_timestamp", "job_no", "sampling_step", "sampling_steps"}
    assert p["state"]["job_count"] == 0
    api.util_wait_for_ready(check_interval=0.05)  # returns at once when idle


def test_listings_through_webuiapi(api: webuiapi.WebUIApi, http: httpx.Client, titles) -> None:
    names = [u["name"] for u in api.get_upscalers()]
    assert names[:3] == ["None", "Lanczos", "Nearest"] and "Compact-x4" in names
    assert [m["name"] for m in api.get_latent_upscale_modes()][0] == "Latent"
    assert len(api.get_latent_upscale_modes()) == 6
    assert "Euler" in [s["name"] for s in api.get_samplers()]
    assert "Karras" in [s["label"] for s in api.get_schedulers()]
    assert {m["title"] for m in api.get_sd_models()} == set(titles.values())
    vaes = api.get_sd_vae()
    assert [v["model_name"] for v in vaes] == ["alt-diffusers.pt", "alt-ldm.safetensors"]
    assert all(Path(v["filename"]).is_file() for v in vaes)
    assert api.refresh_checkpoints() is None  # A1111 answers null
    mem = api.get_memory()
    assert mem["ram"]["total"] > mem["ram"]["used"] > 0
    assert "error" in mem["cuda"] or mem["cuda"]["system"]["total"] > 0
    flags = api.get_cmd_flags()
    assert flags["port"] == int(http.base_url.port) and flags["nowebui"] is True and flags["api_auth"] is None
    assert flags["ckpt_dir"].endswith("Stable-diffusion") and flags["queue_size"] == 16
    assert api.get_scripts() == {"txt2img": ["slowmo", *BUILTIN_ALWAYSON],  # always-on: both tabs
                                 "img2img": ["slowmo", *BUILTIN_ALWAYSON, "sd upscale",
                                             "ultimate sd upscale"]}
    infos = http.get("/sdapi/v1/script-info").json()
    for tab in (False, True):
        assert {"name": "slowmo", "is_alwayson": True, "is_img2img": tab, "args": []} in infos
    tiled = {i["is_img2img"]: i["args"] for i in infos if i["name"] == "tiled diffusion"}
    assert [a["label"] for a in tiled[True][:2]] == ["Enable Tiled Diffusion", "Method"]
    assert (tiled[False][1]["value"], tiled[True][1]["value"]) == ("MultiDiffusion", "Mixture of Diffusers")
    assert tiled[True][8]["value"] == 8 and tiled[False][8]["value"] == 48  # latent overlap defaults per tab
    selectable = [(i["name"], len(i["args"])) for i in infos if i["is_img2img"] and not i["is_alwayson"]]
    assert selectable == [("sd upscale", 4), ("ultimate sd upscale", 18)]
    assert api.get_face_restorers() == []
    real = api.get_realesrgan_models()
    assert [(r["name"], r["scale"]) for r in real] == [("Compact-x4", 4)] and Path(real[0]["path"]).is_file()
    assert [s["name"] for s in api.get_prompt_styles()] == ["framed", "oil"]
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}} and api.get_hypernetworks() == []
    r = http.get("/sdapi/v1/progress")
    assert "x-process-time" in r.headers and "access-control-allow-origin" not in r.headers
    assert http.post("/sdapi/v1/server-stop").status_code == 404  # only with --api-server-stop
    assert http.post("/login", data={"username": "x", "password": "y"}).json() == {"success": True}


# -- options ------------------------------------------------------------------------------------------

def test_options_round_trip_and_clear_errors(api: webuiapi.WebUIApi, http: httpx.Client, titles) -> None:
    opts = api.get_options()
    for key in ("sd_model_checkpoint", "sd_checkpoint_hash", "sd_vae", "CLIP_stop_at_last_layers",
                "samples_format", "ESRGAN_tile", "ESRGAN_tile_overlap", "show_progress_every_n_steps",
                "live_previews_enable", "outdir_txt2img_samples"):
        assert key in opts
    assert opts["sd_model_checkpoint"] in titles.values()
    assert api.set_options(opts) is None  # the whole dict back, as Open WebUI does; A1111 answers null
    assert api.get_options() == opts
    r = http.post("/sdapi/v1/options", json={**opts, "no_such_option": 1})
    assert r.status_code == 400 and "no_such_option" in r.json()["detail"]
    r = http.post("/sdapi/v1/options", json={"samples_format": "gif"})
    assert r.status_code == 400 and "samples_format" in r.json()["detail"] and "'webp'" in r.json()["detail"]
    r = http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope.safetensors"})
    assert r.status_code == 400 and "nope.safetensors" in r.json()["detail"]
    assert titles["builtin"] in r.json()["detail"]
    r = http.post("/sdapi/v1/options", json={"sd_vae": "missing.pt"})
    assert r.status_code == 400 and "alt-ldm.safetensors" in r.json()["detail"]
    assert api.get_options() == opts  # nothing changed by the failed posts


def test_model_switch_waits_for_the_running_job(api: webuiapi.WebUIApi, srv: LiveServer, titles) -> None:
    api.util_set_model(titles["builtin"])
    assert api.util_get_current_model() == titles["builtin"]
    info = api.txt2img(**SMALL).info
    assert info["sd_model_name"] == BUILTIN_NAME
    job, out = _in_background(api.txt2img, **{**SMALL, "prompt": "slowmo fox", "steps": 30})
    _running(srv)
    switched = api.set_options({"sd_model_checkpoint": "tiny-sd1"})
    assert api.get_progress()["state"]["job_count"] == 0  # the model loaded only after the running job
    job.join()
    assert switched is None and "error" not in out
    assert out["result"].info["sd_model_name"] == BUILTIN_NAME
    assert api.util_get_current_model() == titles["tiny"]
    assert api.txt2img(**SMALL).info["sd_model_name"] == "tiny-sd1"
    api.util_set_model(titles["builtin"])


def test_options_persist_in_an_atomically_written_file(tmp_path: Path) -> None:
    from server.options import OptionsStore

    path = tmp_path / "options.json"
    OptionsStore(path).update({"samples_format": "webp", "ESRGAN_tile": 64})
    assert not [p for p in tmp_path.iterdir() if p.name != "options.json"]  # no temp file left
    again = OptionsStore(path)
    assert again.get("samples_format") == "webp" and again.get("ESRGAN_tile") == 64


# -- progress, interrupt, skip -------------------------------------------------------------------------

def test_progress_rises_through_batches_and_both_hires_passes(api: webuiapi.WebUIApi, srv: LiveServer,
                                                               http: httpx.Client) -> None:
    req = {**SMALL, **HR, "prompt": "slowmo fox", "steps": 6, "hr_second_pass_steps": 6, "n_iter": 2,
           "override_settings": {"show_progress_every_n_steps": 2}}
    with Poller(srv) as poller:
        job, out = _in_background(api.txt2img, **req)
        _running(srv, job_no=1, step=2)
        listed = http.get("/sdapi/v1/sd-models")  # a cheap GET while the job runs
        still_running = http.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()
        preview = http.get("/sdapi/v1/progress").json()["current_image"]
        job.join()
    assert listed.status_code == 200 and still_running["state"]["job_count"] == 4  # answered mid-job
    assert "error" not in out and len(out["result"].images) == 2
    assert _b64_image(preview).size in ((8, 8), (16, 16))  # latent approximation of a 64 or 128 px pass
    busy = [s for s in poller.snaps if s["state"]["job_count"]]
    assert {s["state"]["job_count"] for s in busy} == {4}
    assert {s["state"]["job_no"] for s in busy} == {0, 1, 2, 3}
    values = [s["progress"] for s in busy]
    assert values == sorted(values) and values[-1] > 0.75
    first = [s for s in busy if s["state"]["job_no"] == 0]
    second = [s for s in busy if s["state"]["job_no"] == 1]
    assert max(s["progress"] for s in first) <= 0.26 <= min(s["progress"] for s in second)
    assert max(s["state"]["sampling_step"] for s in busy) <= 6
    assert all(s["eta_relative"] >= 0 and s["current_image"] is None for s in busy)
    after = http.get("/sdapi/v1/progress").json()  # polled right after the response arrived
    assert after["state"]["job_count"] == 0 and after["progress"] == 0 and after["current_image"] is None


def test_interrupt_in_pass_two_returns_the_partial_hires_image(api, srv) -> None:
    baseline = api.txt2img(**SMALL).images[0]
    job, out = _in_background(api.txt2img, **{**SMALL, **HR, "prompt": "slowmo fox", "steps": 4,
                                                  "hr_second_pass_steps": 40})
    _running(srv, job_no=1, step=2)
    assert api.interrupt() == {}
    job.join(60)
    res = out["result"]
    assert len(res.images) == 1 and res.images[0].size == (128, 128)
    assert api.get_progress()["state"]["interrupted"] is False
    again = api.txt2img(**SMALL).images[0]  # the next job is not affected
    assert again.tobytes() == baseline.tobytes()


def test_interrupt_in_pass_one_returns_the_first_pass_and_skip_the_upscaled_one(api, srv) -> None:
    job, out = _in_background(api.txt2img, **{**SMALL, **HR, "prompt": "slowmo fox", "steps": 40, "n_iter": 2})
    _running(srv, job_no=0, step=2)
    api.interrupt()
    job.join(60)
    assert [i.size for i in out["result"].images] == [(64, 64)]  # first-pass size; batch 2 never started

    job, out = _in_background(api.txt2img, **{**SMALL, **HR, "prompt": "slowmo fox", "steps": 40, "n_iter": 2,
                                                  "hr_second_pass_steps": 2})
    _running(srv, job_no=0, step=2)
    assert api.skip() is None
    job.join(60)
    assert [i.size for i in out["result"].images] == [(128, 128), (128, 128)]  # skip ends one batch only


def test_interrupt_and_skip_while_idle_change_nothing(api) -> None:
    before = api.txt2img(**SMALL).images[0]
    api.interrupt()
    api.skip()
    assert api.get_progress()["state"]["interrupted"] is False
    assert api.txt2img(**SMALL).images[0].tobytes() == before.tobytes()


def test_extras_progress_per_image_and_tile(api, srv, http) -> None:
    img = Image.new("RGB", (96, 96), (120, 30, 200))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    payload = {"imageList": [{"data": data, "name": f"i{i}"} for i in range(12)], "upscaler_1": "Compact-x4",
               "upscaling_resize": 4}
    http.post("/sdapi/v1/options", json={"ESRGAN_tile": 16, "ESRGAN_tile_overlap": 4})
    try:
        with Poller(srv) as poller:
            r = http.post("/sdapi/v1/extra-batch-images", json=payload)
    finally:
        http.post("/sdapi/v1/options", json={"ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8})
    assert r.status_code == 200 and len(r.json()["images"]) == 12
    busy = [s["state"] for s in poller.snaps if s["state"]["job_count"]]
    assert busy and all(s["job"] == "extras" and s["job_count"] == 12 for s in busy)
    assert max(s["sampling_steps"] for s in busy) > 1  # tiles of one image


# -- generation details ------------------------------------------------------------------------------

def test_txt2img_infotext_reads_back_through_png_info(api) -> None:
    res = api.txt2img(**SMALL, negative_prompt="dull")
    info = api.png_info(res.images[0])
    assert info.info == res.info["infotexts"][0]
    params = info.parameters
    assert params["Prompt"] == "a fox" and params["Negative prompt"] == "dull"
    assert params["Steps"] == "3" and params["Seed"] == "7" and params["Sampler"] == "Euler"  # strings, as A1111


@pytest.mark.parametrize("fmt, magic", [("jpg", b"\xff\xd8"), ("webp", b"RIFF")])
def test_samples_format_carries_the_infotext(http: httpx.Client, fmt: str, magic: bytes) -> None:
    r = http.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"samples_format": fmt}})
    raw = base64.b64decode(r.json()["images"][0])
    assert raw.startswith(magic)
    info = http.post("/sdapi/v1/png-info", json={"image": r.json()["images"][0]}).json()
    assert info["info"] == json.loads(r.json()["info"])["infotexts"][0] and info["parameters"]["Seed"] == "7"
    assert http.get("/sdapi/v1/options").json()["samples_format"] == "png"  # restored afterwards


def test_override_settings_kept_when_not_restored(http: httpx.Client) -> None:
    r = http.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"CLIP_stop_at_last_layers": 2},
                                             "override_settings_restore_afterwards": False})
    assert "Clip skip: 2" in json.loads(r.json()["info"])["infotexts"][0]
    assert http.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    http.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})


def test_sd_vae_applies_a_vae_file_in_either_layout(api, http, srv) -> None:
    own = api.txt2img(**SMALL)
    assert "VAE" not in _infotext_params(own.info["infotexts"][0])
    api.set_options({"sd_vae": "alt-ldm.safetensors"})
    ldm = api.txt2img(**SMALL)
    params = _infotext_params(ldm.info["infotexts"][0])
    assert params["VAE"] == "alt-ldm.safetensors" and re.fullmatch(r"[0-9a-f]{10}", params["VAE hash"])
    assert ldm.info["sd_vae_name"] == "alt-ldm.safetensors"
    assert ldm.images[0].tobytes() != own.images[0].tobytes()
    pt = api.txt2img(**SMALL, override_settings={"sd_vae": "alt-diffusers.pt"})
    assert _infotext_params(pt.info["infotexts"][0])["VAE"] == "alt-diffusers.pt"
    assert pt.images[0].tobytes() == ldm.images[0].tobytes()  # same weights, other key layout
    api.set_options({"sd_vae": "Automatic"})
    assert api.txt2img(**SMALL).images[0].tobytes() == own.images[0].tobytes()  # own VAE restored
    r = http.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"sd_vae": "nope.pt"}})
    assert r.status_code == 400 and "sd_vae" in r.json()["detail"]
    (srv.models / "VAE" / "later.safetensors").write_bytes((srv.models / "VAE" / "alt-ldm.safetensors").read_bytes())
    assert "later.safetensors" not in [v["model_name"] for v in api.get_sd_vae()]
    assert http.post("/sdapi/v1/refresh-vae").status_code == 200
    assert "later.safetensors" in [v["model_name"] for v in api.get_sd_vae()]


def test_styles_apply_as_a1111_does(api, http) -> None:
    res = api.txt2img(**{**SMALL, "negative_prompt": "dark"}, styles=["framed", "oil"])
    text = res.info["infotexts"][0]
    assert text.splitlines()[0] == "a fox in a frame, oil painting"
    assert text.splitlines()[1] == "Negative prompt: dark, blurry, ugly, bad"
    assert res.info["prompt"] == SMALL["prompt"]  # as sent; the styled text is in all_prompts
    assert res.info["all_prompts"] == ["a fox in a frame, oil painting"]
    hr = api.txt2img(**{**SMALL, "negative_prompt": "dark"}, styles=["oil"], enable_hr=True, hr_scale=1.5,
                     hr_prompt="a wolf", denoising_strength=0.5)
    hr_params = hr.info["infotexts"][0]
    assert "Hires prompt: \"a wolf, oil painting\"" in hr_params
    assert "Hires negative prompt" not in hr_params  # styled once, so equal to the main negative
    r = http.post("/sdapi/v1/txt2img", json={**SMALL, "styles": ["nope"]})
    assert r.status_code == 400 and "'framed'" in r.json()["detail"]


def test_save_images_writes_numbered_files_with_infotext(http: httpx.Client, srv: LiveServer) -> None:
    folder = srv.outputs / "txt2img-images" / date.today().isoformat()
    before = set(folder.glob("*.png")) if folder.exists() else set()
    for seed in (11, 12):
        r = http.post("/sdapi/v1/txt2img", json={**SMALL, "seed": seed, "save_images": True})
        assert r.status_code == 200
    new = sorted(set(folder.glob("*.png")) - before)
    assert [re.sub(r"^\d{5}", "N", p.name) for p in new] == ["N-11.png", "N-12.png"]
    n0, n1 = (int(p.name[:5]) for p in new)
    assert n1 == n0 + 1
    assert "Seed: 12," in Image.open(new[1]).info["parameters"]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_concurrent_saves_never_overwrite(tmp_path: Path) -> None:
    from server.saving import write_numbered

    results: list[Path] = []
    lock = threading.Lock()

    def save(k: int) -> None:
        for j in range(10):
            p = write_numbered(tmp_path, "-5.png", f"{k}-{j}".encode())
            with lock:
                results.append(p)

    threads = [threading.Thread(target=save, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{n:05d}-5.png" for n in range(40)]
    assert {p.read_bytes() for p in results} == {f"{k}-{j}".encode() for k in range(4) for j in range(10)}


# -- what real clients send --------------------------------------------------------------------------

def test_open_webui_sequence(http: httpx.Client, titles) -> None:
    opts = http.get("/sdapi/v1/options").json()
    models = http.get("/sdapi/v1/sd-models").json()
    wanted = next(m["title"] for m in models if m["model_name"] == "tiny-sd1")
    assert http.post("/sdapi/v1/options", json={**opts, "sd_model_checkpoint": wanted}).status_code == 200
    assert http.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == wanted
    admin_params = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.5,
                    "sampler_name": "Euler a"}
    r = http.post("/sdapi/v1/txt2img", json={"prompt": "a house", "batch_size": 1, "width": 64, "height": 64,
                                             "steps": 2, "negative_prompt": "", **admin_params})
    body = r.json()
    assert r.status_code == 200 and isinstance(body["info"], str)
    assert _b64_image(body["images"][0]).size == (96, 96)
    assert json.loads(body["info"])["sd_model_name"] == "tiny-sd1"
    assert http.post("/sdapi/v1/options", json={**opts, "sd_model_checkpoint": titles["builtin"]}).status_code == 200


def test_sillytavern_sequence_with_interrupt_on_disconnect(http: httpx.Client, srv: LiveServer, titles) -> None:
    opts = http.get("/sdapi/v1/options").json()
    assert "forge_preset" not in opts
    upscalers = [u["name"] for u in http.get("/sdapi/v1/upscalers").json()]
    upscalers += [m["name"] for m in http.get("/sdapi/v1/latent-upscale-modes").json()]
    assert "Latent (bicubic antialiased)" in upscalers and "Lanczos" in upscalers
    assert http.get("/sdapi/v1/sd-vae").status_code == 200
    assert http.get("/sdapi/v1/samplers").status_code == 200 and http.get("/sdapi/v1/schedulers").status_code == 200
    title = http.get("/sdapi/v1/sd-models").json()[0]["title"]
    assert http.post("/sdapi/v1/options", json={"sd_model_checkpoint": title}).status_code == 200
    for _ in range(10):
        p = http.get("/sdapi/v1/progress").json()
        if p["progress"] == 0 and p["state"]["job_count"] == 0:
            break
        time.sleep(2)
    payload = {"prompt": "a cat", "negative_prompt": "", "sampler_name": "Euler a", "scheduler": "Karras",
               "steps": 3, "cfg_scale": 7, "width": 64, "height": 64, "restore_faces": False, "enable_hr": True,
               "hr_upscaler": "Latent", "hr_scale": 1.5, "hr_additional_modules": [], "denoising_strength": 0.6,
               "hr_second_pass_steps": 2, "seed": 3, "clip_skip": 2,
               "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "None",
                                     "forge_additional_modules": []},
               "override_settings_restore_afterwards": True, "save_images": True, "send_images": True,
               "do_not_save_grid": False, "do_not_save_samples": False}
    r = http.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 200 and _b64_image(r.json()["images"][0]).size == (96, 96)
    assert "Clip skip: 2" in json.loads(r.json()["info"])["infotexts"][0]
    assert http.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1  # restored
    # the user closes the chat: SillyTavern drops its request and POSTs /interrupt
    folder = srv.outputs / "txt2img-images" / date.today().isoformat()
    before = set(folder.glob("*")) if folder.exists() else set()
    slow = {**payload, "prompt": "slowmo cat", "steps": 60, "seed": 4242}
    with pytest.raises(httpx.ReadTimeout):
        with httpx.Client(base_url=srv.base, timeout=httpx.Timeout(30, read=0.5)) as gone:
            gone.post("/sdapi/v1/txt2img", json=slow)
    _running(srv)
    assert http.post("/sdapi/v1/interrupt").json() == {}
    wait_for(lambda: http.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0, timeout=30)
    time.sleep(0.3)
    assert not [p for p in set(folder.glob("*")) - before if "-4242." in p.name]  # interrupted: not saved
    assert http.post("/sdapi/v1/txt2img", json={**payload, "save_images": False}).status_code == 200
