"""Forge's FreeU, SAG, PAG and Dynamic Thresholding: each matches a reference of its maths computed here from
its definition, changes the image when enabled, is reproducible to the byte, writes Forge's infotext keys,
and composes with the hires pass and tiled diffusion. (Disabled entries leave the image byte-identical:
tests/server/test_forge_scripts_http.py.)"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.diffusion.guidance import NoiseLevels, PassGuidance, dynamic_threshold
from pipeline.jobs.extensions import Extensions
from pipeline.jobs.forge_scripts import DYNTHRES, parse, register
from pipeline.models.forge_patches import MidAttention, install_freeu
from pipeline.models.patches import PassInfo, apply_patches
from tests.conftest import Env, infotext_params, pixels


def _ext() -> Extensions:
    ext = Extensions()
    register(ext)
    return ext


def _run(env: Env, scripts: dict, **fields):
    ext = _ext()
    p = env.prepare(alwayson_scripts=scripts, **fields)
    p.script_args = ext.script_args(scripts)  # what the server does before queueing the job
    return env.run_p(p, ext)


# --- FreeU: the up path's backbone and skip scaling -------------------------------------------------------

def _reference_freeu(x: torch.Tensor, n: int, b: float, s: float) -> torch.Tensor:
    """cat([h, hsp]) -> FreeU's cat([h', hsp']) from the paper's definition, in numpy."""
    h, hsp = x[:, :n].double().numpy(), x[:, n:].double().numpy()
    mean = h.mean(axis=1, keepdims=True)
    lo = mean.reshape(len(h), -1).min(axis=1).reshape(-1, 1, 1, 1)
    hi = mean.reshape(len(h), -1).max(axis=1).reshape(-1, 1, 1, 1)
    h = h.copy()
    h[:, : n // 2] *= (b - 1) * (mean - lo) / (hi - lo) + 1
    f = np.fft.fftshift(np.fft.fft2(hsp), axes=(-2, -1))
    cy, cx = f.shape[-2] // 2, f.shape[-1] // 2
    f[..., cy - 1:cy + 1, cx - 1:cx + 1] *= s
    hsp = np.fft.ifft2(np.fft.ifftshift(f, axes=(-2, -1))).real
    return torch.from_numpy(np.concatenate([h, hsp], axis=1))


def test_freeu_scales_the_backbone_and_filters_the_skip_as_defined(builtin_model) -> None:
    unet = builtin_model.unet  # base channels 32: FreeU's b2/s2 act where h has 64 channels
    resnet = unet.up_blocks[0].resnets[0]
    seen: list[torch.Tensor] = []
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ctx = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(4))

    def call() -> None:
        with torch.no_grad():
            unet(x, torch.tensor(500), encoder_hidden_states=ctx)

    capture = resnet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    call()
    capture.remove()
    class FreeU:
        def apply(self, patcher) -> None:
            install_freeu(patcher, 1.3, 1.4, 0.9, 0.2, lambda: True)

    capture = resnet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        with apply_patches(builtin_model, [FreeU()], PassInfo(1, 64, 64, 0)):
            call()
    finally:
        capture.remove()
    plain, patched = seen
    assert not torch.equal(plain, patched)
    assert torch.allclose(patched.double(), _reference_freeu(plain, 64, 1.4, 0.2), atol=1e-5)
    # closed: the UNet is as it was
    seen.clear()
    capture = resnet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    call()
    capture.remove()
    assert torch.equal(seen[0], plain)


# --- Dynamic Thresholding ---------------------------------------------------------------------------------

def _reference_dynthres(cond: np.ndarray, uncond: np.ndarray, cfg: float, mimic: float, pct: float) -> np.ndarray:
    """Constant schedules, per channel, MEAN start point, AD measure (mcmonkey's defaults), in numpy."""
    out = np.empty_like(cond)
    for b in range(cond.shape[0]):
        for ch in range(cond.shape[1]):
            mim = uncond[b, ch] + (cond[b, ch] - uncond[b, ch]) * mimic
            real = uncond[b, ch] + (cond[b, ch] - uncond[b, ch]) * cfg
            mim_c, real_c = mim - mim.mean(), real - real.mean()
            mim_ref = np.abs(mim_c).max()
            real_ref = np.quantile(np.abs(real_c), pct)
            top = max(mim_ref, real_ref)
            out[b, ch] = np.clip(real_c, -top, top) / top * mim_ref + real.mean()
    return out


@pytest.mark.parametrize("pct", [1.0, 0.9])
def test_dynamic_thresholding_matches_its_definition(pct: float) -> None:
    g = torch.Generator().manual_seed(5)
    cond, uncond = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 6, 6, generator=g)
    s = parse(DYNTHRES, [True, 3.0, pct])
    got = dynamic_threshold(cond, uncond, 9.0, s, timestep=500.0)
    ref = _reference_dynthres(cond.double().numpy(), uncond.double().numpy(), 9.0, 3.0, pct)
    assert np.allclose(got.double().numpy(), ref, atol=1e-5)
    plain = uncond + 9.0 * (cond - uncond)
    assert float((got - plain).abs().max()) > 0.1  # it does change the CFG result


# --- PAG and SAG: the guidance formulas on x0 ---------------------------------------------------------------

class _Levels(NoiseLevels):
    def __init__(self, alpha: float) -> None:
        self.timesteps, self.alphas, self.v_pred = [999.0, 500.0, 1.0], [0.05, alpha, 0.99], False


def test_pag_and_sag_add_their_terms_as_defined() -> None:
    alpha, cfg = 0.4, 5.0
    sa, s1a = math.sqrt(alpha), math.sqrt(1 - alpha)
    g = torch.Generator().manual_seed(9)
    x_in = torch.randn(1, 4, 8, 8, generator=g)
    u, c, perturbed = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    sag_eps = torch.randn(1, 4, 8, 8, generator=g)
    probs = (3 * torch.randn(2, 2, 4, 4, generator=g)).softmax(-1)  # (uncond+cond rows, heads, q, k), 2x2 grid
    calls: list[tuple] = []

    def run_one(x, t, conditioning, negative):
        calls.append((conditioning, negative, x.clone(), attention.identity))
        return perturbed if not negative else sag_eps

    attention = MidAttention()
    attention.record = True
    attention.maps = [probs]
    pag = {"scale": 3.0, "attenuation": 10.0, "start_step": 0.0, "end_step": 1.0}
    sag = {"scale": 0.7, "blur_sigma": 2.0, "threshold": 1.0}
    guide = PassGuidance(_Levels(alpha), None, pag, sag, attention)
    out = guide.combine(x_in, torch.tensor(500.0), "cond", "uncond", u, c, cfg, run_one)

    def x0(eps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x - s1a * eps) / sa

    u0, c0 = x0(u, x_in), x0(c, x_in)
    expected = u0 + cfg * (c0 - u0)
    expected = expected + (c0 - x0(perturbed, x_in)) * 3.0  # PAG, on the prompt with identity attention
    # SAG: blur where the uncond map's received attention (head mean, summed over queries) > threshold
    mask = (probs[:1].mean(1).sum(1) > 1.0).float().reshape(1, 1, 2, 2)
    mask = torch.nn.functional.interpolate(mask, (8, 8))
    k = torch.exp(-0.5 * (torch.arange(-4.0, 5.0) / 2.0) ** 2)
    k = k / k.sum()
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(u0, [4] * 4, mode="reflect"),
                                         (k[:, None] * k[None, :]).expand(4, 1, 9, 9), groups=4)
    degraded = blurred * mask + u0 * (1 - mask)
    noised = x_in + sa * (degraded - u0)
    expected = expected + (degraded - x0(sag_eps, noised)) * 0.7
    assert torch.allclose(out, (x_in - sa * expected) / s1a, atol=1e-4)
    (pag_cond, pag_neg, pag_x, pag_identity), (sag_cond, sag_neg, sag_x, _) = calls
    assert (pag_cond, pag_neg, pag_identity) == ("cond", False, True) and torch.equal(pag_x, x_in)
    assert (sag_cond, sag_neg) == ("uncond", True) and torch.allclose(sag_x, noised, atol=1e-6)
    assert 0 < float(mask.mean()) < 1  # the map did mask part of the latent
    assert guide.pag_scale == pytest.approx(3.0 - 0.3)  # attenuation: 10% of the scale per call


# --- whole jobs ---------------------------------------------------------------------------------------------

SCRIPTS = {
    "freeu": ("FreeU Integrated (SD 1.x, SD 2.x, SDXL)", [True, 1.3, 1.4, 0.9, 0.2, 0.0, 1.0]),
    "sag": ("SelfAttentionGuidance Integrated (SD 1.x, SD 2.x, SDXL)", [True, 0.8, 2.0, 0.5]),
    "pagi": ("PerturbedAttentionGuidance Integrated", [True, 3.0, 0.0, 0.0, 1.0]),
    "dynthres": ("DynamicThresholding (CFG-Fix) Integrated", [True, 3.0, 0.95]),
}


@pytest.mark.parametrize("prefix", list(SCRIPTS))
def test_each_script_changes_the_image_reproducibly_and_writes_forges_keys(env: Env, prefix: str) -> None:
    title, args = SCRIPTS[prefix]
    off = _run(env, {})
    on = _run(env, {title: {"args": args}})
    again = _run(env, {title: {"args": args}})
    assert np.abs(pixels(on.images[0]) - pixels(off.images[0])).mean() > 0.5
    assert np.array_equal(pixels(on.images[0]), pixels(again.images[0]))
    params = infotext_params(on.infotexts[0])
    assert params[f"{prefix}_enabled"] == "True"
    assert not any(k.startswith(prefix + "_") for k in infotext_params(off.infotexts[0]))


def test_sag_and_pag_cost_one_more_unet_call_per_step(env: Env) -> None:
    off = _run(env, {})
    on = _run(env, {SCRIPTS["sag"][0]: {"args": SCRIPTS["sag"][1]}, SCRIPTS["pagi"][0]: {"args": SCRIPTS["pagi"][1]}})
    assert on.unet_calls == off.unet_calls  # steps: the loop's count; the extra calls are inside each step
    assert on.images[0].tobytes() != off.images[0].tobytes()


def test_the_scripts_compose_with_the_hires_pass_and_tiled_diffusion(env: Env) -> None:
    everything = {title: {"args": args} for title, args in SCRIPTS.values()}
    tiles = {"MultiDiffusion Integrated": {"args": [True, "MultiDiffusion", 64, 64, 32, 2]}}
    hires = {"enable_hr": True, "hr_scale": 2, "width": 64, "height": 64, "hr_upscaler": "Latent", "steps": 2}
    plain = _run(env, tiles, **hires)
    both = _run(env, {**everything, **tiles}, **hires)
    again = _run(env, {**everything, **tiles}, **hires)
    assert both.images[0].size == (128, 128)
    assert np.array_equal(pixels(both.images[0]), pixels(again.images[0]))
    assert np.abs(pixels(both.images[0]) - pixels(plain.images[0])).mean() > 0.5
    params = infotext_params(both.infotexts[0])
    assert params["multidiffusion_tile_width"] == "64" and params["freeu_b1"] == "1.3"


def test_sag_is_skipped_at_cfg_1_as_forge_does(env: Env) -> None:
    title, args = SCRIPTS["sag"]
    off = _run(env, {}, cfg_scale=1.0)
    on = _run(env, {title: {"args": args}}, cfg_scale=1.0)
    assert on.images[0].tobytes() == off.images[0].tobytes()
    assert "sag_enabled" not in infotext_params(on.infotexts[0])


def test_never_oom_tiles_the_vae_and_turns_the_unets_automatic_tiles_on(env: Env) -> None:
    from tests.conftest import count_vae

    big = {"width": 576, "height": 576, "steps": 1}  # 72 latent cells: more than one 64-cell VAE tile
    model = env.model()
    with count_vae(model) as plain:
        _run(env, {}, **big)
    with count_vae(model) as tiled:
        _run(env, {"Never OOM Integrated": {"args": [False, True]}}, **big)
    assert plain["decode"] == 1 and tiled["decode"] > 1
    # the UNet switch: a pass over the memory budget runs in tiles even with the automatic tiling off
    tight = {"tiled_diffusion_auto": False, "tiled_diffusion_auto_budget_mb": 1}
    off = _run(env, {}, options=tight, steps=1, width=256, height=256)  # ~6 MiB per UNet call
    on = _run(env, {"Never OOM Integrated": {"args": [True, False]}}, options=tight, steps=1, width=256, height=256)
    assert "Tiled Diffusion" not in infotext_params(off.infotexts[0])
    assert infotext_params(on.infotexts[0])["Tiled Diffusion"] == "auto"


@pytest.fixture(scope="module")
def xl_env(tmp_path_factory) -> Env:
    from pipeline.models.checkpoints import CheckpointRegistry
    from pipeline.models.manager import ModelManager
    from tests.fixtures.tinymodels import build_tiny_refiner, build_tiny_sdxl
    from upscalers.registry import UpscalerRegistry

    root = tmp_path_factory.mktemp("models-forge-xl")
    work = tmp_path_factory.mktemp("forge-xl-build")
    build_tiny_sdxl(work).write_safetensors(root / "Stable-diffusion" / "tiny-xl-base.safetensors")
    build_tiny_refiner(work).write_safetensors(root / "Stable-diffusion" / "tiny-xl-refiner.safetensors")
    mm = ModelManager(CheckpointRegistry(root, root / "data"), torch.device("cpu"), torch.float32, max_loaded=2)
    env = Env(mm, UpscalerRegistry(root))
    env.options["sd_model_checkpoint"] = "tiny-xl-base.safetensors"
    return env


def test_sdxl_with_the_refiner_keeps_the_scripts_in_the_refiners_steps(xl_env: Env) -> None:
    from tests.conftest import count_unet

    everything = {title: {"args": args} for title, args in SCRIPTS.values()}
    job = {"steps": 4, "cfg_scale": 5.0, "refiner_checkpoint": "tiny-xl-refiner", "refiner_switch_at": 0.5}
    base, ref = xl_env.model("tiny-xl-base"), xl_env.model("tiny-xl-refiner")
    with count_unet(base, ref, tags=["base", "refiner"]) as plain_calls:
        plain = _run(xl_env, {}, **job)
    with count_unet(base, ref, tags=["base", "refiner"]) as calls:
        on = _run(xl_env, everything, **job)
    again = _run(xl_env, everything, **job)
    # SAG and PAG: one more UNet call each per step, in the base's steps and the refiner's
    assert calls.count("base") == 3 * plain_calls.count("base") > 0
    assert calls.count("refiner") == 3 * plain_calls.count("refiner") > 0
    assert np.array_equal(pixels(on.images[0]), pixels(again.images[0]))
    assert np.abs(pixels(on.images[0]) - pixels(plain.images[0])).mean() > 0.5
    for unet in (base.unet, ref.unet):  # the pass's patches are gone from both models
        assert not any("forward" in m.__dict__ for m in unet.modules())
        assert not any(m._forward_pre_hooks for m in unet.modules())
