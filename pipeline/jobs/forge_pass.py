"""What Forge's integrated scripts do to one sampling pass (their args parsed by jobs/forge_scripts.py):
FreeU patches the UNet's up path, Dynamic Thresholding, PAG and SAG change the guidance
(pipeline/diffusion/guidance.py) and the mid block's self-attention (pipeline/models/forge_patches.py).
Each writes Forge's infotext keys when it acts in a pass, as Forge's `process_before_every_sampling` does.

`ForgePass.open(...)` is None when none of them is enabled, so a job without them runs exactly the code it
ran before. The patches are installed on the pass's model and, through `wrap_switch`, on a refiner that
takes the pass over; `close()` removes all of them."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.diffusion.guidance import NoiseLevels, PassGuidance
from pipeline.jobs import forge_scripts as fs
from pipeline.models.forge_patches import MidAttention, PatchSet, install_freeu


class ForgePass:
    def __init__(self, levels: NoiseLevels, freeu: dict[str, Any] | None, guidance: PassGuidance | None):
        self.levels = levels
        self.freeu = freeu
        self.guidance = guidance
        self.fraction = 0.0  # of the UNet call in progress: i / (steps - 1)
        self._sets: list[PatchSet] = []

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
        forge = cls(levels, freeu, guidance)
        try:
            forge.patch(model)
        except BaseException:
            forge.close()
            raise
        return forge

    def patch(self, model: Any) -> None:
        """Install the pass's patches on `model`'s UNet."""
        patches = PatchSet(model.unet)
        self._sets.append(patches)
        if self.freeu is not None:
            def clock(_m: Any, args: tuple[Any, ...]) -> None:
                if len(args) > 1:
                    self.fraction = self.levels.fraction(self.levels.index(args[1]))

            patches.pre_hook(model.unet, clock)
            f = self.freeu
            install_freeu(patches, f["b1"], f["b2"], f["s1"], f["s2"],
                          lambda: f["start"] <= self.fraction <= f["end"])
        g = self.guidance
        if g is not None and g.attention is not None:
            what = " and ".join(n for n, on in (("Self-Attention Guidance", g.sag), ("Perturbed-Attention Guidance",
                                                                                       g.pag)) if on)
            g.attention.install(patches, what)

    def wrap_switch(self, switch: Callable[..., Any] | None) -> Callable[..., Any] | None:
        """The refiner switch, patching the model it hands the pass to."""
        if switch is None:
            return None

        def patched(i: int, t: Any, model: Any) -> Any:
            handover = switch(i, t, model)
            if handover is not None:
                self.patch(handover.model)
            return handover

        return patched

    def close(self) -> None:
        while self._sets:
            self._sets.pop().close()


def tiled_vae(p: Any) -> bool:
    """Never OOM Integrated's "Enabled for VAE (always tiled)"."""
    s = fs.settings(p, fs.NEVER_OOM)
    return bool(s and s["vae_enabled"])

