"""T2I-Adapters: tiny real-architecture adapters (diffusers' `T2IAdapter`, full adapters as TencentARC's)
written in both layouts and as a `.pth`, loaded from a `ControlNet` folder through the store, and their
effect on the guided model checked against a reference that hands diffusers' own adapter features,
weighted by hand, to the UNet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.diffusion.loop import guided_model
from pipeline.models.checkpoints import CheckpointInfo, load_checkpoint
from pipeline.models.controlnet import ActiveControl, ControlNetStore, ControlResiduals
from pipeline.models.controlnet.residuals import adapter_scales
from pipeline.runtime.errors import ModelLoadError
from tests.fixtures.controlnets import build_tiny_adapter, write_adapter
from tests.fixtures.tinymodels import build_tiny_sd1, build_tiny_sdxl

BUILDERS = {"sd1": build_tiny_sd1, "sdxl": build_tiny_sdxl}
LAYOUTS = {"original": ".safetensors", "diffusers": ".safetensors", "original_pth": ".pth"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("t2ia-models")
    out: dict[str, Any] = {"root": work / "ControlNet"}
    for family, build in BUILDERS.items():
        m = build(work)
        path = m.write_safetensors(work / "sd" / f"{family}.safetensors")
        net = build_tiny_adapter(m.unet, family, seed=71)
        for name, suffix in LAYOUTS.items():
            write_adapter(net, out["root"] / f"t2iadapter_{family}_{name}{suffix}", name.split("_")[0])
        out[family] = (load_checkpoint(CheckpointInfo.from_path(path), torch.device("cpu"), torch.float32), net)
        if family == "sd1":
            light = build_tiny_adapter(m.unet, family, seed=74, light=True)
            for name, suffix in LAYOUTS.items():
                write_adapter(light, out["root"] / f"t2iadapter_light_{name}{suffix}", name.split("_")[0])
            out["light"] = (out[family][0], light)
    return out


@pytest.mark.parametrize("family", ["sd1", "sdxl", "light"])
def test_every_layout_loads_into_the_same_adapter(tiny: dict, family: str) -> None:
    model, ref = tiny[family]
    store = ControlNetStore([tiny["root"]])
    hint = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    want = ref(hint)
    for name in LAYOUTS:
        f = store.find(f"t2iadapter_{family}_{name}", "m")
        arch = f.arch()
        assert arch.family == ("sd1" if family == "light" else family) and arch.is_adapter
        assert arch.config["adapter"].light == (family == "light")
        assert arch.layout == ("t2i_adapter diffusers" if name == "diffusers" else "t2i_adapter")
        net = store.load(f, dict(model.unet.config), torch.device("cpu"), torch.float32)
        got = net(hint)
        assert len(got) == 4
        for g, w in zip(got, want):
            assert g.shape == w.shape and torch.allclose(g, w, atol=1e-6)


def test_an_adapter_of_the_other_family_is_refused(tiny: dict) -> None:
    model, _ = tiny["sdxl"]
    store = ControlNetStore([tiny["root"]])
    f = store.find("t2iadapter_sd1_original", "m")
    assert f.arch().family == "sd1"
    xl_unet = dict(model.unet.config, block_out_channels=(48, 96))
    with pytest.raises(ModelLoadError, match="widths"):
        store.load(f, xl_unet, torch.device("cpu"), torch.float32)


class _ByHand:
    """The reference control: diffusers' adapter features times the factors, on the rows the mode says."""

    def __init__(self, features: list[torch.Tensor], scales: list[float], cond_only: bool):
        self.features, self.scales, self.cond_only = features, scales, cond_only

    def at_step(self, step: int, steps: int) -> None:
        pass

    def __call__(self, x, t, context, unet_kwargs, cond_rows) -> dict[str, Any]:
        feats = []
        for f, s in zip(self.features, self.scales):
            f = (f * s).expand(x.shape[0], -1, -1, -1)
            if self.cond_only:
                f = f * cond_rows.view(-1, 1, 1, 1)
            feats.append(f)
        return {"down_intrablock_additional_residuals": feats}

    def after(self, out, x, t, cond_rows):
        return out


def _conds(model: Any, family: str) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(3)
    width = int(model.unet.config.cross_attention_dim)

    def one() -> Any:
        c = type("C", (), {})()
        c.context = torch.randn(1, 77, width, generator=g)
        if family == "sdxl":
            c.pooled = torch.randn(1, int(model.text_encoders[-1].config.projection_dim), generator=g)
        return c

    return one(), one()


@pytest.mark.parametrize("family", ["sd1", "sdxl", "light"])
@pytest.mark.parametrize("mode", ["Balanced", "My prompt is more important", "ControlNet is more important"])
def test_features_match_a_hand_computed_reference(tiny: dict, family: str, mode: str) -> None:
    model, ref = tiny[family]
    store = ControlNetStore([tiny["root"]])
    net = store.load(store.find(f"t2iadapter_{family}_original", "m"), dict(model.unet.config),
                     model.device, model.dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    hint = torch.rand(1, 3, 64, 64, generator=g)
    t = torch.tensor(500)
    cond, uncond = _conds(model, "sd1" if family == "light" else family)
    weight, cfg = 0.7, 6.0
    soft = mode != "Balanced"
    cond_only = mode == "ControlNet is more important"
    scales = adapter_scales(weight, soft)
    assert scales == ([weight * f for f in (0.25, 0.62, 0.825, 1.0)] if soft else [weight] * 4)
    control = ControlResiduals([ActiveControl(net, hint, scales, cond_only=cond_only)])
    with torch.inference_mode():
        got = guided_model(model, cfg, 64, 64, control=control)(x, t, cond, uncond)
        want = guided_model(model, cfg, 64, 64, control=_ByHand(ref(hint), scales, cond_only))(
            x, t, cond, uncond
        )
        plain = guided_model(model, cfg, 64, 64)(x, t, cond, uncond)
    # float32 through a UNet: the CPU's kernels (AVX2 / AVX-512) round the last bits their own way
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert (got - plain).abs().mean() > 1e-3


def test_features_follow_the_unet_at_sizes_not_multiple_of_64(tiny: dict) -> None:
    """72 px: the adapter's pooling floors (4 -> 4, 9 -> 4) where the UNet's strided conv rounds up (9 -> 5):
    the features are resized to the UNet's sizes (nearest), as the extension's aligned adding."""
    model, _ = tiny["sd1"]
    store = ControlNetStore([tiny["root"]])
    net = store.load(store.find("t2iadapter_sd1_original", "m"), dict(model.unet.config),
                     model.device, model.dtype)
    hint = torch.rand(1, 3, 72, 72, generator=torch.Generator().manual_seed(2))
    control = ControlResiduals([ActiveControl(net, hint, adapter_scales(1.0, False), cond_only=False)])
    cond, uncond = _conds(model, "sd1")
    with torch.inference_mode():
        out = guided_model(model, 5.0, 72, 72, control=control)(torch.randn(1, 4, 9, 9), torch.tensor(400),
                                                                 cond, uncond)
    assert out.shape == (1, 4, 9, 9) and torch.isfinite(out).all()


def test_light_and_broken_adapter_files_are_clear_errors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "ControlNet"
    folder.mkdir()
    save_file(
        {"body.0.in_conv.weight": torch.zeros(8, 192, 1, 1), "body.0.body.0.block1.weight": torch.zeros(8, 8, 3, 3),
         "body.0.out_conv.weight": torch.zeros(32, 8, 1, 1)},
        str(folder / "t2iadapter_color.safetensors"),
    )
    save_file({"body.0.block1.weight": torch.zeros(2), "conv_in.weight": torch.zeros(2)},
              str(folder / "t2i_broken.safetensors"))
    save_file({"conv_in.weight": torch.zeros(32, 100, 3, 3), "body.0.block1.weight": torch.zeros(32, 32, 3, 3),
               "body.0.block2.weight": torch.zeros(32, 32, 1, 1)}, str(folder / "t2i_odd.safetensors"))
    store = ControlNetStore([folder])
    with pytest.raises(ModelLoadError, match="light T2I-Adapter"):
        store.find("t2iadapter_color", "m").arch()
    with pytest.raises(ModelLoadError, match="T2I-Adapter"):
        store.find("t2i_broken", "m").arch()
    with pytest.raises(ModelLoadError, match="64 or 192"):
        store.find("t2i_odd", "m").arch()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_sampling_pass_matches_the_reference_latents(tiny: dict, family: str) -> None:
    """A whole Euler pass (the job's sampling loop) with the adapter unit as the job builds it, against
    the same loop driven by the hand-weighted diffusers features: the same latents."""
    from pipeline.diffusion import samplers
    from pipeline.diffusion.loop import run_pass

    model, ref = tiny[family]
    store = ControlNetStore([tiny["root"]])
    net = store.load(store.find(f"t2iadapter_{family}_diffusers", "m"), dict(model.unet.config),
                     model.device, model.dtype)
    g = torch.Generator().manual_seed(5)
    hint = torch.rand(1, 3, 64, 64, generator=g)
    noise = torch.randn(1, 4, 8, 8, generator=g)
    cond, uncond = _conds(model, family)
    scales = adapter_scales(0.8, False)
    sampler, schedule = samplers.resolve("Euler", None, None)

    def latents(control: Any) -> torch.Tensor:
        plan = samplers.make_plan(sampler, schedule, model.scheduler_config, steps=4)
        out = run_pass(model, plan, plan.start(noise, None), lambda i: (cond, uncond), 5.0, 64, 64,
                       lambda *a: None, control=control)
        return out.latents

    with torch.inference_mode():
        got = latents(ControlResiduals([ActiveControl(net, hint, scales, cond_only=False)]))
        want = latents(_ByHand(ref(hint), scales, False))
        plain = latents(None)
    # float rounding only (the adapter runs on the call's batch of 2, the reference on 1, then 4 steps)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert (got - plain).abs().mean() > 1e-3


def test_memory_mode_runs_the_adapter_alone_on_the_compute_device(tiny: dict) -> None:
    """--medvram: the UNet leaves the compute device while the adapter runs (once: its features are kept
    for the pass), and comes back for its forward; the same numbers as without the memory mode."""
    from pipeline.models.accel import memory

    model, _ = tiny["sd1"]
    store = ControlNetStore([tiny["root"]])
    net = store.load(store.find("t2iadapter_sd1_original", "m"), dict(model.unet.config),
                     model.device, model.dtype)
    g = torch.Generator().manual_seed(4)
    x, hint = torch.randn(1, 4, 8, 8, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    cond, uncond = _conds(model, "sd1")
    scales = adapter_scales(1.0, False)
    with torch.inference_mode():
        want = guided_model(model, 5.0, 64, 64, control=ControlResiduals([ActiveControl(net, hint, scales, False)]))(
            x, torch.tensor(300), cond, uncond)
        placement = memory.install(model, "medvram")
        try:
            control = ControlResiduals([ActiveControl(net, hint, scales, False)], placement)
            placement.bring("unet")
            guided = guided_model(model, 5.0, 64, 64, control=control)
            got = guided(x, torch.tensor(300), cond, uncond)
            again = guided(x, torch.tensor(200), cond, uncond)
        finally:
            placement.remove()
    assert torch.equal(got, want) and not torch.equal(again, got)
    moves = placement.log[placement.log.index(("unet", "")) + 1 :]
    assert moves[:2] == [("", "unet"), ("unet", "")]
    assert moves.count(("", "unet")) == 1  # the second call reuses the features: no second eviction
