"""What Forge's integrated scripts do to one sampling pass (their args parsed by jobs/forge_scripts.py):
FreeU patches the UNet's up path, Dynamic Thresholding, PAG and SAG change the guidance
(pipeline/diffusion/guidance.py) and the mid block's self-attention (pipeline/models/forge_patches.py).
Each writes Forge's infotext keys when it acts in a pass, as Forge's `process_before_every_sampling` does.

`ForgePass.open(...)` is None when none of them is enabled, so a job without them runs exactly the code it
ran before. Its patches go through the per-pass patching layer (pipeline/models/patches) with the speed
options', which installs them on the pass's model and on a refiner taking the pass over, and removes
them after the pass."""
from __future__ import annotations

from typing import Any

from pipeline.diffusion.guidance import NoiseLevels, PassGuidance
from pipeline.jobs import forge_scripts as fs
from pipeline.models.forge_patches import MidAttention, install_freeu
from pipeline.models.patches import PassInfo, UNetPatcher
from pipeline.models.patches.hypertile import Hypertile


class ForgePass:
    """Forge's scripts in one pass: `guidance` for the loop (None without DynThres/PAG/SAG) and `patches` for
    the per-pass patching layer (FreeU, the mid-block attention switches of SAG and PAG)."""

    def __init__(self, levels: NoiseLevels, freeu: dict[str, Any] | None, guidance: PassGuidance | None):
        self.levels = levels
        self.freeu = freeu
        self.guidance = guidance
        self.patches = [self] if freeu is not None or (guidance is not None and guidance.attention) else []

    @classmethod
    def open(cls, p: Any, model: Any, plan: Any, cfg_scale: float) -> ForgePass | None:
        freeu, sag, pag, dyn = (fs.settings(p, s) for s in (fs.FREEU, fs.SAG, fs.PAG, fs.DYNTHRES))
        if sag is not None and cfg_scale <= 1:
            sag = None  # as Forge: "Self Attention Guidance requires CFG > 1", the pass runs without it
        if not (freeu or sag or pag or dyn):
            return None
        for prefix, values in (("freeu", freeu), ("sag", sag), ("pagi", pag), ("dynthres", dyn)):
            if values is not None:
                fs.infotext(p, prefix, values)
        levels = NoiseLevels(plan.scheduler.alphas_cumprod, plan.timesteps, model.prediction_type == "v_prediction")
        guidance = None
        if sag or pag or dyn:
            attention = MidAttention() if (sag or pag) else None
            if attention is not None:
                attention.record = sag is not None
            guidance = PassGuidance(levels, dyn, pag, sag, attention)
        return cls(levels, freeu, guidance)

    def apply(self, patcher: UNetPatcher) -> None:
        """The UNetPatch protocol: FreeU on the up path (on the steps of its window, from the call's
        timestep) and the mid-block attention switches, on the pass's model and on a refiner taking over."""
        if self.freeu is not None:
            f = self.freeu

            def active() -> bool:
                t = patcher.call.timestep
                frac = self.levels.fraction(self.levels.index(t)) if t is not None else 0.0
                return f["start"] <= frac <= f["end"]

            install_freeu(patcher, f["b1"], f["b2"], f["s1"], f["s2"], active)
        g = self.guidance
        if g is not None and g.attention is not None:
            names = (("Self-Attention Guidance", g.sag), ("Perturbed-Attention Guidance", g.pag))
            g.attention.install(patcher, " and ".join(n for n, on in names if on))


def tiled_vae(p: Any) -> bool:
    """Never OOM Integrated's "Enabled for VAE (always tiled)"."""
    s = fs.settings(p, fs.NEVER_OOM)
    return bool(s and s["vae_enabled"])



def hypertile_for_pass(p: Any, info: PassInfo) -> Hypertile | None:
    """Forge's "HyperTile Integrated" (a provider of jobs/unet_patches.PROVIDERS): Hypertile in every pass
    (Forge patches before every sampling), `tile_size` as the largest tile, `swap_size`, `max_depth`; the
    minimum tile side doubles per depth (ComfyUI's `scale_depth` on) and is at least 128 px, as A1111's
    Hypertile does. Writes Forge's `HyperTile_*` keys."""
    s = fs.settings(p, fs.HYPERTILE)
    if s is None:
        return None
    p.extra_generation_params.update({f"HyperTile_{k}": v for k, v in s.items()})
    return Hypertile(info.width, info.height, s["max_depth"], s["tile_size"], s["swap_size"])
