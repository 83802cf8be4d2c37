"""The request's tiling (pipeline/tiled/request.py): the Tiled Diffusion extension's positional
`alwayson_scripts` args mapped onto TileSettings (latent cells), defaults for missing trailing args, a 400
naming the argument for what hiresd does not implement, and the same picture as the `tiled_diffusion`
field."""
from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.diffusion.tiled import TileSettings
from pipeline.diffusion.tiled.request import (
    MAX_ARGS,
    NAME,
    from_alwayson_args,
    keeps_input_size,
    register,
    request_tiles,
)
from pipeline.jobs.dispatch import prepare_img2img
from pipeline.jobs.extensions import Extensions
from pipeline.runtime.errors import InvalidRequest, TooLarge
from schemas.img2img import Img2ImgRequest
from schemas.txt2img import Txt2ImgRequest
from tests.conftest import Env, count_unet, infotext_params, pixels
from tests.pipeline.jobs.test_img2img import _noise_image, run

# enabled, method, overwrite_size, keep_input_size, image_width, image_height, tile_width, tile_height,
# overlap, tile_batch_size, upscaler_name, scale_factor, noise_inverse, ...
ARGS = [True, "MultiDiffusion", False, True, 1024, 1024, 12, 10, 4, 3, "None", 2.0, False]


def test_args_map_onto_tile_settings_in_latent_cells() -> None:
    assert from_alwayson_args(ARGS, img2img=False) == TileSettings("MultiDiffusion", 12, 10, 4, 3)
    full = ARGS + [10, 1.0, 1.0, 64, False, False, False, False] + [False, 0.4, 0.4, 0.2, 0.2, "", "",
                                                                    "Background", 0.2, -1] * 8
    assert len(full) == MAX_ARGS
    assert from_alwayson_args(full, img2img=True) == TileSettings("MultiDiffusion", 12, 10, 4, 3)


def test_missing_trailing_args_take_the_extension_defaults() -> None:
    # txt2img: MultiDiffusion, tile 96, overlap 48; img2img: Mixture of Diffusers, overlap 8; batch 4
    assert from_alwayson_args([True], img2img=False) == TileSettings("MultiDiffusion", 96, 96, 48, 4)
    assert from_alwayson_args([True], img2img=True) == TileSettings("Mixture of Diffusers", 96, 96, 8, 4)
    assert from_alwayson_args([], img2img=True) is None
    assert from_alwayson_args([False, "nonsense"], img2img=True) is None


@pytest.mark.parametrize("index,value,words", [
    (1, "Tiled Noise", "args[1] (method)"),
    (2, True, "args[2] (overwrite_size)"),
    (6, 4, "args[6] (tile_width): must be from 8"),
    (7, "96", "args[7] (tile_height): expected a whole number"),
    (8, 10, "args[8] (overlap): overlap 10 must be smaller than the tile"),
    (9, 0, "args[9] (tile_batch_size)"),
    (10, "R-ESRGAN 4x+", "args[10] (upscaler_name)"),
    (12, True, "args[12] (noise_inverse): noise inversion"),
    (18, True, "args[18] (enable_bbox_control)"),
    (21, True, "args[21] (region 1 enable)"),
    (3, "yes", "args[3] (keep_input_size): expected true or false"),
])
def test_what_is_not_implemented_or_wrong_is_a_400_naming_the_argument(index: int, value: Any,
                                                                      words: str) -> None:
    args = ARGS + [10, 1.0, 1.0, 64, False, False, False, False, False]
    args[index] = value
    with pytest.raises(InvalidRequest) as exc:
        from_alwayson_args(args, img2img=True)
    assert f"alwayson_scripts.{NAME}.{words}" in str(exc.value)


def test_too_many_args_and_tiling_asked_twice() -> None:
    with pytest.raises(InvalidRequest, match=f"at most {MAX_ARGS}"):
        from_alwayson_args([True] + [False] * MAX_ARGS, img2img=False)
    req = Txt2ImgRequest(tiled_diffusion={"tile_width": 64, "tile_height": 64, "overlap": 0},
                         alwayson_scripts={"tiled diffusion": {"args": ARGS}})
    with pytest.raises(InvalidRequest, match="send one of them"):
        request_tiles(req, img2img=False)
    # the entry's name is case-insensitive, a disabled entry leaves the field in charge
    req = Txt2ImgRequest(tiled_diffusion={"tile_width": 64, "tile_height": 64, "overlap": 0},
                         alwayson_scripts={"TILED DIFFUSION": {"args": [False]}})
    assert request_tiles(req, img2img=False) == TileSettings("Mixture of Diffusers", 8, 8, 0, 4)
    assert request_tiles(Img2ImgRequest(alwayson_scripts={"Tiled diffusion": {"args": ARGS}}), True) == \
        TileSettings("MultiDiffusion", 12, 10, 4, 3)


def test_registered_as_an_always_on_script_once() -> None:
    ext = Extensions()
    register(ext)
    register(ext)  # idempotent
    assert ext.names() == ["tiled diffusion"]
    assert ext.script_args({"Tiled Diffusion": {"args": ARGS}}) == {"tiled diffusion": ARGS}


def test_alwayson_entry_gives_the_same_picture_as_the_field(env: Env, builtin_model: Any) -> None:
    src = _noise_image(128, 64)
    common = {"width": 128, "height": 64, "steps": 3, "denoising_strength": 0.6}
    field = run(env, [src], **common, tiled_diffusion={"method": "MultiDiffusion", "tile_width": 64,
                                                      "tile_height": 64, "overlap": 32, "tile_batch_size": 2})
    with count_unet(builtin_model) as c:
        entry = run(env, [src], **common, alwayson_scripts={"Tiled Diffusion": {
            "args": [True, "MultiDiffusion", False, True, 1024, 1024, 8, 8, 4, 2, "None", 2.0, False]}})
    assert c.count() == 2 * 2  # 3 tiles in batches of 2, 2 steps at denoise 0.6
    assert (pixels(field.images[0]) == pixels(entry.images[0])).all()
    written = json.loads(infotext_params(entry.infotexts[0])["Tiled Diffusion"])  # what ran, in latent cells
    assert written == {"Method": "MultiDiffusion", "Latent tile width": 8, "Latent tile height": 8,
                       "Latent tile overlap": 4, "Latent tile batch size": 2}
    assert infotext_params(field.infotexts[0])["Tiled Diffusion"] == infotext_params(entry.infotexts[0])[
        "Tiled Diffusion"]


def test_keep_input_size_is_on_by_default_and_only_with_the_entry_enabled() -> None:
    def req(args: list | None) -> Img2ImgRequest:
        return Img2ImgRequest(alwayson_scripts={NAME: {"args": args}} if args is not None else {})

    assert keeps_input_size(req([True])) and keeps_input_size(req(ARGS))
    assert not keeps_input_size(req(ARGS[:3] + [False] + ARGS[4:]))
    assert not keeps_input_size(req([False, "MultiDiffusion", False, True]))
    assert not keeps_input_size(req(None))
    assert not keeps_input_size(Img2ImgRequest(tiled_diffusion={"tile_width": 64, "tile_height": 64,
                                                                "overlap": 16}))


def test_keep_input_size_samples_img2img_at_the_init_images_size_as_the_extension_does(env: Env) -> None:
    """The extension sets width/height to the init image's (its upscaler None) before sampling: a client
    that sends the default 512x512 with a bigger picture gets the picture's size back, as from A1111."""
    src = _noise_image(204, 100)  # not multiples of 8: the sampled size rounds down, as width/height do
    common = {"width": 64, "height": 64, "steps": 2, "denoising_strength": 0.5}
    args = [True, "Mixture of Diffusers", False, True, 1024, 1024, 8, 8, 4, 4]
    kept = run(env, [src], **common, alwayson_scripts={NAME: {"args": args}})
    assert kept.images[0].size == (200, 96)
    assert "Size: 200x96" in kept.infotexts[0]
    not_kept = run(env, [src], **common, alwayson_scripts={NAME: {"args": args[:3] + [False] + args[4:]}})
    assert not_kept.images[0].size == (64, 64)
    # over the pixel budget because of the kept size: the 400 says so (the request's 64x64 would fit)
    req = Img2ImgRequest(init_images=["sent"], **common, alwayson_scripts={NAME: {"args": [True]}})
    with pytest.raises(TooLarge, match="keep_input_size samples at the image's size"):
        prepare_img2img(req, env.options, env.models, env.upscalers, 100 * 100, [src], None)
