"""Saved files through HTTP (in-process app, real worker, built-in model), named and placed as A1111 v1.10's
`save_image` does for API saves: `samples_filename_pattern`, `save_images_add_number`,
`save_images_replace_action`, `directories_filename_pattern`, `directories_max_prompt_words`,
`grid_extended_filename`, `export_for_4chan` with `img_downscale_threshold` / `target_side_length`."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import ServerConfig

SMALL = {"prompt": "a red fox, in snow", "steps": 2, "width": 64, "height": 64, "seed": 5, "save_images": True}
ROOT: dict[str, Path] = {}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    ROOT["out"] = root / "outputs"
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None)
    with TestClient(create_app(cfg)) as c:
        yield c


def _files(pattern: str = "*") -> set[Path]:
    out = ROOT["out"]
    return {p for p in out.rglob(pattern) if p.is_file()} if out.exists() else set()


def _post(client: TestClient, overrides: dict, **body) -> tuple[dict, list[Path]]:
    before = _files()
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, **body, "override_settings": overrides})
    assert r.status_code == 200, r.text
    return json.loads(r.json()["info"]), sorted(_files() - before)


def test_the_batch_script_pattern_names_files_as_a1111(client: TestClient) -> None:
    """The issue's user: `[seed]-[prompt_words]` without date folders."""
    _, new = _post(client, {"samples_filename_pattern": "[seed]-[prompt_words]", "save_to_dirs": False,
                            "export_for_4chan": False})
    (png,) = new
    assert png.parent == ROOT["out"] / "txt2img-images"
    assert re.fullmatch(r"\d{5}-5-a red fox in snow\.png", png.name), png.name


def test_the_default_pattern_depends_on_save_to_dirs(client: TestClient) -> None:
    _, new = _post(client, {"save_to_dirs": False})
    (png,) = new
    assert re.fullmatch(r"\d{5}-5-a red fox, in snow\.png", png.name), png.name  # [seed]-[prompt_spaces]
    _, new = _post(client, {})  # A1111's defaults: a [date] folder, [seed]
    (png,) = new
    assert re.fullmatch(r"\d{5}-5\.png", png.name) and re.fullmatch(r"\d{4}-\d\d-\d\d", png.parent.name)


def test_without_numbers_replace_or_add_a_suffix(client: TestClient) -> None:
    plain = {"save_to_dirs": False, "save_images_add_number": False, "samples_filename_pattern": "fox-[seed]"}
    _, first = _post(client, plain)
    assert [p.name for p in first] == ["fox-5.png"]
    stamp = first[0].stat().st_mtime_ns
    _, again = _post(client, plain)  # "Replace" (A1111's default): the same file, written anew
    assert again == [] and first[0].stat().st_mtime_ns >= stamp and first[0].exists()
    _, suffixed = _post(client, {**plain, "save_images_replace_action": "Add number suffix"})
    _, suffixed2 = _post(client, {**plain, "save_images_replace_action": "Add number suffix"})
    assert [p.name for p in suffixed] == ["fox-5-1.png"] and [p.name for p in suffixed2] == ["fox-5-2.png"]
    # an empty name: numbered anyway
    _, empty = _post(client, {**plain, "samples_filename_pattern": "[none]"})
    assert re.fullmatch(r"\d{5}\.png", empty[0].name), empty


def test_the_directory_pattern_and_prompt_words(client: TestClient) -> None:
    _, new = _post(client, {"directories_filename_pattern": "[prompt_words]/[steps]",
                            "directories_max_prompt_words": 2})
    (png,) = new
    assert png.parent == ROOT["out"] / "txt2img-images" / "a red" / "2"
    # `..` cannot leave the output folder
    _, new = _post(client, {"directories_filename_pattern": "../../escaped-[seed]"})
    (png,) = new
    assert png.parent == ROOT["out"] / "txt2img-images" / "escaped-5"


def test_batch_tokens_name_each_image(client: TestClient) -> None:
    info, new = _post(client, {"samples_filename_pattern": "[seed]-b[batch_number]-g[generation_number]",
                               "save_to_dirs": False, "grid_save": False}, batch_size=2, n_iter=2)
    names = sorted(re.sub(r"^\d{5}-", "", p.name) for p in new)
    seeds = info["all_seeds"]
    assert names == sorted([f"{seeds[0]}-b1-g1.png", f"{seeds[1]}-b2-g2.png", f"{seeds[2]}-b1-g3.png",
                            f"{seeds[3]}-b2-g4.png"])


def test_grid_extended_filename(client: TestClient) -> None:
    _, new = _post(client, {"grid_save_to_dirs": False}, batch_size=2)
    (grid,) = [p for p in new if "grid" in p.parts[-2]]
    assert re.fullmatch(r"grid-\d{4}\.png", grid.name), grid.name
    _, new = _post(client, {"grid_save_to_dirs": False, "grid_extended_filename": True}, batch_size=2)
    (grid,) = [p for p in new if "grid" in p.parts[-2]]
    assert re.fullmatch(r"grid-\d{4}-5\.png", grid.name), grid.name  # the first seed, [seed]


def test_export_for_4chan_writes_a_downscaled_jpeg(client: TestClient) -> None:
    _, new = _post(client, {"save_to_dirs": False, "target_side_length": 32})
    png = next(p for p in new if p.suffix == ".png")
    jpg = png.with_suffix(".jpg")
    assert jpg in new and Image.open(jpg).size == (32, 32) and Image.open(png).size == (64, 64)
    assert "Seed: 5" in Image.open(jpg).getexif().get_ifd(0x8769).get(0x9286, b"").decode("utf-16-be",
                                                                                         "ignore")
    # over the size threshold (0 MB): a JPEG of the same size
    _, new = _post(client, {"save_to_dirs": False, "img_downscale_threshold": 0})
    (jpg,) = [p for p in new if p.suffix == ".jpg"]
    assert Image.open(jpg).size == (64, 64)
    # the option off, or a small file: none
    _, new = _post(client, {"save_to_dirs": False, "img_downscale_threshold": 0, "export_for_4chan": False})
    assert [p.suffix for p in new] == [".png"]
    _, new = _post(client, {"save_to_dirs": False})
    assert [p.suffix for p in new] == [".png"]


@pytest.mark.parametrize("name, value", [("save_images_replace_action", "Overwrite"),
                                         ("directories_max_prompt_words", 0), ("target_side_length", "big"),
                                         ("save_images_add_number", "yes")])
def test_bad_values_are_a_400_naming_the_option(client: TestClient, name: str, value) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {name: value}})
    assert r.status_code == 400 and name in r.text, r.text


def test_save_init_img_saves_each_init_image_by_its_md5(client: TestClient) -> None:
    """A1111's `save_init_img`: img2img saves its init image as `<md5 of its pixels>.png` in
    `outdir_init_images` (even without save_images) and writes `Init image hash` into the infotext."""
    import base64
    import hashlib
    import io

    init = Image.effect_noise((64, 64), 60).convert("RGB")
    buf = io.BytesIO()
    init.save(buf, format="PNG")
    body = {**SMALL, "save_images": False, "denoising_strength": 0.5,
            "init_images": [base64.b64encode(buf.getvalue()).decode()]}
    digest = hashlib.md5(init.tobytes()).hexdigest()
    before = _files()
    r = client.post("/sdapi/v1/img2img", json={**body, "override_settings": {"save_init_img": True}})
    assert r.status_code == 200, r.text
    assert sorted(_files() - before) == [ROOT["out"] / "init-images" / f"{digest}.png"]
    assert Image.open(ROOT["out"] / "init-images" / f"{digest}.png").tobytes() == init.tobytes()
    assert f"Init image hash: {digest}" in json.loads(r.json()["info"])["infotexts"][0]
    before = _files()
    r = client.post("/sdapi/v1/img2img", json=body)  # off (A1111's default): nothing saved, no key
    assert r.status_code == 200 and _files() == before
    assert "Init image hash" not in json.loads(r.json()["info"])["infotexts"][0]
