"""ControlNet units over HTTP (in-process app, real worker) against tiny real-architecture ControlNets that
the test writes the way users keep them: the original layout (`control_model.*`, .safetensors and .pth)
and the diffusers layout, for a tiny SD 1.x and a tiny SDXL checkpoint."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import ServerConfig
from tests.fixtures.controlnets import build_tiny_controlnet, write_diffusers, write_ldm
from tests.fixtures.tinymodels import build_tiny_sd1, build_tiny_sdxl

SD1 = {"sd_model_checkpoint": "tiny-sd1.safetensors"}
BASE = {
    "prompt": "a red fox",
    "steps": 3,
    "width": 64,
    "height": 64,
    "seed": 11,
    "sampler_name": "Euler",
    "cfg_scale": 5,
    "override_settings": SD1,
}


def _b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _edges(size: int = 64) -> Image.Image:
    """A black picture with a white square outline: a ready-made edge map."""
    a = np.zeros((size, size, 3), np.uint8)
    a[16:48, 16] = a[16:48, 47] = a[16, 16:48] = a[47, 16:48] = 255
    return Image.fromarray(a)


def _photo(size: int = 64) -> Image.Image:
    rng = np.random.default_rng(3)
    a = np.zeros((size, size, 3), np.uint8)
    a[:, size // 2 :] = 200
    a[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (30, 160, 90)
    return Image.fromarray(np.clip(a + rng.integers(0, 20, a.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("cn-srv")
    work = tmp_path_factory.mktemp("cn-build")
    models = root / "models"
    sd1 = build_tiny_sd1(work, seed=7)
    sd1.write_safetensors(models / "Stable-diffusion" / "tiny-sd1.safetensors")
    xl = build_tiny_sdxl(work)
    xl.write_safetensors(models / "Stable-diffusion" / "tiny-sdxl.safetensors")
    net = build_tiny_controlnet(sd1.unet, seed=50)
    write_diffusers(net, models / "ControlNet" / "cn_sd15_canny_diffusers.safetensors")
    write_ldm(net, models / "ControlNet" / "control_sd15_canny.safetensors")
    write_ldm(net, models / "ControlNet" / "control_sd15_canny_old.pth")
    write_ldm(build_tiny_controlnet(xl.unet, seed=51), root / "extra" / "cn_xl.safetensors")
    cfg = ServerConfig(
        models_dir=models,
        data_dir=root / "data",
        outputs_dir=root / "outputs",
        extensions_dir=None,
        max_pixels=512 * 512,
        builtin_model=False,
        controlnet_dir=root / "extra",
    )
    with TestClient(create_app(cfg)) as c:
        yield c


def _unit(**kw) -> dict:
    return {"enabled": True, "module": "none", "model": "control_sd15_canny", "image": _b64(_edges()), **kw}


def _txt2img(client: TestClient, units: list[dict] | None, key: str = "ControlNet", **kw) -> dict:
    body = {**BASE, **kw}
    if units is not None:
        body["alwayson_scripts"] = {key: {"args": units}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _px(b64: str) -> bytes:
    """An image's pixels (the PNG bytes also carry the infotext, which names the units)."""
    return _pixels(b64).astype(np.uint8).tobytes()


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def test_model_list_has_both_layouts_and_the_extra_folder(client: TestClient) -> None:
    models = client.get("/controlnet/model_list").json()["model_list"]
    names = sorted(m.rsplit(" [", 1)[0] for m in models)
    assert names == ["cn_sd15_canny_diffusers", "cn_xl", "control_sd15_canny", "control_sd15_canny_old"]
    assert all(m.endswith("]") and len(m.rsplit(" [", 1)[1]) == 9 for m in models)


def test_a_unit_changes_the_image_and_both_layouts_give_the_same_bytes(client: TestClient) -> None:
    plain = _txt2img(client, None)["images"][0]
    ldm = _txt2img(client, [_unit(save_detected_map=False)])["images"]
    diffusers = _txt2img(client, [_unit(model="cn_sd15_canny_diffusers", save_detected_map=False)])["images"]
    pth = _txt2img(client, [_unit(model="control_sd15_canny_old", save_detected_map=False)])["images"]
    assert len(ldm) == 1
    assert ldm[0] != plain
    assert np.abs(_pixels(ldm[0]) - _pixels(plain)).mean() > 1.0
    assert (_pixels(ldm[0]) == _pixels(diffusers[0])).all() and (_pixels(ldm[0]) == _pixels(pth[0])).all()


def test_weight_zero_guidance_end_zero_and_disabled_units_change_nothing(client: TestClient) -> None:
    plain = _txt2img(client, None)["images"]
    assert [_px(i) for i in _txt2img(client, [_unit(weight=0, save_detected_map=False)])["images"]] == [
        _px(plain[0])
    ]
    assert [_px(i) for i in _txt2img(client, [_unit(guidance_end=0, save_detected_map=False)])["images"]] == [
        _px(plain[0])
    ]
    assert _txt2img(client, [_unit(enabled=False)])["images"] == plain  # no unit: not even an infotext line
    no_enabled = _unit()
    del no_enabled["enabled"]
    assert _txt2img(client, [no_enabled], key="controlnet")["images"] == plain
    assert _txt2img(client, [])["images"] == plain  # webuiapi sends an empty list without units


def test_detected_map_is_appended_and_infotext_names_the_unit(client: TestClient) -> None:
    body = _txt2img(client, [_unit(module="invert", image=_b64(_photo(96)), resize_mode=0)])
    assert len(body["images"]) == 2
    mapped = _pixels(body["images"][1])
    assert mapped.shape == (64, 64, 3)
    expected = 255 - np.asarray(_photo(96).resize((64, 64), Image.Resampling.BICUBIC), dtype=np.int16)
    assert np.abs(mapped - expected).max() <= 40  # invert, then the extension's resize to the pass size
    info = json.loads(body["info"])
    line = info["infotexts"][0]
    assert 'ControlNet 0: "Module: invert, Model: control_sd15_canny [' in line
    assert "Resize Mode: Just Resize, Processor Res: 512, Threshold A: -1.0" in line
    assert "Control Mode: Balanced" in line


def test_control_modes_and_legacy_forms(client: TestClient) -> None:
    out = {}
    for mode in (0, 1, 2, "Balanced", "My prompt is more important", "ControlNet is more important"):
        out[mode] = _px(_txt2img(client, [_unit(control_mode=mode, save_detected_map=False)])["images"][0])
    assert out[0] == out["Balanced"] and out[1] == out["My prompt is more important"]
    assert out[2] == out["ControlNet is more important"]
    assert len({out[0], out[1], out[2]}) == 3
    legacy = _unit(save_detected_map=False)
    legacy["input_image"] = legacy.pop("image")
    legacy["guidance"] = 1.0
    legacy["lowvram"] = True
    legacy["resize_mode"] = "Inner Fit (Scale to Fit)"
    assert _px(_txt2img(client, [legacy])["images"][0]) == out[0]


def test_two_units_add_their_residuals(client: TestClient) -> None:
    one = _px(_txt2img(client, [_unit(save_detected_map=False)])["images"][0])
    two = _txt2img(
        client,
        [_unit(save_detected_map=False), _unit(weight=0.5, save_detected_map=False, image=_b64(_photo()))],
    )["images"][0]
    assert one != _px(two)


@pytest.mark.parametrize(
    "unit, field",
    [
        ({"model": "nope"}, "args[0].model"),
        ({"module": "no_such_module"}, "args[0].module"),
        ({"module": "openpose"}, "args[0].module"),
        ({"model": "cn_xl"}, "args[0].model"),
        ({"image": "not base64 !!"}, "args[0].image"),
        ({"weight": 3}, "args[0].weight"),
        ({"guidance_start": 0.8, "guidance_end": 0.2}, "args[0]"),
        ({"control_mode": "Loud"}, "args[0].control_mode"),
        ({"image": None}, "args[0].image"),
    ],
)
def test_bad_units_are_400_naming_the_field(client: TestClient, unit: dict, field: str) -> None:
    r = client.post(
        "/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {"ControlNet": {"args": [_unit(**unit)]}}}
    )
    assert r.status_code == 400, r.text
    assert f"alwayson_scripts.ControlNet.{field}" in r.text


def test_hires_passes_and_hr_option(client: TestClient) -> None:
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6}
    plain = _px(_txt2img(client, None, **hires)["images"][0])
    both = _txt2img(client, [_unit(save_detected_map=True)], **hires)["images"]
    assert len(both) == 3  # the result, then the unit's map at the hires size and at the first-pass size
    assert _pixels(both[1]).shape == (96, 96, 3) and _pixels(both[2]).shape == (64, 64, 3)
    low = _txt2img(client, [_unit(hr_option="Low res only", save_detected_map=False)], **hires)["images"][0]
    high = _txt2img(client, [_unit(hr_option="High res only", save_detected_map=False)], **hires)["images"][0]
    assert len({plain, _px(both[0]), _px(low), _px(high)}) == 4


def test_img2img_unit_without_image_uses_the_init_image(client: TestClient) -> None:
    body = {**BASE, "init_images": [_b64(_photo())], "denoising_strength": 0.7}
    plain = client.post("/sdapi/v1/img2img", json=body).json()["images"]
    unit = _unit(image=None, module="canny", save_detected_map=True)
    r = client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": {"ControlNet": {"args": [unit]}}})
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert len(images) == 2 and images[0] != plain[0]
    edges = _pixels(images[1])
    assert set(np.unique(edges)) <= {0, 255} and edges.max() == 255


def test_sdxl_checkpoint_with_an_sdxl_controlnet(client: TestClient) -> None:
    xl = {**BASE, "override_settings": {"sd_model_checkpoint": "tiny-sdxl.safetensors"}}
    plain = client.post("/sdapi/v1/txt2img", json=xl).json()["images"][0]
    r = client.post(
        "/sdapi/v1/txt2img",
        json={
            **xl,
            "alwayson_scripts": {"ControlNet": {"args": [_unit(model="cn_xl", save_detected_map=False)]}},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["images"][0] != plain
    bad = client.post(
        "/sdapi/v1/txt2img", json={**xl, "alwayson_scripts": {"ControlNet": {"args": [_unit()]}}}
    )
    assert bad.status_code == 400 and "SD 1.x ControlNet" in bad.text


def test_scripts_list_controlnet_for_clients_that_detect_it(client: TestClient) -> None:
    scripts = client.get("/sdapi/v1/scripts").json()
    assert "controlnet" in scripts["txt2img"] and "controlnet m2m" in scripts["txt2img"]
    assert "controlnet" in scripts["img2img"]


def _img2img(client: TestClient, units: list[dict] | None, **kw) -> dict:
    body = {**BASE, "init_images": [_b64(_photo())], "denoising_strength": 0.5, **kw}
    if units is not None:
        body["alwayson_scripts"] = {"ControlNet": {"args": units}}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_sd_upscale_and_ultimate_sd_upscale_run_units_on_every_tile(client: TestClient) -> None:
    sd_upscale = {"script_name": "sd upscale", "script_args": [None, 16, "Lanczos", 2.0]}
    plain = _img2img(client, None, **sd_upscale)["images"]
    tiled = _img2img(client, [_unit(image=_b64(_edges(128)), module="none")], **sd_upscale)["images"]
    own = _img2img(
        client, [_unit(image=None, module="invert", model="cn_sd15_canny_diffusers")], **sd_upscale
    )
    assert len(plain) == len(tiled) == len(own["images"]) == 1  # no detected maps for upscale scripts
    assert _pixels(tiled[0]).shape == (128, 128, 3)
    assert len({_px(plain[0]), _px(tiled[0]), _px(own["images"][0])}) == 3
    usdu = {
        "script_name": "ultimate sd upscale",
        "width": 64,
        "height": 64,
        "script_args": [None, 64, 0, 8, 16, 64, 0.35, 32, "Lanczos", False, 0, False, 8, 0, 2, 2048, 2048, 2],
    }
    plain = _img2img(client, None, **usdu)["images"][0]
    ctl = _img2img(client, [_unit(image=_b64(_edges(128)))], **usdu)["images"]
    assert len(ctl) == 1 and _pixels(ctl[0]).shape == (128, 128, 3) and _px(ctl[0]) != _px(plain)


def test_inpainting_only_masked_cuts_the_unit_image_like_the_init_image(client: TestClient) -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 255
    body = {"mask": _b64(Image.fromarray(mask)), "inpaint_full_res": True, "inpaint_full_res_padding": 4}
    plain = _img2img(client, None, **body)["images"]
    ctl = _img2img(client, [_unit(save_detected_map=True)], **body)["images"]
    assert len(plain) == 1 and len(ctl) == 2
    assert _px(plain[0]) != _px(ctl[0])
    edges = _pixels(ctl[1])
    assert edges.shape == (64, 64, 3)
    # the 36x36 box around the mask, cut from the unit's edge map and stretched to 64x64: the square's
    # corner (16, 16) lands at ((16 - 4) * 64 / 36) ~ 21
    rows = edges[:, 32, 0]  # down the middle: dark, then the square's top edge near row 21, then dark
    assert rows[:16].max() < 40 and rows[19:25].max() > 200 and rows[26:40].max() < 40


def test_endpoints_shapes(client: TestClient) -> None:
    assert client.get("/controlnet/version").json() == {"version": 3}
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}
    mods = client.get("/controlnet/module_list").json()
    assert mods["module_list"][:3] == ["none", "invert", "canny"]
    assert mods["module_detail"]["canny"]["sliders"][1] == {
        "name": "Low Threshold",
        "value": 100,
        "min": 1,
        "max": 255,
        "step": 1.0,
    }
    types = client.get("/controlnet/control_types").json()["control_types"]
    canny = types["Canny"]
    assert canny["module_list"][:2] == ["none", "invert"] and "canny" in canny["module_list"]
    assert canny["default_option"] == "invert" or canny["default_option"] == "canny"
    assert all("canny" in m.lower() for m in canny["model_list"][1:]) and len(canny["model_list"]) == 4
    assert types["All"]["default_model"] == "None"


def test_detect_canny_is_opencv_canny_on_the_resized_input(client: TestClient) -> None:
    import cv2

    photo = _photo(96)
    r = client.post(
        "/controlnet/detect",
        json={
            "controlnet_module": "canny",
            "controlnet_input_images": [_b64(photo)],
            "controlnet_processor_res": 64,
            "controlnet_threshold_a": 50,
            "controlnet_threshold_b": 150,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["info"] == "Success" and len(body["images"]) == 1
    small = cv2.resize(np.asarray(photo), (64, 64), interpolation=cv2.INTER_AREA)
    assert (_pixels(body["images"][0])[:, :, 0] == cv2.Canny(small, 50, 150)).all()
    bad = client.post(
        "/controlnet/detect", json={"controlnet_module": "openpose", "controlnet_input_images": [_b64(photo)]}
    )
    assert bad.status_code == 422 and "body_pose_model.pth" in bad.text


def test_inpaint_unit_takes_the_init_image_and_the_request_mask(client: TestClient) -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    body = {"mask": _b64(Image.fromarray(mask)), "mask_blur": 0}
    plain = _img2img(client, None, **body)["images"]
    unit = _unit(image=None, module="inpaint_global_harmonious")
    out = _img2img(client, [unit], **body)["images"]
    assert len(out) == 2 and _px(out[0]) != _px(plain[0])
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(out[1]))))
    assert shown.shape == (64, 64, 4)  # the extension shows the mask as half transparency
    assert (shown[:, :30, 3] == 255).all() and (shown[:, 34:, 3] == 128).all()
    assert np.abs(shown[:, :, :3].astype(int) - np.asarray(_photo(), int)).max() <= 1
    # its own picture and mask, on txt2img
    own = _unit(module="inpaint", image={"image": _b64(_photo()), "mask": _b64(Image.fromarray(mask))})
    r = _txt2img(client, [own])["images"]
    assert len(r) == 2 and np.asarray(Image.open(io.BytesIO(base64.b64decode(r[1]))))[0, 40, 3] == 128


# The extension's own web-API test payloads (its tests/web_api, CQ sizes: 64x64, 3 steps), with its default
# unit: canny, pixel perfect, a partial model name, and the image counts it expects.
EXT_UNIT = {
    "control_mode": "Balanced",
    "enabled": True,
    "guidance_end": 1,
    "guidance_start": 0,
    "pixel_perfect": True,
    "processor_res": 512,
    "resize_mode": "Crop and Resize",
    "threshold_a": -1,
    "threshold_b": -1,
    "weight": 1,
    "module": "canny",
    "model": "sd15_canny",
}
EXT_PAYLOAD = {
    "batch_size": 1,
    "cfg_scale": 7,
    "height": 64,
    "width": 64,
    "n_iter": 1,
    "steps": 3,
    "sampler_name": "Euler a",
    "prompt": "(masterpiece: 1.3), (highres: 1.3), best quality,",
    "negative_prompt": "",
    "seed": 42,
    "seed_enable_extras": False,
    "subseed": -1,
    "subseed_strength": 0,
    "override_settings": SD1,
    "override_settings_restore_afterwards": False,
}


@pytest.mark.parametrize("gen_type", ["txt2img", "img2img"])
@pytest.mark.parametrize(
    "name, payload, units, expected",
    [
        ("no_unit", {}, [], 1),
        ("unrecognized_param", {}, [{"foo": True, "is_ui": False}], 2),
        ("multiple_iter", {"n_iter": 2}, [{}], 3),
        ("batch_size", {"batch_size": 2}, [{}], 3),
        ("2_units", {}, [{}, {}], 3),
        ("preprocessor", {}, [{"module": "canny"}], 2),
        ("invalid_processor_res", {}, [{"processor_res": -100}], 2),
        ("invalid_threshold_a", {}, [{"threshold_a": -100}], 2),
        ("save_map_false", {}, [{"save_detected_map": False}], 1),
        ("advanced_weighting", {}, [{"advanced_weighting": [0.75] * 13}], 2),
        ("prompt_mode", {}, [{"control_mode": "My prompt is more important"}], 2),
        ("control_mode", {}, [{"control_mode": "ControlNet is more important"}], 2),
        ("hr_option_default", {"enable_hr": False}, [{"hr_option": "Both"}], 2),
        ("masked", {}, [{"mask_image": "MASK"}], 2),
    ],
)
def test_the_extensions_web_api_payloads(
    client: TestClient, gen_type: str, name: str, payload: dict, units: list, expected: int
) -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 20:44] = 255
    args = []
    for override in units:
        unit = {**EXT_UNIT, **override}
        if unit.get("mask_image") == "MASK":
            unit.update(image=_b64(_photo()), mask_image=_b64(Image.fromarray(mask)))
        elif gen_type == "txt2img":
            unit["image"] = _b64(_photo())
        args.append(unit)
    body = {**EXT_PAYLOAD, **payload, "alwayson_scripts": {"ControlNet": {"args": args}}}
    if gen_type == "img2img":
        body["init_images"] = [_b64(_photo())]
    r = client.post(f"/sdapi/v1/{gen_type}", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == expected


def test_the_extensions_hr_option_payload(client: TestClient) -> None:
    body = {
        **EXT_PAYLOAD,
        "enable_hr": True,
        "denoising_strength": 0.75,
        "hr_scale": 1.5,
        "alwayson_scripts": {
            "ControlNet": {"args": [{**EXT_UNIT, "hr_option": "Both", "image": _b64(_photo())}]}
        },
    }
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 3


def test_recolor_unit_sets_the_lightness_of_the_result(client: TestClient) -> None:
    import cv2

    body = _txt2img(client, [_unit(module="recolor_luminance", image=_b64(_photo()))])
    out, shown = _pixels(body["images"][0]).astype(np.uint8), _pixels(body["images"][1]).astype(np.uint8)
    plain = _pixels(_txt2img(client, None)["images"][0]).astype(np.uint8)

    def off(img: np.ndarray) -> np.ndarray:
        return np.abs(cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[:, :, 0].astype(int) - shown[:, :, 0].astype(int))

    # the map's lightness, to rounding and gamut clipping; the image without the unit is far from it
    assert np.median(off(out)) <= 1 and off(out).mean() < 4 and off(plain).mean() > 20


def test_module_list_alias_names(client: TestClient) -> None:
    labels = client.get("/controlnet/module_list", params={"alias_names": True}).json()
    assert "invert (from white bg & black line)" in labels["module_list"]
    assert "lineart_standard (from white bg & black line)" in labels["module_detail"]
    r = client.post(
        "/sdapi/v1/txt2img",
        json={
            **BASE,
            "alwayson_scripts": {
                "ControlNet": {
                    "args": [_unit(module="invert (from white bg & black line)", save_detected_map=False)]
                }
            },
        },
    )
    assert r.status_code == 200, r.text  # a label is accepted as the module's name


def test_controlnet_with_tiled_sampling_is_a_400(client: TestClient) -> None:
    r = client.post(
        "/sdapi/v1/txt2img",
        json={
            **BASE,
            "tiled_diffusion": {"tile_width": 64, "tile_height": 64, "overlap": 16},
            "alwayson_scripts": {"ControlNet": {"args": [_unit()]}},
        },
    )
    assert r.status_code == 400 and "alwayson_scripts.ControlNet.args" in r.text and "tiled" in r.text


def test_inpaint_only_keeps_the_picture_outside_the_mask(client: TestClient) -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    photo = _photo()
    unit = _unit(
        module="inpaint_only",
        image={"image": _b64(photo), "mask": _b64(Image.fromarray(mask))},
        save_detected_map=False,
    )
    out = _pixels(_txt2img(client, [unit])["images"][0])
    plain = _pixels(_txt2img(client, None)["images"][0])
    far = np.ones((64, 64), bool)
    far[16 - 8 : 48 + 8, 16 - 8 : 48 + 8] = False  # the mask, dilated and blurred by 7 px
    assert (out[far] == np.asarray(photo, np.int16)[far]).all()  # the kept picture, outside the mask
    assert np.abs(out[24:40, 24:40] - plain[24:40, 24:40]).mean() > 1  # sampled inside


def test_inpaint_only_blend_matches_its_formula(client: TestClient) -> None:
    import torch

    from pipeline.models.controlnet.residuals import Restore

    torch.manual_seed(0)
    latent, x, eps = torch.randn(1, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    mask = (torch.rand(1, 1, 8, 8) > 0.5).float()
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    acp = torch.cumprod(1 - betas, 0)
    got = Restore(latent, mask, acp, 0.8)(eps, x, torch.tensor(321.4), torch.tensor([0.0, 1.0]))
    a = float(acp[321])
    x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5  # the DDPM clean-latent prediction
    x0 = x0 * mask + latent * (1 - mask)
    want = 0.8 * (x - a**0.5 * x0) / (1 - a) ** 0.5 + 0.2 * eps
    assert torch.allclose(got, want.float(), atol=1e-4)


def test_tile_colorfix_sharp_blend_matches_its_formula(client: TestClient) -> None:
    import cv2
    import torch

    from pipeline.models.controlnet.residuals import ColorFix

    torch.manual_seed(1)
    latent, x, eps = torch.randn(1, 4, 12, 12), torch.randn(2, 4, 12, 12), torch.randn(2, 4, 12, 12)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    acp = torch.cumprod(1 - betas, 0)
    rows = torch.tensor([0.0, 1.0])  # negative prompt row, then prompt row
    got = ColorFix(latent, 3, 0.6, acp, 1.0)(eps, x, torch.tensor(600.0), rows)

    def box(t: torch.Tensor) -> np.ndarray:  # (2k+1)-wide mean over replicated borders, per channel map
        a = t.numpy().astype(np.float64)
        return np.stack([[cv2.blur(c, (7, 7), borderType=cv2.BORDER_REPLICATE) for c in img] for img in a])

    a = float(acp[600])
    x0 = ((x - (1 - a) ** 0.5 * eps) / a**0.5).double().numpy()
    x0 = x0 - box(torch.from_numpy(x0)) + np.repeat(box(latent), 2, axis=0)
    neg = 0.6 * box(torch.from_numpy(x0)) + 0.4 * x0
    x0[0] = neg[0]  # the negative row gets the blurred (less detailed) prediction
    want = (x.double().numpy() - a**0.5 * x0) / (1 - a) ** 0.5
    assert np.allclose(got.numpy(), want, atol=1e-3)


def test_tile_colorfix_unit_runs(client: TestClient) -> None:
    plain = _px(_txt2img(client, None)["images"][0])
    for module in ("tile_colorfix", "tile_colorfix+sharp"):
        r = _txt2img(
            client, [_unit(module=module, image=_b64(_photo()), threshold_a=4, save_detected_map=False)]
        )
        assert _px(r["images"][0]) != plain


def test_a_unit_composes_with_the_unet_patches_of_the_speed_and_forge_scripts(client: TestClient) -> None:
    """ControlNet residuals go into the UNet call while FreeU (Forge) and token merging (A1111) patch the
    same UNet: each still acts, and the unit still acts under them."""
    freeu = {"FreeU Integrated": {"args": [True, 1.3, 1.4, 0.9, 0.2, 0, 1]}}
    tome = {"token_merging_ratio": 0.5}
    unit = {"ControlNet": {"args": [_unit(save_detected_map=False)]}}

    def image(scripts: dict, options: dict | None = None) -> np.ndarray:
        body = {**BASE, "alwayson_scripts": scripts, "override_settings": {**SD1, **(options or {})}}
        r = client.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        return _pixels(r.json()["images"][0])

    with_unit = image(unit)
    patched = image(freeu, tome)
    both = image({**unit, **freeu}, tome)
    assert not np.array_equal(both, with_unit)  # the patches act with a unit
    assert not np.array_equal(both, patched)  # the unit acts under the patches
    assert np.array_equal(both, image({**unit, **freeu}, tome))  # and the job is reproducible
