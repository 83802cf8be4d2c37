"""Same pixels as A1111: our txt2img images against an independent reference built from k-diffusion's own
samplers (the package A1111's samplers come from) with A1111's rules written out here:

- noise: one `torch.randn((4, h/8, w/8))` per image from a CPU generator seeded with the image's seed,
  scaled by the first sigma;
- model: k-diffusion's CompVisDenoiser over the UNet, with the alphas_cumprod of the training schedule
  in float32 (as the LDM checkpoint holds them); CFG as A1111's CFGDenoiser (cond and uncond in one batch,
  `uncond + (cond - uncond) * cfg_scale`);
- conditioning: CLIP's last hidden state over `[BOS] + tokens + [EOS] * padding` (77 tokens), emphasis
  weights 1 (so the mean restoration is the identity);
- schedules: Euler on the model's own discretisation (`get_sigmas(steps)`), DPM++ 2M with Karras sigmas
  between the model's smallest and largest sigma;
- 8 bits: `clamp((x + 1) / 2, 0, 1) * 255` then `astype(uint8)` (truncation).

The reference needs the test extra (`k-diffusion==0.1.1.post1` installed with --no-deps, `torchdiffeq`).
Its package `__init__` pulls training-only dependencies, so `sampling.py` and `external.py` are loaded
under a private package name pointing at the installed folder."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.models import vae_codec as vae
from tests.conftest import infotext_params
from tests.pipeline.diffusion.a1111_rng import ImageRNGReference

PROMPT = "a red fox in the snow"
SIZE = 64
STEPS = 8
CFG = 7.0
SEEDS = [1234, 1235]  # a batch takes seed, seed + 1 (A1111)


def _k_diffusion() -> types.ModuleType:
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or spec.origin is None:
        pytest.skip("k-diffusion is not installed (pip install -e .[test]; k-diffusion with --no-deps)")
    if importlib.util.find_spec("torchdiffeq") is None:
        pytest.skip("torchdiffeq is not installed (the test extra)")
    name = "_hiresd_kdiffusion_reference"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(Path(spec.origin).parent)]
        sys.modules[name] = pkg
    for sub in ("utils", "sampling", "external"):
        importlib.import_module(f"{name}.{sub}")
    return sys.modules[name]


class _CompVisUNet(torch.nn.Module):
    """What CompVisDenoiser expects of an LDM model: `alphas_cumprod` and `apply_model(x, t, cond)`."""

    def __init__(self, unet: torch.nn.Module, scheduler_config: dict, downcast: bool = False,
                 zero_snr: bool = False) -> None:
        super().__init__()
        self.unet = unet
        assert scheduler_config.get("beta_schedule", "scaled_linear") == "scaled_linear"
        start, end = scheduler_config["beta_start"], scheduler_config["beta_end"]
        n = scheduler_config["num_train_timesteps"]
        betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, 0).float()
        if downcast:  # A1111's use_downcasted_alpha_bar: the model's alphas_cumprod become float16
            self.alphas_cumprod = self.alphas_cumprod.half()
        if zero_snr:  # A1111's rescale_zero_terminal_snr_abar, written out
            root = self.alphas_cumprod.sqrt()
            root = (root - root[-1].clone()) * (root[0].clone() / (root[0].clone() - root[-1].clone()))
            self.alphas_cumprod = root ** 2
            self.alphas_cumprod[-1] = 4.8973451890853435e-08

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond).sample


def _a1111_cond(model, text: str | list[tuple[str, float]], emphasis: str = "Original") -> torch.Tensor:
    """A text, or (fragment, weight) runs as A1111's parser gives them: each run tokenized on its own, its
    tokens weighted; "Original" restores the mean after weighting, "No norm" does not."""
    tok, enc = model.tokenizers[0], model.text_encoders[0]
    runs = [(text, 1.0)] if isinstance(text, str) else text
    ids, weights = [], []
    for fragment, weight in runs:
        part = tok(fragment, truncation=False, add_special_tokens=False).input_ids
        ids += part
        weights += [weight] * len(part)
    assert len(ids) <= 75
    pad = 76 - len(ids)
    ids = [tok.bos_token_id] + ids + [tok.eos_token_id] * pad
    w = torch.tensor([1.0] + weights + [1.0] * pad)[None, :, None]
    with torch.no_grad():
        z = enc(torch.tensor([ids])).last_hidden_state
    weighted = z * w
    if emphasis == "No norm":
        return weighted
    return weighted * (z.mean() / weighted.mean())


def _sigmas(k, denoiser, sampler: str, steps: int) -> torch.Tensor:
    if sampler == "DPM2 a":  # Karras by default, and DPM2 a drops the penultimate sigma (one step more)
        s = k.sampling.get_sigmas_karras(steps + 1, float(denoiser.sigmas[0]), float(denoiser.sigmas[-1]))
        return torch.cat([s[:-2], s[-1:]])
    if sampler == "DPM++ 2M Karras":
        return k.sampling.get_sigmas_karras(steps, float(denoiser.sigmas[0]), float(denoiser.sigmas[-1]))
    return denoiser.get_sigmas(steps)  # Euler, Euler a: the model's own discretisation (A1111's Automatic)


def _sample(k, sampler: str, model_fn, x: torch.Tensor, sigmas: torch.Tensor, rng: ImageRNGReference):
    if sampler == "Euler":
        return k.sampling.sample_euler(model_fn, x, sigmas, disable=True)
    if sampler == "Euler a":  # A1111 hands k-diffusion's torch.randn_like the ImageRNG's next draw
        return k.sampling.sample_euler_ancestral(model_fn, x, sigmas, eta=1.0, noise_sampler=rng, disable=True)
    if sampler == "DPM2 a":
        return k.sampling.sample_dpm_2_ancestral(model_fn, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=rng,
                                                 disable=True)
    return k.sampling.sample_dpmpp_2m(model_fn, x, sigmas, disable=True)


def _reference(model, sampler: str, seeds: list[int], *, source: str = "CPU", ensd: int = 0,
               hires: tuple[int, float] | None = None, discard: bool = False, ngms: float = 0.0,
               prompt: str | list[tuple[str, float]] = PROMPT, emphasis: str = "Original",
               variation: tuple[list[int], float] | None = None, downcast: bool = False,
               zero_snr: bool = False, skip_early: float = 0.0) -> list[Image.Image]:
    """A1111's txt2img; `hires` (second-pass steps, denoising strength): the "Latent" (bilinear) 2x hires
    fix, pass two a fresh ImageRNG at the new size and img2img's fixed-steps tail of the schedule.
    `discard`: one step more, the penultimate sigma dropped; `ngms`: A1111's CFGDenoiser skips the
    negative prompt on odd calls (counted from 0) whose sigma is below it, the cond output standing for
    both; `prompt` as (fragment, weight) runs with the `emphasis` mode."""
    k = _k_diffusion()
    denoiser = k.external.CompVisDenoiser(_CompVisUNet(model.unet, model.scheduler_config, downcast, zero_snr))
    cond, uncond = _a1111_cond(model, prompt, emphasis), _a1111_cond(model, "")
    calls = [0]

    def cfg_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        step, calls[0] = calls[0], calls[0] + 1
        if (skip_early and step / STEPS <= skip_early) or (ngms and step % 2 and float(sigma[0]) < ngms):
            return denoiser(x, sigma, cond=cond.expand(n, -1, -1))
        out = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                       cond=torch.cat([cond.expand(n, -1, -1), uncond.expand(n, -1, -1)]))
        c, u = out[:n], out[n:]
        return u + (c - u) * CFG

    sigmas = _sigmas(k, denoiser, sampler, STEPS + 1 if discard else STEPS)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    subseeds, strength = variation or (None, 0.0)
    rng = ImageRNGReference(source, (4, SIZE // 8, SIZE // 8), seeds, ensd, subseeds, strength)
    with torch.no_grad():
        latents = _sample(k, sampler, cfg_denoiser, rng.noise() * sigmas[0], sigmas, rng)
        if hires is not None:
            steps, d = hires
            latents = torch.nn.functional.interpolate(latents, size=(SIZE // 4, SIZE // 4), mode="bilinear",
                                                      antialias=False)
            rng = ImageRNGReference(source, tuple(latents.shape[1:]), seeds, ensd, subseeds, strength)
            total = int(steps / min(d, 0.999))
            tail = _sigmas(k, denoiser, sampler, total)[total - steps:]
            latents = _sample(k, sampler, cfg_denoiser, latents + rng.noise() * tail[0], tail, rng)
        decoded = model.vae.decode(latents / model.vae.config.scaling_factor).sample
    x = torch.clamp((decoded.float() + 1.0) / 2.0, min=0.0, max=1.0)
    out = []
    for one in x:
        arr = 255.0 * np.moveaxis(one.cpu().numpy(), 0, 2)
        out.append(Image.fromarray(arr.astype(np.uint8), "RGB"))
    return out


def _assert_same(ours: list[Image.Image], expected: list[Image.Image], what: str) -> None:
    assert len(ours) == len(expected)
    for mine, ref in zip(ours, expected, strict=True):
        diff = np.abs(np.asarray(mine, dtype=np.int16) - np.asarray(ref, dtype=np.int16))
        assert diff.mean() <= 0.02, (what, diff.mean())
        assert diff.max() <= 1, (what, diff.max())


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M Karras", "Euler a", "DPM2 a"])
def test_txt2img_matches_the_k_diffusion_reference(env, sampler):
    """The issue's bar is one 8-bit level on average (mean <= 0.5); measured: mean 0.0002, max 1 (float
    summation order flips a rare pixel across a level). Rounding instead of truncating measured a mean of
    0.44 (max 1), inside that bar, so the bound here is tight enough to tell the two rules apart.
    Euler a at the defaults (`randn_source` GPU on the CPU: CPU noise, no ENSD): every step's noise is the
    next draw of the image seed's generator after the initial noise."""
    model = env.model()
    expected = _reference(model, sampler, SEEDS)
    result = env.run(prompt=PROMPT, negative_prompt="", steps=STEPS, width=SIZE, height=SIZE, seed=SEEDS[0],
                     batch_size=len(SEEDS), cfg_scale=CFG, sampler_name=sampler, enable_hr=False)
    _assert_same(result.images, expected, sampler)


@pytest.mark.parametrize(("source", "ensd", "sampler"), [("NV", 31337, "Euler a"), ("CPU", 31337, "Euler a"),
                                                       ("NV", 0, "Euler a"), ("NV", 31337, "DPM2 a")])
def test_ancestral_hires_job_with_rng_and_ensd_matches_the_reference(env, source, ensd, sampler):
    """A whole Euler a (DPM2 a) + latent hires job with `RNG: NV` / `CPU` and `ENSD: 31337`, as A1111 draws
    each pass's noise (a new ImageRNG per pass, the ENSD generators from the first step of each pass)."""
    model = env.model()
    expected = _reference(model, sampler, SEEDS, source=source, ensd=ensd, hires=(3, 0.6))
    result = env.run(options={"randn_source": source, "eta_noise_seed_delta": ensd}, prompt=PROMPT,
                     negative_prompt="", steps=STEPS, width=SIZE, height=SIZE, seed=SEEDS[0],
                     batch_size=len(SEEDS), cfg_scale=CFG, sampler_name=sampler, enable_hr=True, hr_scale=2,
                     hr_upscaler="Latent", hr_second_pass_steps=3, denoising_strength=0.6)
    _assert_same(result.images, expected, (source, ensd))
    assert result.images[0].size == (2 * SIZE, 2 * SIZE)
    params = infotext_params(result.infotexts[0])
    assert params.get("RNG") == source
    assert params.get("ENSD") == (str(ensd) if ensd else None)


def test_eight_bit_conversion_truncates_like_a1111():
    """255 * x truncated, as A1111's astype(uint8): 0.999/255 -> 0, 254.6/255 -> 254, 1 -> 255."""
    x = torch.tensor([0.999, 10.5, 127.99, 254.6, 255.0]).div(255).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    img = vae.to_images(x.clone())[0]
    assert np.asarray(img)[0, :, 0].tolist() == [0, 10, 127, 254, 255]
    clipped = vae.to_images(torch.tensor([-0.5, 1.5]).view(1, 1, 1, 2).expand(1, 3, 1, 2).clone())[0]
    assert np.asarray(clipped)[0, :, 0].tolist() == [0, 255]


@pytest.mark.parametrize(("case", "options"), [
    ("discard", {"always_discard_next_to_last_sigma": True}),
    ("ngms", {"s_min_uncond": 3.0}),
    ("no_norm", {"emphasis": "No norm"}),
    ("downcast", {"use_downcasted_alpha_bar": True}),
    ("zero_snr", {"sd_noise_schedule": "Zero Terminal SNR"}),
    ("skip_early", {"skip_early_cond": 0.4}),
])
def test_sampling_options_match_the_reference(env, case, options):
    """Discard penultimate sigma, NGMS and emphasis No norm, each against A1111's rule written out; each
    also writes its infotext key as A1111 does."""
    model = env.model()
    prompt = "a red (fox:1.4) in the [snow]" if case == "no_norm" else PROMPT
    ref_kwargs = {"discard": {"discard": True}, "ngms": {"ngms": 3.0},
                  "no_norm": {"prompt": [("a red", 1.0), ("fox", 1.4), ("in the", 1.0), ("snow", 1 / 1.1)],
                              "emphasis": "No norm"}, "downcast": {"downcast": True},
                  "zero_snr": {"zero_snr": True}, "skip_early": {"skip_early": 0.4}}[case]
    sampler = "DPM++ 2M Karras" if case in ("downcast", "zero_snr") else "Euler"  # Karras spans the (float16) sigma range
    expected = _reference(model, sampler, SEEDS, **ref_kwargs)
    result = env.run(options=options, prompt=prompt, negative_prompt="", steps=STEPS, width=SIZE, height=SIZE,
                     seed=SEEDS[0], batch_size=len(SEEDS), cfg_scale=CFG, sampler_name=sampler, enable_hr=False)
    _assert_same(result.images, expected, case)
    params = infotext_params(result.infotexts[0])
    key, value = {"discard": ("Discard penultimate sigma", "True"), "ngms": ("NGMS", "3.0"),
                  "no_norm": ("Emphasis", "No norm"), "downcast": ("Downcast alphas_cumprod", "True"),
                  "zero_snr": ("Noise Schedule", "Zero Terminal SNR"), "skip_early": ("Skip Early CFG", "0.4")}[case]
    assert params.get(key) == value
    # and the option is not ignored: the same job without it gives another image
    plain = env.run(prompt=prompt, negative_prompt="", steps=STEPS, width=SIZE, height=SIZE, seed=SEEDS[0],
                    batch_size=len(SEEDS), cfg_scale=CFG, sampler_name=sampler, enable_hr=False)
    diff = np.abs(np.asarray(plain.images[0], dtype=np.int16) - np.asarray(result.images[0], dtype=np.int16))
    assert diff.mean() > 0.1, (case, diff.mean())


def test_variation_seeds_match_the_reference(env):
    """Variation seed noise is A1111's slerp of the seed's and the subseed's noise, per (channel, column)
    vector (rng.slerp normalises along dim 1 of each image's (C, H, W) noise); with variation seeds every
    image of a batch takes the same seed and subseed + i."""
    model = env.model()
    expected = _reference(model, "Euler", [SEEDS[0]] * 2, variation=([99, 100], 0.3))
    result = env.run(prompt=PROMPT, negative_prompt="", steps=STEPS, width=SIZE, height=SIZE, seed=SEEDS[0],
                     subseed=99, subseed_strength=0.3, batch_size=2, cfg_scale=CFG, sampler_name="Euler",
                     enable_hr=False)
    _assert_same(result.images, expected, "variation seed")
