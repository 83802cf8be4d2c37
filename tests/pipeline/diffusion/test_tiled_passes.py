"""Tiled sampling in every pass and with what rides on the model call: a txt2img panorama (pass one),
SDXL's pooled embedding and size ids given to every tile, prompt editing switching the conditioning of
every tile at the same step, and a LoRA applied under tiles as without."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tests.conftest import Env, count_unet, mean_abs_diff, pixels
from tests.pipeline.models.networks.conftest import net_env  # noqa: F401 - the fixture
from tests.pipeline.models.networks.test_lora import _close, _reference, _write


def test_txt2img_panorama_is_tiled_in_pass_one(env: Env, builtin_model: Any) -> None:
    """1024x256 with the extension's txt2img defaults (MultiDiffusion, 96-cell tiles, overlap 48): 2 tiles
    across 128 latent columns, one UNet batch per step."""
    entry = {"Tiled Diffusion": {"args": [True]}}
    with count_unet(builtin_model) as c:
        tiled = env.run(width=1024, height=256, steps=2, alwayson_scripts=entry)
    assert tiled.images[0].size == (1024, 256) and tiled.unet_calls == [2]
    assert c.count() == 2
    plain = env.run(width=1024, height=256, steps=2)
    assert mean_abs_diff(tiled.images[0], plain.images[0]) > 0.5  # the tiles did the sampling


def _sdxl_calls(model: Any):
    seen: list[dict[str, torch.Tensor]] = []

    def pre(_m: Any, args: tuple, kwargs: dict) -> None:
        extra = kwargs["added_cond_kwargs"]
        seen.append({"x": args[0].shape, "pooled": extra["text_embeds"].clone(),
                     "ids": extra["time_ids"].clone()})
    return seen, model.unet.register_forward_pre_hook(pre, with_kwargs=True)


def test_sdxl_every_tile_gets_the_pooled_embedding_and_the_pictures_size_ids(tiny_env: Env) -> None:
    model = tiny_env.model("tiny-sdxl.safetensors")
    ck = {"sd_model_checkpoint": "tiny-sdxl.safetensors"}
    plain = tiny_env.run(options=ck, width=128, height=64, steps=2)
    one = tiny_env.run(options=ck, width=128, height=64, steps=2,
                       tiled_diffusion={"tile_width": 256, "tile_height": 256, "overlap": 16})
    assert (pixels(one.images[0]) == pixels(plain.images[0])).all()  # one covering tile == untiled
    seen, handle = _sdxl_calls(model)
    try:
        tiny_env.run(options=ck, width=128, height=64, steps=2, tiled_diffusion={
            "method": "MultiDiffusion", "tile_width": 64, "tile_height": 64, "overlap": 32,
            "tile_batch_size": 2})
    finally:
        handle.remove()
    # latent 16x8, tiles 8x8 overlapping by 4: 3 tiles, batches of 2 and 1, cond + uncond in each
    assert [s["x"][0] for s in seen] == [4, 2, 4, 2] and all(tuple(s["x"][2:]) == (8, 8) for s in seen)
    first = seen[0]
    assert torch.equal(first["pooled"][0], first["pooled"][1])  # both tiles: the same uncond pooled vector
    assert torch.equal(first["pooled"][2], first["pooled"][3])
    assert not torch.equal(first["pooled"][0], first["pooled"][2])  # uncond then cond, as untiled
    for s in seen:  # the size ids are the picture's (64 high, 128 wide), not a tile's
        assert s["ids"].tolist() == [[64.0, 128.0, 0.0, 0.0, 64.0, 128.0]] * s["x"][0]


def _conds(env: Env, model: Any, **fields: Any) -> list[torch.Tensor]:
    """The prompt's conditioning of every UNet call (the second half of the CFG batch)."""
    contexts: list[torch.Tensor] = []
    handle = model.unet.register_forward_pre_hook(
        lambda _m, a, kw: contexts.append(kw["encoder_hidden_states"][1].clone()), with_kwargs=True)
    try:
        env.run(prompt="[a cat:a dog:2]", width=128, height=64, steps=4, **fields)
    finally:
        handle.remove()
    return contexts


def test_prompt_editing_switches_every_tile_at_the_same_step(env: Env, builtin_model: Any) -> None:
    plain = _conds(env, builtin_model)
    tiled = _conds(env, builtin_model, tiled_diffusion={"tile_width": 64, "tile_height": 64, "overlap": 32,
                                                        "tile_batch_size": 1})
    assert len(plain) == 4 and len(tiled) == 4 * 3  # 3 tiles a step
    assert not torch.equal(plain[0], plain[-1])  # the edit happens within the pass
    for step, cond in enumerate(plain):  # every tile of a step has that step's untiled conditioning
        assert all(torch.equal(t, cond) for t in tiled[3 * step:3 * step + 3])


def test_a_lora_under_tiles_matches_the_merged_weights_reference(net_env: Any) -> None:  # noqa: F811
    model = net_env.model("sd1")
    net = _write(net_env, model, "lora", "tiled-lora", seed=5)
    tiles = {"tile_width": 64, "tile_height": 64, "overlap": 32}
    got = net_env.run(prompt="a cat <lora:tiled-lora:0.8>", width=128, height=64,
                      tiled_diffusion=tiles).images[0]
    want = _reference(net_env, [net], mults=[(0.8, 0.8)], prompt="a cat", width=128, height=64,
                      tiled_diffusion=tiles)
    _close(got, want)
    plain = net_env.run(prompt="a cat", width=128, height=64, tiled_diffusion=tiles).images[0]
    assert np.abs(pixels(got) - pixels(plain)).mean() > 1.0  # the LoRA does change the tiled picture
