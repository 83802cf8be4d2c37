"""A1111 v1.10's options catalogue over HTTP: every option is in GET /options with A1111's default, an
options blob read from a fresh A1111 install posts back with 200 and changes nothing, and override_settings
keys that are no option are ignored and listed in the response `info`."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.a1111_options import a1111_defaults
from server.app import create_app
from server.config import ServerConfig

# every A1111 v1.10 option at A1111's default, as GET /sdapi/v1/options of a fresh A1111 install answers
# (modules/shared_options.py and the built-in extensions' options); written from A1111's list, fixed here
BLOB = Path(__file__).parents[1] / "fixtures" / "a1111_v1.10_options.json"
SMALL = {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "seed": 7}
# ours differ on purpose: the loaded checkpoint (title, hash); output folders relative to --outputs-dir
OWN_DEFAULTS = {"sd_model_checkpoint", "sd_checkpoint_hash", "outdir_txt2img_samples",
                "outdir_img2img_samples",
                "outdir_extras_samples", "outdir_txt2img_grids", "outdir_img2img_grids", "outdir_init_images"}


ROOT: dict[str, Path] = {}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("srv")
    ROOT["outputs"] = root / "outputs"
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        yield c


def test_the_fixture_is_the_catalogue() -> None:
    blob = json.loads(BLOB.read_text("utf-8"))
    assert len(blob) > 300
    assert blob == a1111_defaults()
    assert blob["show_progress_type"] == "Approx NN" and blob["enable_prompt_comments"] is True


def test_get_options_has_every_a1111_option_with_its_default(client: TestClient) -> None:
    got = client.get("/sdapi/v1/options").json()
    blob = json.loads(BLOB.read_text("utf-8"))
    missing = sorted(set(blob) - set(got))
    assert not missing
    differ = {k: (got[k], v) for k, v in blob.items() if got[k] != v and k not in OWN_DEFAULTS}
    assert not differ


def test_a1111_default_blob_posts_back_with_200_and_changes_nothing(client: TestClient) -> None:
    before = client.get("/sdapi/v1/options").json()
    blob = json.loads(BLOB.read_text("utf-8"))
    r = client.post("/sdapi/v1/options", json=blob)
    assert r.status_code == 200, r.text
    after = client.get("/sdapi/v1/options").json()
    assert after == before  # A1111's `outputs/txt2img-images` is our `txt2img-images`; null checkpoint kept
    r = client.post("/sdapi/v1/options", json=after)  # and the GET answer posts back too
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("method", ["Full", "Approx NN", "Approx cheap", "TAESD"])
def test_every_live_preview_method_is_accepted(client: TestClient, method: str) -> None:
    assert client.post("/sdapi/v1/options", json={"show_progress_type": method}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["show_progress_type"] == method
    client.post("/sdapi/v1/options", json={"show_progress_type": "Approx NN"})


def test_a_wrong_type_for_an_unapplied_option_is_a_400_naming_it(client: TestClient) -> None:
    r = client.post("/sdapi/v1/options", json={"grid_save": "yes"})
    assert r.status_code == 400 and "grid_save" in r.text
    r = client.post("/sdapi/v1/options", json={"canvas_disabled_functions": "Overlap"})
    assert r.status_code == 400 and "canvas_disabled_functions" in r.text


def test_override_settings_that_are_no_options_are_ignored_and_listed(client: TestClient, caplog) -> None:
    plain = client.post("/sdapi/v1/txt2img", json=SMALL)
    assert plain.status_code == 200
    assert "ignored_settings" not in json.loads(plain.json()["info"])
    with caplog.at_level(logging.INFO):
        r = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {
            "forge_additional_modules": [], "sd_t2i_width": 512.0, "grid_save": False}})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["ignored_settings"] == ["forge_additional_modules", "sd_t2i_width"]
    assert r.json()["images"][0] == plain.json()["images"][0]
    assert any("forge_additional_modules" in rec.getMessage() and "ignored" in rec.getMessage()
               for rec in caplog.records)


def test_taesd_vae_methods_fall_back_to_the_full_vae_and_say_so(client: TestClient) -> None:
    plain = client.post("/sdapi/v1/txt2img", json=SMALL).json()
    r = client.post("/sdapi/v1/txt2img",
                    json={**SMALL, "override_settings": {"sd_vae_decode_method": "TAESD"}})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert "VAE Decoder: Full (TAESD fallback)" in info["infotexts"][0]
    assert "VAE Decoder" not in json.loads(plain["info"])["infotexts"][0]


def test_model_name_and_hash_options_drop_them_from_the_infotext(client: TestClient) -> None:
    plain = json.loads(client.post("/sdapi/v1/txt2img", json=SMALL).json()["info"])["infotexts"][0]
    assert "Model hash: " in plain and "Model: " in plain
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {
        "add_model_hash_to_info": False, "add_model_name_to_info": False}})
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Model hash: " not in text and "Model: " not in text


def test_samples_save_off_saves_nothing_even_when_asked(client: TestClient) -> None:
    def saved() -> int:
        return len(list(ROOT["outputs"].rglob("*.png"))) if ROOT["outputs"].exists() else 0

    before = saved()
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "save_images": True,
                                                "override_settings": {"samples_save": False}})
    assert r.status_code == 200 and saved() == before
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "save_images": True})
    assert r.status_code == 200 and saved() == before + 1


def test_the_compatibility_page_lists_every_option_under_its_group() -> None:
    """docs/compatibility.md says, option by option, what is applied and what is accepted without effect."""
    from server.a1111_options import APPLIED, unapplied_groups

    page = (Path(__file__).parents[2] / "docs" / "compatibility.md").read_text("utf-8")
    section = page[page.index("## Options"):page.index("## A1111's built-in always-on scripts")]
    lines = [line for line in section.split("\n- ") if line.startswith("**")]
    applied = next(line for line in lines if line.startswith("**Applied**"))
    assert all(f"`{name}`" in applied for name in APPLIED)
    for reason, group in unapplied_groups():
        line = next(line for line in lines if reason in " ".join(line.split()))
        missing = [name for name in group if f"`{name}`" not in line]
        assert not missing, (reason, missing)


def test_taesd_vae_methods_use_a1111s_files_when_present(tmp_path: Path) -> None:
    import base64
    import io

    import torch
    from PIL import Image

    from pipeline.models.taesd import decoder, encoder

    folder = tmp_path / "models" / "VAE-taesd"
    folder.mkdir(parents=True)
    for name, net in (("taesd_decoder.pth", decoder()), ("taesd_encoder.pth", encoder())):
        g = torch.Generator().manual_seed(len(name))
        torch.save({k: torch.randn(v.shape, generator=g) * 0.05 for k, v in net.state_dict().items()},
                   folder / name)
    cfg = ServerConfig(models_dir=tmp_path / "models", data_dir=tmp_path / "data", outputs_dir=tmp_path / "o",
                       extensions_dir=None, max_pixels=512 * 512)
    with TestClient(create_app(cfg)) as c:
        plain = c.post("/sdapi/v1/txt2img", json=SMALL).json()
        tiny = c.post("/sdapi/v1/txt2img",
                      json={**SMALL, "override_settings": {"sd_vae_decode_method": "TAESD"}})
        assert tiny.status_code == 200, tiny.text
        assert "VAE Decoder: TAESD" in json.loads(tiny.json()["info"])["infotexts"][0]
        assert tiny.json()["images"][0] != plain["images"][0]
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 40, 90)).save(buf, "PNG")
        body = {**SMALL, "init_images": [base64.b64encode(buf.getvalue()).decode()],
                "denoising_strength": 0.3}
        full = c.post("/sdapi/v1/img2img", json=body).json()
        enc = c.post("/sdapi/v1/img2img",
                     json={**body, "override_settings": {"sd_vae_encode_method": "TAESD"}})
        assert enc.status_code == 200, enc.text
        assert "VAE Encoder: TAESD" in json.loads(enc.json()["info"])["infotexts"][0]
        assert enc.json()["images"][0] != full["images"][0]


def test_tiling_option_is_the_default_of_a_null_tiling(client: TestClient) -> None:
    plain = client.post("/sdapi/v1/txt2img", json=SMALL).json()
    by_field = client.post("/sdapi/v1/txt2img", json={**SMALL, "tiling": True}).json()
    by_option = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"tiling": True}}).json()
    field_wins = client.post("/sdapi/v1/txt2img", json={**SMALL, "tiling": False,
                                                         "override_settings": {"tiling": True}}).json()
    assert by_option["images"][0] == by_field["images"][0] != plain["images"][0]
    assert "Tiling: True" in json.loads(by_option["info"])["infotexts"][0]
    assert field_wins["images"][0] == plain["images"][0]


def test_img2img_extra_noise_adds_noise_to_img2img_and_the_hires_pass(client: TestClient) -> None:
    import base64
    import io

    from PIL import Image

    extra = {"override_settings": {"img2img_extra_noise": 0.3}}
    # txt2img without hires has no noised init: nothing changes, nothing is written
    plain = client.post("/sdapi/v1/txt2img", json=SMALL).json()
    same = client.post("/sdapi/v1/txt2img", json={**SMALL, **extra}).json()
    assert same["images"][0] == plain["images"][0]
    assert "Extra noise" not in json.loads(same["info"])["infotexts"][0]
    hires = {**SMALL, "enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5}
    a = client.post("/sdapi/v1/txt2img", json=hires).json()
    b = client.post("/sdapi/v1/txt2img", json={**hires, **extra}).json()
    assert a["images"][0] != b["images"][0] and "Extra noise: 0.3" in json.loads(b["info"])["infotexts"][0]
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 160, 90)).save(buf, "PNG")
    body = {**SMALL, "init_images": [base64.b64encode(buf.getvalue()).decode()], "denoising_strength": 0.4}
    c = client.post("/sdapi/v1/img2img", json=body).json()
    d = client.post("/sdapi/v1/img2img", json={**body, **extra}).json()
    assert c["images"][0] != d["images"][0] and "Extra noise: 0.3" in json.loads(d["info"])["infotexts"][0]
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"img2img_extra_noise": 2}})
    assert r.status_code == 400 and "img2img_extra_noise" in r.text


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_save_images_before_highres_fix_saves_the_first_pass_too(client: TestClient, upscaler: str) -> None:
    from PIL import Image

    hires = {**SMALL, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": upscaler, "save_images": True,
             "denoising_strength": 0.5}

    def files() -> set[Path]:
        return set(ROOT["outputs"].rglob("*.png")) if ROOT["outputs"].exists() else set()

    before = files()
    r = client.post("/sdapi/v1/txt2img", json={**hires, "override_settings": {
        "save_images_before_highres_fix": True}})
    assert r.status_code == 200, r.text
    new = sorted(files() - before)
    assert len(new) == 2
    first = [f for f in new if f.name.endswith("-7-before-highres-fix.png")]
    final = [f for f in new if f.name.endswith("-7.png")]
    assert len(first) == 1 and len(final) == 1
    assert Image.open(first[0]).size == (64, 64) and Image.open(final[0]).size == (96, 96)
    assert "Hires upscaler" in Image.open(first[0]).info["parameters"] or "Hires upscale" in \
        Image.open(first[0]).info["parameters"]
    plain = files()
    client.post("/sdapi/v1/txt2img", json=hires)  # off (A1111's default): only the final image
    assert len(files() - plain) == 1


def test_save_txt_and_save_to_dirs(client: TestClient) -> None:
    def files(pattern: str) -> set[Path]:
        return set(ROOT["outputs"].rglob(pattern)) if ROOT["outputs"].exists() else set()

    pngs, txts = files("*.png"), files("*.txt")
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "save_images": True, "override_settings": {
        "save_txt": True, "save_to_dirs": False}})
    assert r.status_code == 200, r.text
    (png,) = files("*.png") - pngs
    (txt,) = files("*.txt") - txts
    assert png.parent == ROOT["outputs"] / "txt2img-images"  # no date folder
    assert txt == png.with_suffix(".txt")
    assert txt.read_text("utf-8") == json.loads(r.json()["info"])["infotexts"][0] + "\n"
    pngs = files("*.png")
    client.post("/sdapi/v1/txt2img", json={**SMALL, "save_images": True})  # A1111's defaults
    (dated,) = files("*.png") - pngs
    assert dated.parent.parent == ROOT["outputs"] / "txt2img-images"
    assert not dated.with_suffix(".txt").exists()


def test_webp_lossless_returns_the_exact_pixels_and_lossy_webp_does_not(client: TestClient) -> None:
    """A1111's `webp_lossless`: with samples_format webp, the returned (and saved) WEBP keeps every pixel."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    def pixels(body: dict) -> np.ndarray:
        r = client.post("/sdapi/v1/txt2img", json={**SMALL, **body})
        assert r.status_code == 200, r.text
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"))

    png = pixels({})
    lossy = pixels({"override_settings": {"samples_format": "webp"}})
    lossless = pixels({"override_settings": {"samples_format": "webp", "webp_lossless": True}})
    assert np.array_equal(lossless, png)
    assert not np.array_equal(lossy, png)
