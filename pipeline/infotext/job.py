"""What a job writes about itself: the infotext of each image (A1111's keys, in A1111's order) and the
`info` JSON of the response. The text format itself (quoting, parsing) is codec.py."""
from __future__ import annotations

import importlib.metadata
import json
import math
import tomllib
from pathlib import Path
from typing import Any, Protocol

from pipeline.diffusion import samplers
from pipeline.diffusion.seeds import eta_noise_seed_delta, randn_source
from pipeline.infotext.codec import format_infotext


def _version() -> str:
    """hiresd's version: the checkout's pyproject.toml (the source of truth when run from the repository),
    else the installed package's metadata."""
    try:
        pyproject = Path(__file__).parents[2] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text("utf-8"))["project"]["version"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        return importlib.metadata.version("hiresd")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# what A1111's `Version` key (its git tag, `v1.10.1`) holds here: never an A1111 version, so the back-compat
# flags A1111 derives from old versions never apply when our infotexts are posted back
VERSION = f"hiresd-{_version()}"


class ModelInfo(Protocol):
    def info(self, title: str) -> dict[str, Any]: ...


def job_infotext(p: Any, models: ModelInfo, index: int) -> str:
    """The infotext of image `index` of job `p` (a Processing)."""
    info = models.info(p.checkpoint)
    params: list[tuple[str, Any]] = [
        ("Steps", p.steps),
        ("Sampler", p.sampler.name),
        ("Schedule type", samplers.label_for_infotext(p.sampler, p.schedule)),
        ("CFG scale", p.cfg_scale),
        ("Seed", p.all_seeds[index]),
        ("Face restoration", p.face_restorer.name if p.face_restorer is not None else None),
        ("Size", f"{p.width}x{p.height}"),
        ("Model hash", info.get("hash") if p.options.get("add_model_hash_to_info", True) else None),
        ("Model", info.get("model_name") if p.options.get("add_model_name_to_info", True) else None),
        # A1111 writes both while the model's weights are float8 (option fp8_storage)
        ("FP8 weight", p.options.get("fp8_storage") if info.get("fp8") else None),
        ("Cache FP16 weight for LoRA", bool(p.options.get("cache_fp16_weight")) if info.get("fp8") else None),
        ("VAE hash", info.get("vae_hash") if p.options.get("add_vae_hash_to_info", True) else None),
        ("VAE", info.get("vae_name") if p.options.get("add_vae_name_to_info", True) else None),
    ]
    if p.subseed_strength > 0:
        params += [("Variation seed", p.all_subseeds[index]), ("Variation seed strength", p.subseed_strength)]
    if p.seed_resize_from[0] > 0 and p.seed_resize_from[1] > 0:
        params.append(("Seed resize from", f"{p.seed_resize_from[0]}x{p.seed_resize_from[1]}"))
    # A1111 writes it here from extra_generation_params (img2img and the hires pass set it), not at their end
    params.append(("Denoising strength", p.extra_generation_params.get(
        "Denoising strength", p.denoising_strength if p.enable_hr else None)))
    if p.clip_skip > 1:
        params.append(("Clip skip", p.clip_skip))
    params.append(("ENSD", ensd_for_infotext(p)))
    params.append(("Init image hash", getattr(p, "init_img_hash", None)))  # img2img with save_init_img
    source = randn_source(p.options)
    params.append(("RNG", source if source != "GPU" else None))
    if p.tiling:
        params.append(("Tiling", True))
    for key, label, default in (("s_churn", "Sigma churn", 0.0), ("s_tmin", "Sigma tmin", 0.0),
                                ("s_tmax", "Sigma tmax", 0.0), ("s_noise", "Sigma noise", 1.0)):
        value = getattr(p, key)
        if key in p.sampler.params and value is not None and value != default:
            params.append((label, value))
    eta = samplers.eta_infotext(samplers.option_eta(p.eta, p.sampler, p.options), p.sampler)
    if eta is not None:  # A1111: `Eta` / `Eta DDIM`, only when not the sampler's default
        params.append(eta)
    if p.enable_hr:
        params += _hires_params(p, models)
    params += _refiner_params(p, models)
    params += [(k, v) for k, v in p.extra_generation_params.items() if k != "Denoising strength"]
    if p.options.get("add_version_to_infotext", True):  # A1111: after extra_generation_params, before `User`
        params.append(("Version", VERSION))
    return format_infotext(p.all_prompts[index], p.all_negative_prompts[index], params)


def ensd_for_infotext(p: Any) -> int | None:
    """A1111 writes `ENSD` only for a sampler whose options say `uses_ensd` and whose eta is not 0 (the
    request's, else the option `eta_ancestral` / `eta_ddim`)."""
    ensd = eta_noise_seed_delta(p.options)
    if not ensd or p.sampler.options.get("uses_ensd") != "True":
        return None
    eta = p.eta
    if eta is None:
        eta = p.options.get("eta_ddim" if p.sampler.kind == "timesteps" else "eta_ancestral", p.sampler.eta_default)
    return None if not eta else ensd


def _refiner_params(p: Any, models: ModelInfo) -> list[tuple[str, Any]]:
    # A1111 writes the first key on every job while the option is on, refiner or not
    out: list[tuple[str, Any]] = ([("Refiner switch by sampling steps", True)]
                                  if p.options.get("refiner_switch_by_sample_steps") else [])
    if p.refiner is not None:
        info = models.info(p.refiner.checkpoint)
        name = f"{info.get('model_name')} [{info['hash']}]" if info.get("hash") else info.get("model_name")
        out += p.refiner.infotext(name, p.enable_hr, p.options)
    return out


def _hires_params(p: Any, models: ModelInfo) -> list[tuple[str, Any]]:
    """Hires keys in A1111's insertion order; each only when it says something."""
    out: list[tuple[str, Any]] = []
    if p.hr_checkpoint:
        hr = models.info(p.hr_checkpoint)
        out.append(("Hires checkpoint", hr.get("short_title") or hr.get("title")))
    if p.hr_sampler is not None and p.hr_sampler.name != p.sampler.name:
        out.append(("Hires sampler", p.hr_sampler.name))
    if p.hr_prompt and p.hr_prompt != p.prompt:
        out.append(("Hires prompt", p.hr_prompt))
    if p.hr_negative_prompt and p.hr_negative_prompt != p.negative_prompt:
        out.append(("Hires negative prompt", p.hr_negative_prompt))
    first_label = samplers.label_for_infotext(p.sampler, p.schedule)
    hr_label = samplers.label_for_infotext(p.hr_sampler, p.hr_schedule)
    if hr_label != first_label:
        out.append(("Hires schedule type", hr_label))
    out.append((p.hires.infotext_key, p.hires.infotext_value))
    if p.hr_second_pass_steps:
        out.append(("Hires steps", p.hr_second_pass_steps))
    if p.request.hr_upscaler not in (None, ""):
        out.append(("Hires upscaler", p.hr_upscaler))
    if p.hr_cfg is not None and p.hr_cfg != p.cfg_scale:
        out.append(("Hires CFG Scale", p.hr_cfg))
    return out


def job_info(p: Any, models: ModelInfo, infotexts: list[str], job_timestamp: str) -> dict[str, Any]:
    """The response's `info` object (A1111's keys) for job `p` and the infotexts of its images."""
    info = models.info(p.checkpoint)
    n = len(infotexts)
    extra = {k: (v if _jsonable(v) else None) for k, v in p.extra_generation_params.items()}
    return {
        "prompt": p.request.prompt,  # as sent: styles show in all_prompts and the infotexts, as in A1111
        "all_prompts": p.all_prompts[:n] or [p.prompt],
        "negative_prompt": p.request.negative_prompt,
        "all_negative_prompts": p.all_negative_prompts[:n] or [p.negative_prompt],
        "seed": p.seed,
        "all_seeds": p.all_seeds[:n] or [p.seed],
        "subseed": p.subseed,
        "all_subseeds": p.all_subseeds[:n] or [p.subseed],
        "subseed_strength": p.subseed_strength,
        "width": p.width,
        "height": p.height,
        "sampler_name": p.sampler.name,
        "cfg_scale": p.cfg_scale,
        "steps": p.steps,
        "batch_size": p.batch_size,
        "restore_faces": p.face_restorer is not None,
        "face_restoration_model": p.face_restorer.name if p.face_restorer is not None else None,
        "sd_model_name": info.get("model_name"),
        "sd_model_hash": info.get("hash"),
        "sd_vae_name": info.get("vae_name"),
        "sd_vae_hash": info.get("vae_hash"),
        "seed_resize_from_w": p.seed_resize_from[0],
        "seed_resize_from_h": p.seed_resize_from[1],
        "denoising_strength": p.denoising_strength,
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": p.styles,
        "job_timestamp": job_timestamp,
        "clip_skip": p.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": VERSION,
        **({"ignored_settings": list(p.ignored_settings)} if getattr(p, "ignored_settings", None) else {}),
    }


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return not (isinstance(v, float) and math.isnan(v))
    except TypeError:
        return False
