"""Which UNet patches a pass of a job gets: each provider reads the job (`p.options`, `p.script_args`)
and returns a patch for this pass or None, and writes its infotext keys into `p.extra_generation_params`.

`PROVIDERS` is the one list, in the order the patches are installed; a new per-pass UNet feature adds its
provider here (`provider(p, info) -> UNetPatch | None`; `info.pass_no` 2 is the hires pass). The patches
themselves live in pipeline/models/patches/ (see layer.py for what a patch may do)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.jobs.forge_pass import hypertile_for_pass as forge_hypertile_for_pass
from pipeline.jobs.speed import deep_shrink_for_pass, hypertile_for_pass, token_merging_for_pass
from pipeline.models.patches import PassInfo, UNetPatch
from pipeline.models.patches.upcast_attn import UpcastAttention

Provider = Callable[[Any, PassInfo], "UNetPatch | None"]


def upcast_attn_for_pass(p: Any, _info: PassInfo) -> UpcastAttention | None:
    """A1111's `upcast_attn`: the UNet's attention in float32 in every pass (no infotext key: A1111 writes
    none)."""
    return UpcastAttention() if p.options.get("upcast_attn", False) else None


PROVIDERS: list[Provider] = [deep_shrink_for_pass, token_merging_for_pass, hypertile_for_pass,
                             forge_hypertile_for_pass,  # Forge's "HyperTile Integrated"
                             upcast_attn_for_pass]


def pass_info(p: Any, pass_no: int, width: int, height: int, seeds: list[int]) -> PassInfo:
    """The PassInfo of a pass of job `p` sampling images with `seeds`."""
    all_seeds = getattr(p, "all_seeds", None) or seeds
    return PassInfo(pass_no=pass_no, width=width, height=height, seed=int(all_seeds[0]),
                    img2img=hasattr(p, "init_images"))


def pass_patches(p: Any, info: PassInfo) -> list[UNetPatch]:
    """The patches of this pass, in PROVIDERS' order."""
    return [patch for provider in PROVIDERS if (patch := provider(p, info)) is not None]
