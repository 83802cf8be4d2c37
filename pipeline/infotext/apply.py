"""A request's `infotext` field, applied as A1111 v1.10's API applies it (`Api.apply_infotext`).

The text is parsed as png-info parses it (codec.parse_infotext: A1111's defaults for absent keys and the
`Version` back-compat flags). Then:

- each request field that the infotext names takes the infotext's value, unless the request set that
  field itself (explicit request fields win);
- each setting the infotext carries (`Clip skip`, `RNG`, `ENSD`, `Emphasis`, `NGMS`, `Pad conds`, ...)
  becomes an `override_settings` entry, unless the request's own `override_settings` has that key or the
  value equals the current option (A1111's `get_override_settings`).

txt2img takes A1111's txt2img paste fields (prompts, steps, sampler, schedule type, CFG, seed and
variation seed, size, batch size, hires fix, refiner). A1111 v1.10 gives its img2img paste fields no API
names, so there only the seed, steps, sampler and refiner fields act; here img2img also takes the prompts,
CFG, size, batch size, denoising strength and the inpainting fields (documented in docs/compatibility.md),
which is what a client pasting an img2img infotext expects. Pure: the server resolves names (`Model hash`)."""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

# label -> request field, for both endpoints
COMMON_FIELDS: dict[str, str] = {
    "Prompt": "prompt", "Negative prompt": "negative_prompt", "Steps": "steps", "Sampler": "sampler_name",
    "Schedule type": "scheduler", "CFG scale": "cfg_scale", "Seed": "seed", "Variation seed": "subseed",
    "Variation seed strength": "subseed_strength", "Seed resize from-1": "seed_resize_from_w",
    "Seed resize from-2": "seed_resize_from_h", "Size-1": "width", "Size-2": "height",
    "Batch size": "batch_size", "Refiner": "refiner_checkpoint", "Refiner switch at": "refiner_switch_at",
    "Tiling": "tiling",
}
TXT2IMG_FIELDS: dict[str, str] = {
    **COMMON_FIELDS, "Denoising strength": "denoising_strength", "Hires upscale": "hr_scale",
    "Hires upscaler": "hr_upscaler", "Hires steps": "hr_second_pass_steps", "Hires resize-1": "hr_resize_x",
    "Hires resize-2": "hr_resize_y", "Hires checkpoint": "hr_checkpoint_name", "Hires sampler": "hr_sampler_name",
    "Hires schedule type": "hr_scheduler", "Hires prompt": "hr_prompt",
    "Hires negative prompt": "hr_negative_prompt", "Hires CFG Scale": "hr_cfg",
}
_MASK_MODES = {"Inpaint masked": 0, "Inpaint not masked": 1}
_FILLS = {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}
_AREAS = {"Whole picture": False, "Only masked": True}
IMG2IMG_FIELDS: dict[str, str] = {
    **COMMON_FIELDS, "Denoising strength": "denoising_strength", "Image CFG scale": "image_cfg_scale",
    "Mask blur": "mask_blur", "Mask mode": "inpainting_mask_invert", "Masked content": "inpainting_fill",
    "Inpaint area": "inpaint_full_res", "Masked area padding": "inpaint_full_res_padding",
}
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "Mask mode": lambda v: _MASK_MODES.get(str(v), v), "Masked content": lambda v: _FILLS.get(str(v), v),
    "Inpaint area": lambda v: _AREAS.get(str(v), v), "Tiling": lambda v: str(v) == "True",
}

# infotext label -> A1111 option (the options' `infotext` names in A1111 v1.10's shared_options.py, and
# `infotext_to_setting_name_mapping`); only the options this server knows are applied
OPTION_LABELS: dict[str, str] = {
    "Model hash": "sd_model_checkpoint", "VAE": "sd_vae", "Clip skip": "CLIP_stop_at_last_layers",
    "ENSD": "eta_noise_seed_delta", "RNG": "randn_source", "NGMS": "s_min_uncond", "Emphasis": "emphasis",
    "Pad conds": "pad_cond_uncond", "Pad conds v0": "pad_cond_uncond_v0",
    "Discard penultimate sigma": "always_discard_next_to_last_sigma", "Schedule min sigma": "sigma_min",
    "Schedule max sigma": "sigma_max", "Schedule rho": "rho", "Beta schedule alpha": "beta_dist_alpha",
    "Beta schedule beta": "beta_dist_beta", "Beta scheduler alpha": "beta_dist_alpha",
    "Beta scheduler beta": "beta_dist_beta", "NGMS all steps": "s_min_uncond_all", "Noise multiplier": "initial_noise_multiplier",
    "Extra noise": "img2img_extra_noise", "SGM noise multiplier": "sgm_noise_multiplier",
    "Noise Schedule": "sd_noise_schedule", "Downcast alphas_cumprod": "use_downcasted_alpha_bar",
    "Old prompt editing timelines": "use_old_scheduling", "Skip Early CFG": "skip_early_cond",
    "Refiner switch by sampling steps": "refiner_switch_by_sample_steps", "Eta": "eta_ancestral",
    "Eta DDIM": "eta_ddim", "Sigma churn": "s_churn", "Sigma tmin": "s_tmin", "Sigma tmax": "s_tmax",
    "Sigma noise": "s_noise", "Token merging ratio": "token_merging_ratio",
    "Token merging ratio hr": "token_merging_ratio_hr", "UniPC variant": "uni_pc_variant",
    "UniPC skip type": "uni_pc_skip_type", "UniPC order": "uni_pc_order",
    "UniPC lower order final": "uni_pc_lower_order_final", "VAE Encoder": "sd_vae_encode_method",
    "VAE Decoder": "sd_vae_decode_method", "Conditional mask weight": "inpainting_mask_weight",
}


def request_fields(params: Mapping[str, Any], endpoint: str, set_fields: set[str]) -> dict[str, Any]:
    """The request fields an infotext's parsed `params` give an `endpoint` ("txt2img" / "img2img") request
    whose explicitly set fields are `set_fields`; values as the text has them (the schema converts)."""
    table = TXT2IMG_FIELDS if endpoint == "txt2img" else IMG2IMG_FIELDS
    out: dict[str, Any] = {}
    for label, name in table.items():
        if name in set_fields or params.get(label) is None:
            continue
        value = params[label]
        out[name] = _CONVERT[label](value) if label in _CONVERT else value
    # A1111: hires fix is on when the text has a denoising strength and any hires key (the parser always
    # fills `Hires resize-1`, so: a denoising strength)
    if endpoint == "txt2img" and "enable_hr" not in set_fields and "Denoising strength" in params:
        out["enable_hr"] = any(k in params for k in ("Hires upscale", "Hires upscaler", "Hires resize-1"))
    return out


def cast_option(default: Any, value: Any) -> Any:
    """A1111's `Options.cast_value`: the text converted to the type of the option's default."""
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value) == "True"
    if isinstance(default, int):
        return int(float(value))
    if isinstance(default, float):
        return float(value)
    return value if default is None or not isinstance(default, str) else str(value)


def option_overrides(params: Mapping[str, Any], current: Mapping[str, Any], defaults: Mapping[str, Any],
                     requested: Mapping[str, Any]) -> dict[str, Any]:
    """The settings an infotext carries, as `override_settings` entries: only options in `defaults` (name ->
    default) that the request's own `requested` overrides leave alone and whose value differs from
    `current`. A value that does not convert is left out, as A1111 leaves out what it cannot cast."""
    out: dict[str, Any] = {}
    for label, name in OPTION_LABELS.items():
        value = params.get(label)
        if value is None or name not in defaults or name in requested:
            continue
        try:
            value = cast_option(defaults[name], value)
        except (TypeError, ValueError):
            continue
        if current.get(name) != value:
            out[name] = value
    return out


_LORA_TAG = re.compile(r"<lora:([^:>]+):")


def lora_hashes(text: object) -> dict[str, str]:
    """An infotext's `Lora hashes` value (`name: hash, name2: hash`) as name -> short hash."""
    out: dict[str, str] = {}
    for item in str(text or "").split(","):
        name, sep, value = item.partition(":")
        if sep and name.strip():
            out[name.strip()] = value.strip()
    return out


def rename_loras(params: dict[str, Any], local_name: Callable[[str, str], str | None]) -> None:
    """The Lora extension's `infotext_pasted` rule: each `<lora:NAME:` of the prompt (and the hires prompt)
    whose NAME has a hash in `Lora hashes` becomes the local file that has that hash; `local_name(name,
    shorthash)` answers it (None: no such file, the tag stays)."""
    hashes = lora_hashes(params.get("Lora hashes"))
    if not hashes:
        return

    def swap(m: re.Match) -> str:
        short = hashes.get(m.group(1))
        found = local_name(m.group(1), short) if short else None
        return f"<lora:{found}:" if found else m.group(0)

    for key in ("Prompt", "Hires prompt"):
        if isinstance(params.get(key), str):
            params[key] = _LORA_TAG.sub(swap, params[key])
