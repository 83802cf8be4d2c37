"""The typed options store behind GET/POST /sdapi/v1/options, persisted atomically as JSON.

Each option has a default and a validator; a POST may send back the whole dict that GET returned (Open
WebUI does this); an unknown key or a bad value is an error naming the key and what is allowed."""
from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import ImageColor

from pipeline.models.accel.fp8 import FP8_CHOICES
from pipeline.models.networks.patch import BACKUP_DEVICES
from pipeline.runtime.errors import InvalidRequest
from server.a1111_options import a1111_defaults, unapplied_groups

Validator = Callable[[Any], Any]
# extra checks the app adds for values only it can judge (a VAE or checkpoint name): (value, field) -> value
NameChecker = Callable[[Any, str], Any]


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise ValueError("must be true or false")


def _int(lo: int, hi: int) -> Validator:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v):
            raise ValueError(f"must be an integer from {lo} to {hi}")
        if not lo <= int(v) <= hi:
            raise ValueError(f"must be from {lo} to {hi}")
        return int(v)
    return check


def _float(lo: float, hi: float) -> Validator:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise ValueError(f"must be a number from {lo} to {hi}")
        if not lo <= float(v) <= hi:
            raise ValueError(f"must be from {lo} to {hi}")
        return float(v)
    return check


def _number(lo: float, hi: float) -> Validator:
    """A number field (an int stays an int, as A1111 stores it)."""
    def check(v: Any) -> float | int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise ValueError(f"must be a number from {lo:g} to {hi:g}")
        if not lo <= v <= hi:
            raise ValueError(f"must be from {lo:g} to {hi:g}")
        return v
    return check


def _choice(*choices: str) -> Validator:
    def check(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}")
        return str(v)
    return check


def _str(v: Any) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ValueError("must be a string")
    return v


def _color(v: Any) -> str:
    s = _str(v)
    try:
        ImageColor.getrgb(s)
    except ValueError:
        raise ValueError("must be a colour such as #ffffff") from None
    return s


def _str_or_none(v: Any) -> str | None:
    return None if v is None else _str(v)


def _str_list(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ValueError("must be a list of strings")
    return list(v)


def _like(default: Any) -> Validator:
    """The check of an option this server accepts without applying it: a value of the type of A1111's
    default (numbers as numbers, lists as lists; None takes anything, as A1111 stores it)."""
    if isinstance(default, bool):
        return _bool
    if isinstance(default, (int, float)):
        def number(v: Any) -> Any:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                raise ValueError("must be a number")
            return v
        return number
    if isinstance(default, str):
        return _str
    if isinstance(default, list):
        def a_list(v: Any) -> list[Any]:
            if not isinstance(v, list):
                raise ValueError("must be a list")
            return list(v)
        return a_list
    return lambda v: v


_TAESD_HELP = ("TAESD: A1111's taesd(xl)_decoder/encoder.pth under <models>/VAE-taesd; without the file the "
               "full VAE, said in the log and the infotext")
_OUTDIR_HELP = ("relative paths: under --outputs-dir; A1111's default `outputs/<name>` (relative to its data "
                "folder) names the same folder as `<name>` here")


def _outdir(name: str) -> Validator:
    """An output folder option: A1111's default (`outputs/<name>`, under A1111's data folder) is this
    server's default `<name>` (under --outputs-dir), so an A1111 options blob saves where it did."""
    def check(v: Any) -> str:
        s = _str(v)
        return name if s.replace("\\", "/") == f"outputs/{name}" else s
    return check


@dataclass(frozen=True)
class Option:
    default: Any
    check: Validator
    help: str = ""


OPTIONS: dict[str, Option] = {
    "sd_model_checkpoint": Option("", _str, "checkpoint title; setting it loads that model"),
    "sd_checkpoint_hash": Option("", _str, "sha256 of the loaded checkpoint (informational)"),
    "sd_vae": Option("Automatic", _str, "VAE file name under <models>/VAE, 'Automatic' or 'None'"),
    "sd_vae_overrides_per_model_preferences": Option(True, _bool, "a chosen sd_vae (not Automatic) beats the "
                                                     "checkpoint's own preference: its user metadata "
                                                     "(<checkpoint>.json \"vae\") or a VAE named after it"),
    "fp8_storage": Option("Disable", _choice(*FP8_CHOICES), "UNet and text-encoder Linear/Conv2d weights "
                          "stored in float8 (e4m3fn), cast up per layer call: Enable, Enable for SDXL (SDXL "
                          "models only) or Disable; a change reloads the model (infotext `FP8 weight`)"),
    "cache_fp16_weight": Option(False, _bool, "with fp8_storage, keep float16 copies of the weights (CPU) "
                                "that LoRAs are merged onto (infotext `Cache FP16 weight for LoRA`)"),
    "auto_vae_precision": Option(True, _bool, "a VAE decode that comes out all NaN (half precision "
                                 "overflowed) is run again with the VAE in float32, kept from then on"),
    "auto_vae_precision_bfloat16": Option(False, _bool, "the same in bfloat16; wins over auto_vae_precision"),
    "sd_checkpoints_limit": Option(1, _int(1, 10), "how many checkpoints stay loaded (a refiner or hires "
                                   "checkpoint counts); past it the least recently used is dropped"),
    "sd_checkpoints_keep_in_cpu": Option(True, _bool, "with sd_checkpoints_limit above 1, the loaded "
                                         "checkpoints not in use wait in CPU memory, off the GPU"),
    "CLIP_stop_at_last_layers": Option(1, _int(1, 12), "CLIP skip"),
    "samples_format": Option("png", _choice("png", "jpg", "jpeg", "webp"), "format of returned/saved images"),
    "jpeg_quality": Option(80, _int(1, 100)),
    "webp_lossless": Option(False, _bool, "WEBP images (samples_format webp) are written lossless, "
                            "returned and saved"),
    "enable_pnginfo": Option(True, _bool, "write the infotext into images"),
    "add_model_hash_to_info": Option(True, _bool),
    "add_model_name_to_info": Option(True, _bool),
    "add_vae_hash_to_info": Option(True, _bool),
    "add_vae_name_to_info": Option(True, _bool),
    "save_incomplete_images": Option(False, _bool, "save interrupted/skipped results when save_images is on"),
    "ESRGAN_tile": Option(192, _int(0, 4096), "upscaler tile size in pixels; 0 = no tiling"),
    "ESRGAN_tile_overlap": Option(8, _int(0, 512), "upscaler tile overlap in pixels"),
    "DAT_tile": Option(192, _int(0, 4096), "DAT upscalers' tile size in pixels (0 = no tiling)"),
    "DAT_tile_overlap": Option(8, _int(0, 512), "DAT upscalers' tile overlap in pixels"),
    "SWIN_tile": Option(192, _int(0, 4096), "SwinIR tile size (used after an out-of-memory error)"),
    "SWIN_tile_overlap": Option(8, _int(0, 512), "SwinIR upscalers' tile overlap in pixels"),
    "live_previews_enable": Option(True, _bool),
    "live_previews_image_format": Option("png", _choice("png", "jpeg", "webp"), "the format of the live "
                                         "previews POST /internal/progress sends (a data: URL)"),
    "show_progress_every_n_steps": Option(10, _int(-1, 1000), "live preview every N steps (-1/0: off)"),
    "show_progress_type": Option("Approx NN", _choice("Full", "Approx NN", "Approx cheap", "TAESD"),
                                 "Approx NN from <models>/VAE-approx (A1111's model.pt / vaeapprox-sdxl.pt), "
                                 "TAESD from <models>/VAE-taesd; without the file, and for Full, 'Approx "
                                 "cheap' (logged once)"),
    "live_preview_content": Option("Prompt", _choice("Prompt", "Negative prompt", "Combined"),
                                   "what live previews show: the prompt's prediction, the negative "
                                   "prompt's, or the guided (combined) one"),
    "list_hidden_files": Option(True, _bool, "model listings (checkpoints, LoRA, upscalers, face restorers) "
                                "include the files in folders whose names start with '.'; read when a "
                                "folder is scanned"),
    "show_progress_grid": Option(True, _bool, "a live preview of a batch is a grid of every image's preview "
                                 "(laid out by n_rows as A1111's image_grid); off: the first image's"),
    "samples_save": Option(True, _bool),
    "save_txt": Option(False, _bool, "saved images get their infotext beside them as <name>.txt"),
    "save_to_dirs": Option(True, _bool, "saved images go into a folder per date (off: straight into the "
                           "output folder)"),
    "save_images_before_highres_fix": Option(False, _bool, "hires fix with save_images: the first-pass "
                                             "images are saved too (`-before-highres-fix`)"),
    "outdir_samples": Option("", _str, "if set, all images go here (relative paths: under --outputs-dir)"),
    "outdir_txt2img_samples": Option("txt2img-images", _outdir("txt2img-images"), _OUTDIR_HELP),
    "outdir_extras_samples": Option("extras-images", _outdir("extras-images"), "no effect: A1111's API "
                                    "extras never save (save_output=False); " + _OUTDIR_HELP),
    "outdir_img2img_samples": Option("img2img-images", _outdir("img2img-images"), _OUTDIR_HELP),
    "img2img_fix_steps": Option(False, _bool, "img2img runs exactly `steps` steps, not int(denoising * steps) + 1"),
    "initial_noise_multiplier": Option(1.0, _float(0, 1.5), "img2img: scales the seeded noise"),
    "upscaler_for_img2img": Option(None, _str_or_none, "img2img resize upscaler (null: Lanczos)"),
    "img2img_background_color": Option("#ffffff", _str, "img2img: transparent init pixels are flattened onto it"),
    "inpainting_mask_weight": Option(1.0, _float(0, 1), "9-channel inpainting models: masked-image strength"),
    "overlay_inpaint": Option(True, _bool, "inpainting: paste the original pixels back outside the mask"),
    "eta_ancestral": Option(1.0, _float(0, 10)),
    "eta_ddim": Option(0.0, _float(0, 10)),
    "s_churn": Option(0.0, _float(0, 100)),
    "s_tmin": Option(0.0, _float(0, 1000)),
    "s_tmax": Option(0.0, _float(0, 1000)),
    "s_noise": Option(1.0, _float(0, 10)),
    "sdxl_crop_top": Option(0, _int(0, 16384), "SDXL: crop top coordinate (micro-conditioning)"),
    "sdxl_crop_left": Option(0, _int(0, 16384), "SDXL: crop left coordinate (micro-conditioning)"),
    "sdxl_refiner_high_aesthetic_score": Option(6.0, _float(0, 10), "SDXL refiner: aesthetic score of the prompt"),
    "sdxl_refiner_low_aesthetic_score": Option(2.5, _float(0, 10), "SDXL refiner: aesthetic score of the negative"),
    "hires_fix_refiner_pass": Option("second pass", _choice("first pass", "second pass", "both passes"),
                                     "hires fix: the passes in which the refiner may take over"),
    "refiner_switch_by_sample_steps": Option(False, _bool, "refiner_switch_at counts sampling steps, not noise"),
    "hypertile_enable_unet": Option(False, _bool, "Hypertile: tiled self-attention in the UNet, every pass"),
    "hypertile_enable_unet_secondpass": Option(False, _bool, "Hypertile on the hires pass only"),
    "hypertile_max_depth_unet": Option(3, _int(0, 3), "Hypertile: deepest UNet level tiled"),
    "hypertile_max_tile_unet": Option(256, _int(0, 512), "Hypertile: largest tile side in pixels"),
    "hypertile_swap_size_unet": Option(3, _int(0, 64), "Hypertile: how many tile counts a call draws from"),
    "hypertile_enable_vae": Option(False, _bool, "Hypertile for the VAE decoder's attention"),
    "hypertile_max_depth_vae": Option(3, _int(0, 3)),
    "hypertile_max_tile_vae": Option(128, _int(0, 512)),
    "hypertile_swap_size_vae": Option(3, _int(0, 64)),
    "token_merging_ratio": Option(0.0, _float(0, 0.9), "ToMe: share of tokens merged before self-attention"),
    "token_merging_ratio_img2img": Option(0.0, _float(0, 0.9), "ToMe ratio for img2img (0: token_merging_ratio)"),
    "token_merging_ratio_hr": Option(0.0, _float(0, 0.9), "ToMe ratio for the hires pass (0: token_merging_ratio)"),
    "face_restoration": Option(False, _bool),
    "face_restoration_model": Option("CodeFormer", _str_or_none, "the restorer restore_faces uses (else the "
                                     "first one available)"),
    "code_former_weight": Option(0.5, _float(0, 1)),
    "upscaling_max_images_in_cache": Option(5, _int(0, 100), "extras: the last N upscales (same pixels, "
                                            "upscaler and size: A1111's key, without the tile options) "
                                            "answer an identical later one; 0: none kept"),
    "postprocessing_operation_order": Option([], _str_list, "extras: the operations named here run first, "
                                             "in this order ('Upscale', 'GFPGAN', 'CodeFormer'; A1111's "
                                             "postprocessing script names), the others after them in A1111's "
                                             "order (Upscale, GFPGAN, CodeFormer); other names are ignored"),
    "postprocessing_disable_in_extras": Option([], _str_list, "extras: the operations named here ('Upscale', "
                                               "'GFPGAN', 'CodeFormer') do not run, whatever a request asks; "
                                               "other names are ignored"),
    "face_restoration_unload": Option(False, _bool, "after each use the face restoration model leaves the "
                                      "GPU for CPU memory (back on its next use)"),
    "realesrgan_enabled_models": Option(["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"], _str_list),
    "sd_vae_encode_method": Option("Full", _choice("Full", "TAESD"), _TAESD_HELP),
    "sd_vae_decode_method": Option("Full", _choice("Full", "TAESD"), _TAESD_HELP),
    "sd_lora": Option("None", _str, "a LoRA's name (file name without extension): '<lora:NAME:M>' is added "
                      "to every prompt that does not name it already (M: extra_networks_default_multiplier); "
                      "'None' or a name no LoRA file has: nothing"),
    "extra_networks_default_multiplier": Option(1.0, _number(-10, 10), "the multiplier of sd_lora's LoRA "
                                                "(a tag without a multiplier still means 1)"),
    "lora_add_hashes_to_infotext": Option(True, _bool, "write `Lora hashes` into the infotext"),
    "textual_inversion_add_hashes_to_infotext": Option(True, _bool, "write `TI hashes` into the infotext"),
    "lora_bundled_ti_to_infotext": Option(True, _bool, "an embedding bundled in a LoRA file is listed in `TI "
                                          "hashes` with the LoRA's name (else with an empty value)"),
    "lora_functional": Option(False, _bool, "LoRAs are added to their layers' outputs on every call instead "
                              "of merged into the weights (A1111's old method: slower with several; results "
                              "equal up to rounding)"),
    "lora_in_memory_limit": Option(0, _int(0, 1000), "how many parsed LoRA files stay in memory at most "
                                   "(the set in use always; 0: only lora_cache_mb bounds them)"),
    "lora_cache_mb": Option(1024, _int(0, 1 << 20), "MiB of parsed LoRA files kept in memory (least recently "
                            "used out; 0 keeps only the files of the set in use)"),
    "lora_backup_device": Option("auto", _choice(*BACKUP_DEVICES), "where the pristine copies of the "
                                 "weights a LoRA patches are kept: auto (on the CPU when the GPU would keep "
                                 "under half its memory free), device (beside the weights: fastest switch) "
                                 "or cpu (as A1111)"),
    "tiled_diffusion_auto": Option(True, _bool, "sample a pass in tiles when it would not fit in memory "
                                   "(infotext `Tiled Diffusion: auto`)"),
    "tiled_diffusion_auto_budget_mb": Option(0, _int(0, 1 << 24), "MiB one UNet call of a pass may use before "
                                             "it is tiled automatically (0: the device's free memory)"),
    # issue 26: LDSR
    "ldsr_steps": Option(100, _int(1, 200), "LDSR: DDIM steps per upscale (A1111's slider, 1 to 200)"),
    "ldsr_cached": Option(False, _bool, "LDSR: keep the model in memory between uses (else read from disk "
                          "for each)"),
    # issue 19: A1111's options applied here
    "enable_prompt_comments": Option(True, _bool, "strip `# ...` comments from prompts (A1111's Comments)"),
    "tiling": Option(False, _bool, "the default of a request's null `tiling`"),
    "img2img_extra_noise": Option(0.0, _float(0, 1), "extra noise on the start of img2img and the hires pass "
                                  "(infotext `Extra noise`)"),
    "use_old_hires_fix_width_height": Option(False, _bool, "hires fix: width/height are the final size, the "
                                             "first pass about 512x512 (A1111's compatibility option)"),
    # issue 20: noise sources, ENSD and the options that shape sampling (see docs/generation.md)
    "randn_source": Option("GPU", _choice("GPU", "CPU", "NV"), "where noise is drawn: GPU (the sampling "
                           "device's generator), CPU, or NV (NVIDIA's numbers on any device); infotext `RNG`"),
    "eta_noise_seed_delta": Option(0, _int(-(1 << 32), 1 << 32), "ENSD: the samplers' own noise comes from "
                                   "seed + this (0: from the seed's generator)"),
    "always_discard_next_to_last_sigma": Option(False, _bool, "k-diffusion samplers: drop the schedule's "
                                                "penultimate sigma (infotext `Discard penultimate sigma`)"),
    "sigma_min": Option(0.0, _float(0, 1000), "schedules with a function: lowest sigma (0: the model's)"),
    "sigma_max": Option(0.0, _float(0, 1000), "schedules with a function: highest sigma (0: the model's)"),
    "rho": Option(0.0, _float(0, 100), "Karras / Polyexponential rho (0: the schedule's default)"),
    "use_old_karras_scheduler_sigmas": Option(False, _bool, "schedule end points 0.1 and 10 (A1111 < 1.3)"),
    "beta_dist_alpha": Option(0.6, _float(0, 1), "Beta schedule: alpha"),
    "beta_dist_beta": Option(0.6, _float(0, 1), "Beta schedule: beta"),
    "sgm_noise_multiplier": Option(False, _bool, "k-diffusion samplers: initial noise times sqrt(1 + sigma^2) "
                                   "(the official SDXL code), not sigma"),
    "use_downcasted_alpha_bar": Option(False, _bool, "the model's alphas_cumprod in float16, as A1111 before "
                                       "1.7.0-225 sampled (infotext `Downcast alphas_cumprod`)"),
    "sd_noise_schedule": Option("Default", _choice("Default", "Zero Terminal SNR"), "Zero Terminal SNR: the "
                                "model's alphas_cumprod rescaled to end at ~0 (for models trained so)"),
    "use_old_scheduling": Option(False, _bool, "prompt editing: below 1 a fraction, else a step; the hires "
                                 "pass from 0 (A1111 before 1.6; infotext `Old prompt editing timelines`)"),
    "emphasis": Option("Original", _choice("Original", "No norm", "Ignore", "None"), "prompt (weight:1.1) "
                       "syntax: Original (weights, then the mean restored), No norm, Ignore (no weights), None "
                       "(no parsing)"),
    "s_min_uncond": Option(0.0, _float(0, 15), "NGMS: skip the negative prompt on every other step below this "
                           "sigma (0: off)"),
    "s_min_uncond_all": Option(False, _bool, "NGMS on every step, not every other one"),
    "skip_early_cond": Option(0.0, _float(0, 1), "no negative prompt on the first part of each pass (this "
                              "fraction of its model calls; infotext `Skip Early CFG`)"),
    "pad_cond_uncond": Option(False, _bool, "pad prompt / negative prompt to the same length with empty chunks"),
    "pad_cond_uncond_v0": Option(False, _bool, "the pre-1.6 padding: repeat (or cut) the negative prompt's "
                                 "last vector; overrides pad_cond_uncond"),
    "img2img_color_correction": Option(False, _bool, "img2img: match each result's colours to its init image "
                                       "(L*a*b* histograms, keeping the result's luminosity)"),
    "save_images_before_color_correction": Option(False, _bool, "img2img with save_images and colour correction: "
                                                  "the uncorrected images are saved too "
                                                  "(`-before-color-correction`)"),
    "return_grid": Option(True, _bool, "with save_images, a job of several images answers a grid of them first "
                          "in `images` (A1111's API rule)"),
    "grid_only_if_multiple": Option(True, _bool, "no grid for a job of one image"),
    "n_rows": Option(-1, _int(-1, 16), "grid rows: -1 about the square root, 0 the batch size"),
    "grid_prevent_empty_spots": Option(False, _bool, "n_rows -1: rows that divide the image count"),
    "grid_background_color": Option("#ffffff", _color, "the grid's background, around smaller images"),
    "grid_save": Option(True, _bool, "with save_images, a job's grid is also saved as grid-NNNN"),
    "grid_format": Option("png", _choice("png", "jpg", "jpeg", "webp"), "file format of saved grids"),
    "grid_save_to_dirs": Option(True, _bool, "saved grids go into a folder per date"),
    "outdir_grids": Option("", _str, "if set, all grids go here (relative paths: under --outputs-dir)"),
    "outdir_txt2img_grids": Option("txt2img-grids", _outdir("txt2img-grids"), _OUTDIR_HELP),
    "outdir_img2img_grids": Option("img2img-grids", _outdir("img2img-grids"), _OUTDIR_HELP),
    "hires_fix_use_firstpass_conds": Option(False, _bool, "hires fix: the second pass's prompt is encoded with the "
                                            "first pass's networks (LoRA text-encoder weights) applied"),
    "uni_pc_variant": Option("bh1", _choice("bh1", "bh2", "vary_coeff"), "UniPC's update: bh1 or bh2 (vary_coeff "
                             "is a 4xx when UniPC runs: not implemented here)"),
    "uni_pc_skip_type": Option("time_uniform", _choice("time_uniform", "time_quadratic", "logSNR"),
                               "UniPC: how its steps are spaced"),
    "uni_pc_order": Option(3, _int(1, 50), "UniPC's order"),
    "uni_pc_lower_order_final": Option(True, _bool, "UniPC: lower orders for the last steps"),
    # saved files' names and folders, as A1111's save_image (server/filenames.py, server/saving.py)
    "samples_filename_pattern": Option("", _str, "saved images' names: [seed], [prompt_words], [datetime<%Y>], "
                                       "... (empty: [seed], or [seed]-[prompt_spaces] with save_to_dirs off); "
                                       "a / or \\ of the pattern's own text becomes _"),
    "save_images_add_number": Option(True, _bool, "saved names start with the next number NNNNN- (always so "
                                     "when the pattern gives an empty name)"),
    "save_images_replace_action": Option("Replace", _choice("Replace", "Add number suffix"), "without "
                                         "save_images_add_number: a file of the same name is replaced, or the "
                                         "new one is named <name>-1, <name>-2, ..."),
    "directories_filename_pattern": Option("[date]", _str, "with save_to_dirs / grid_save_to_dirs: the "
                                           "folder's pattern (empty: [prompt_words]); `..` parts are dropped, "
                                           "so files stay under the output folder"),
    "save_images_before_face_restoration": Option(False, _bool, "restore_faces with save_images: the images "
                                                  "before restoration are saved too "
                                                  "(`-before-face-restoration`)"),
    "return_mask": Option(False, _bool, "inpainting: each result is followed in `images` by its mask as "
                          "applied (RGB, white = repainted; no infotext of its own)"),
    "return_mask_composite": Option(False, _bool, "inpainting: each result is followed in `images` by the "
                                    "sample cut to the mask (RGBA, transparent outside it; no infotext)"),
    "save_mask": Option(False, _bool, "inpainting with save_images: each result's mask is saved too "
                        "(`-mask`)"),
    "save_mask_composite": Option(False, _bool, "inpainting with save_images: each result's sample cut to "
                                  "the mask is saved too (`-mask-composite`)"),
    "save_init_img": Option(False, _bool, "img2img: each init image is saved as <md5>.png in "
                            "outdir_init_images (whether or not save_images; infotext `Init image hash`)"),
    "outdir_init_images": Option("init-images", _outdir("init-images"), _OUTDIR_HELP),
    "directories_max_prompt_words": Option(8, _int(1, 20), "words [prompt_words] takes from the prompt"),
    "grid_extended_filename": Option(False, _bool, "saved grids are named grid-NNNN-<samples_filename_pattern> "
                                     "(first seed and prompt)"),
    "export_for_4chan": Option(True, _bool, "a saved image over img_downscale_threshold MB or with a side over "
                               "target_side_length also gets a JPEG copy <name>.jpg (downscaled to that side)"),
    "img_downscale_threshold": Option(4.0, _number(0, 1e6), "export_for_4chan: file size in MB above which the "
                                      "JPEG copy is written"),
    "target_side_length": Option(4000, _number(1, 1e6), "export_for_4chan: longest side in pixels of the JPEG "
                                 "copy (larger images are downscaled to it)"),
    "auto_backcompat": Option(True, _bool, "an infotext's A1111 `Version` older than 1.6 / 1.7.0-225 / "
                              "1.8 turns on the matching compatibility keys when it is read (png-info, the "
                              "infotext field)"),
    "add_version_to_infotext": Option(True, _bool, "infotexts end with `Version: hiresd-<version>` (A1111 "
                                      "writes its own, e.g. v1.10.1); ignored when posted back"),
    "api_enable_requests": Option(True, _bool, "an image field may hold an http(s) URL: the server fetches "
                                  "it (off: a URL is a 400)"),
    "api_forbid_local_requests": Option(True, _bool, "image URLs whose host resolves to a local or private "
                                        "address (any of its addresses) are refused with a 400"),
    "api_useragent": Option("", _str, "User-Agent header of image URL fetches (empty: httpx's own)"),
    # sampling, text encoding and attention numerics
    "enable_quantization": Option(False, _bool, "k-diffusion samplers: the UNet is called with the nearest "
                                  "whole training timestep, not the interpolated one"),
    "comma_padding_backtrack": Option(20, _int(0, 74), "prompt chunks of 75 tokens: words after a comma "
                                      "within this many tokens of the end move to the next chunk (0: off)"),
    "sdxl_clip_l_skip": Option(False, _bool, "SDXL: CLIP skip (CLIP_stop_at_last_layers) applies to the "
                               "CLIP-L encoder (at 1: its last layer, not its penultimate)"),
    "no_dpmpp_sde_batch_determinism": Option(False, _bool, "Brownian-noise samplers (DPM++ SDE, 2M/3M SDE): "
                                             "one noise tree for the whole batch, not one per image seed"),
    "use_old_emphasis_implementation": Option(False, _bool, "SD 1.x: A1111's old prompt encoding (one "
                                              "chunk of 75 tokens, bracket tokens weight what follows, no "
                                              "(word:1.2) weights); a 400 on SD 2.x/SDXL, where A1111 fails"),
    "upcast_attn": Option(False, _bool, "the UNet's self- and cross-attention (refiner's too) compute in "
                          "float32 on a fp16/bf16 model, cast back before the output projection; no effect "
                          "on a float32 model"),
}
# every other A1111 v1.10 option: accepted with A1111's default and a check of its type, changing nothing
# here (server/a1111_options.py says why, group by group)
for _reason, _group in unapplied_groups():
    for _name, _default in _group.items():
        OPTIONS.setdefault(_name, Option(_default, _like(_default), _reason))
# names A1111 has that a check above must accept at A1111's default
A1111_DEFAULTS = a1111_defaults()


class OptionsStore:
    """Current option values; `path` is rewritten atomically (temp file + rename) on every change."""

    def __init__(self, path: Path, checkers: dict[str, NameChecker] | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._extra = checkers or {}
        self._values = {k: o.default for k, o in OPTIONS.items()}
        if path.exists():
            try:
                saved = json.loads(path.read_text("utf-8"))
                for k, v in saved.items():
                    if k in OPTIONS:
                        try:
                            self._values[k] = OPTIONS[k].check(v)
                        except ValueError:
                            pass
            except (OSError, ValueError):
                pass

    def all(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def get(self, key: str) -> Any:
        with self._lock:
            return self._values[key]

    def validate(self, changes: dict[str, Any], field: str = "options") -> dict[str, Any]:
        """Checked copies of `changes`; raises InvalidRequest naming the first bad key."""
        out = {}
        for k, v in changes.items():
            if k not in OPTIONS:
                raise InvalidRequest(f"{field}.{k}", "unknown option; GET /sdapi/v1/options lists the known ones")
            try:
                out[k] = OPTIONS[k].check(v)
            except ValueError as exc:
                raise InvalidRequest(f"{field}.{k}", f"{exc}, got {v!r}") from None
            if k in self._extra:
                out[k] = self._extra[k](out[k], f"{field}.{k}")
        return out

    def effective(self, overrides: dict[str, Any] | None) -> dict[str, Any]:
        """The options one job runs with: current values with the job's validated overrides on top.
        A known key with a bad value is an error. Keys that are not options here (Forge's
        `forge_additional_modules`, extension settings such as `hires_detail_suffix`) change nothing of
        ours, as in A1111; they are handed to the job as they are, so extensions can read them."""
        values = self.all()
        overrides = overrides or {}
        values.update({k: v for k, v in overrides.items() if k not in OPTIONS})
        values.update(self.validate({k: v for k, v in overrides.items() if k in OPTIONS}, "override_settings"))
        return values

    def fall_back(self, key: str, value: Any) -> None:
        """Use `value` for `key` from now on without rewriting the file (a saved name that no longer
        resolves, as A1111 does): the file changes only with the next real update."""
        with self._lock:
            self._values[key] = value

    def update(self, changes: dict[str, Any], checked: bool = False) -> None:
        """Validate (unless `checked`), apply and persist `changes`."""
        checked_changes = changes if checked else self.validate(changes)
        with self._lock:
            self._values.update(checked_changes)
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".options-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._values, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
