"""Automatic tiling (pipeline/tiled/auto.py): the memory estimate's shape (area for activations, tokens
squared for a materialised attention score matrix), the choice of tiles under a budget, and a job that
would not fit its budget (option `tiled_diffusion_auto_budget_mb`) sampled in tiles, with
`Tiled Diffusion: auto` in its infotext; the same job untiled when it fits or when the option is off."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from pipeline.diffusion.tiled import TileSettings, auto
from pipeline.diffusion.tiled.auto import auto_tiles, budget_bytes, pass_bytes, weight_bytes
from pipeline.models.builtin import tiny_sd1_configs
from tests.conftest import Env, count_unet, infotext_params, pixels


@pytest.fixture(scope="module")
def unet() -> Any:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**tiny_sd1_configs()["unet"]).eval()


def test_estimate_grows_with_area_and_with_tokens_squared_without_fused_attention(unet: Any) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())  # scaled_dot_product_attention: no score matrix
    assert pass_bytes(unet, 2, 64, 64, 4) == 4 * pass_bytes(unet, 2, 32, 32, 4)  # activations: area
    assert pass_bytes(unet, 4, 32, 32, 4) == 2 * pass_bytes(unet, 2, 32, 32, 4)  # and rows
    unet.set_attn_processor(AttnProcessor())  # the classic processor holds heads x tokens x tokens
    small, big = pass_bytes(unet, 2, 32, 32, 4), pass_bytes(unet, 2, 64, 64, 4)
    scores = 2 * 4 * (64 * 64) ** 2 * 4  # rows x heads x tokens^2 x bytes at the first (attention) level
    assert big - 4 * (small - 2 * 4 * (32 * 32) ** 2 * 4) == scores
    unet.set_attn_processor(AttnProcessor2_0())


def test_tiles_are_chosen_to_fit_the_budget(unet: Any) -> None:
    one = pass_bytes(unet, 2, 64, 64, 4)
    assert auto_tiles(unet, 1, 64, 64, 4, one) is None  # fits: untiled
    two_tiles = pass_bytes(unet, 2 * 2, 96, 96, 4)  # two 96-cell tiles (cond + uncond) per call
    assert auto_tiles(unet, 1, 256, 256, 4, two_tiles) == TileSettings(tile_width=96, tile_height=96, batch=2)
    assert auto_tiles(unet, 1, 256, 256, 4, one) == TileSettings(tile_width=64, tile_height=64, batch=1)
    assert auto_tiles(unet, 1, 128, 128, 4, 1) == TileSettings(tile_width=32, tile_height=32, batch=1)
    assert budget_bytes({"tiled_diffusion_auto_budget_mb": 3}, torch.device("cpu")) == 3 * 2**20
    assert budget_bytes({}, torch.device("cpu")) > 2**20  # a share of the machine's total memory


def test_a_pass_over_its_budget_is_tiled_and_says_so(env: Env, builtin_model: Any) -> None:
    job = {"width": 512, "height": 256, "steps": 2}
    with count_unet(builtin_model) as c:
        tiled = env.run(options={"tiled_diffusion_auto_budget_mb": 10}, **job)
    # latent 64x32 needs ~12 MiB; a 48-cell tile (48x32 here, ~9 MiB) per call fits 10 MiB: 2 across, 2 steps
    assert c.count() == 2 * 2 and tiled.unet_calls == [2]
    assert infotext_params(tiled.infotexts[0])["Tiled Diffusion"] == "auto"
    with count_unet(builtin_model) as c:
        plain = env.run(**job)  # the budget is a share of the machine's memory: fits, untiled
        off = env.run(options={"tiled_diffusion_auto_budget_mb": 10, "tiled_diffusion_auto": False}, **job)
    assert c.count() == 2 + 2
    assert "Tiled Diffusion" not in infotext_params(plain.infotexts[0])
    assert (pixels(plain.images[0]) == pixels(off.images[0])).all()
    assert not (pixels(plain.images[0]) == pixels(tiled.images[0])).all()


class _Memory:
    """What psutil.virtual_memory() reports: a machine of `total` bytes with `available` of them free."""

    def __init__(self, total: int, available: int) -> None:
        self.total, self.available, self.free = total, available, available


def test_the_decision_never_reads_free_memory(env: Env, builtin_model: Any, monkeypatch) -> None:
    """The same request gives the same bytes whatever an earlier job left allocated: the budget is a share of
    the total memory less the weights, so memory held elsewhere (simulated: the free figures of psutil and
    of torch.cuda change between the runs) moves neither the decision nor the pixels."""
    job = {"width": 512, "height": 256, "steps": 2}
    # a machine whose share, less the tiny model's weights, is 10 MiB: the 512x256 pass (~12 MiB) is tiled
    total = int((10 * 2**20 + weight_bytes(builtin_model)) / auto.TOTAL_FRACTION) + 1
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    runs = []
    for available in (total, total // 100, 2**20):  # idle; then most of it held by an earlier job
        monkeypatch.setattr(auto.psutil, "virtual_memory", lambda a=available: _Memory(total, a))
        assert budget_bytes({}, torch.device("cpu"), builtin_model) == 10 * 2**20
        runs.append(env.run(**job))
    assert all(infotext_params(r.infotexts[0])["Tiled Diffusion"] == "auto" for r in runs)
    assert all((pixels(r.images[0]) == pixels(runs[0].images[0])).all() for r in runs)
