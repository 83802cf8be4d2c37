"""A txt2img job, validated and resolved before any model work: `Processing` is the `p` that extension
hooks receive and may change (prompts, cfg, sampler, denoising, ...).

`prepare()` resolves every name (samplers, schedules, upscaler, checkpoints) and checks the pixel budget,
so that a bad request fails with a clear error before it is queued, and never after pass one."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.diffusion import samplers
from pipeline.diffusion.seeds import resolve_seed, wrap_seed
from pipeline.diffusion.tiled import TileSettings
from pipeline.diffusion.tiled.request import check_model as check_tiles_model
from pipeline.diffusion.tiled.request import request_tiles
from pipeline.jobs import builtin_scripts, forge_scripts
from pipeline.jobs.hires_size import HiresSize, first_pass_size, hires_size, old_hires_first_pass
from pipeline.jobs.pixel_upscale import resolve_hires_upscaler
from pipeline.jobs.refiner import Refiner
from pipeline.jobs.refiner import resolve as resolve_refiner
from pipeline.jobs.speed import check_request as check_speed_request
from pipeline.runtime.errors import InvalidRequest, TooLarge
from schemas.common import GenerationRequest
from schemas.txt2img import Txt2ImgRequest
from upscalers.registry import UpscalerRegistry

USE_SAME_CHECKPOINT = "Use same checkpoint"


class ModelNames(Protocol):
    def resolve_title(self, name: str, field: str) -> str: ...




@dataclass
class Processing:
    """Everything a txt2img job needs, in resolved form. Hooks may change the public fields."""

    request: Txt2ImgRequest
    prompt: str
    negative_prompt: str
    styles: list[str]
    seed: int
    subseed: int
    subseed_strength: float
    seed_resize_from: tuple[int, int]
    sampler: Any
    schedule: Any
    steps: int
    cfg_scale: float
    width: int
    height: int
    batch_size: int
    n_iter: int
    clip_skip: int
    tiling: bool
    checkpoint: str
    eta: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    # hires fix
    enable_hr: bool = False
    hires: HiresSize | None = None
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    denoising_strength: float = 0.75
    hr_sampler: Any = None
    hr_schedule: Any = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_cfg: float | None = None
    hr_checkpoint: str | None = None
    refiner: Refiner | None = None  # refiner_checkpoint / refiner_switch_at, resolved (pipeline/refiner.py)
    firstpass_image: Any = None  # a decoded PIL image when the client sent one
    face_restorer: Any = None  # the upscalers.faces.FaceRestorer that restore_faces uses, else None
    script_args: dict[str, list[Any]] = field(default_factory=dict)  # alwayson_scripts args by script name
    tiles: TileSettings | None = None  # tiled sampling of every pass (pipeline/tiled/request.py)
    ignored_settings: list[str] = field(default_factory=list)  # override_settings keys that are no option
    controlnet: Any = None  # the enabled ControlNet units (jobs/controlnet.Units), checked before queueing
    control_boxes: Any = None  # SD upscale: (tile boxes of this batch, upscaled size) for units' own images
    # filled while running
    all_prompts: list[str] = field(default_factory=list)
    all_negative_prompts: list[str] = field(default_factory=list)
    all_seeds: list[int] = field(default_factory=list)
    all_subseeds: list[int] = field(default_factory=list)
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    is_hr_pass: bool = False
    iteration: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    # option save_images_before_face_restoration: each final image as it was before restore_faces
    unrestored: list[Any] = field(default_factory=list)

    @property
    def hr_steps(self) -> int:
        return self.hr_second_pass_steps or self.steps

    @property
    def hr_cfg_scale(self) -> float:
        return self.cfg_scale if self.hr_cfg is None else self.hr_cfg

    @property
    def job_count(self) -> int:
        return self.n_iter * (2 if self.enable_hr else 1)

    def lay_out_batches(self) -> None:
        """A1111's per-image seeds, subseeds and prompts for the whole job: seed + i (the same seed for every
        image when variation seeds are on), subseed + i, the prompts repeated."""
        count = self.batch_size * self.n_iter
        self.all_seeds = [wrap_seed(self.seed + (i if self.subseed_strength == 0 else 0)) for i in range(count)]
        self.all_subseeds = [wrap_seed(self.subseed + i) for i in range(count)]
        self.all_prompts = [self.prompt] * count
        self.all_negative_prompts = [self.negative_prompt] * count


# A1111's k-diffusion Sampler defaults: an option that differs from them wins over the request (s_tmax 0: no end)
_SIGMA_DEFAULTS = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0}


def _sigma_param(value: float | None, options: dict[str, Any], key: str) -> float | None:
    """A1111 v1.10's precedence for s_churn, s_tmin, s_tmax and s_noise: the option (with the job's
    override_settings) when it differs from the sampler's default, else the request's value, else the option.
    (A1111's sampler reads `opts.s_churn` first and keeps the request's value only when the option is at
    its default; a request's null falls back to the option.)"""
    opt = options.get(key)
    if opt is not None and float(opt) != _SIGMA_DEFAULTS[key]:
        return float(opt)
    return value if value is not None else (None if opt is None else float(opt))


def _clip_skip(options: dict[str, Any]) -> int:
    value = options.get("CLIP_stop_at_last_layers", 1)
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InvalidRequest("override_settings.CLIP_stop_at_last_layers",
                             f"must be an integer from 1 to 12, got {value!r}") from None
    if not 1 <= n <= 12:
        raise InvalidRequest("override_settings.CLIP_stop_at_last_layers", f"must be from 1 to 12, got {n}")
    return n


def prepare_common(req: GenerationRequest, options: dict[str, Any], models: ModelNames,
                   upscalers: UpscalerRegistry, cls: type[Processing] = Processing,
                   scripts: tuple[str, ...] = ()) -> Processing:
    """The fields txt2img and img2img share, resolved and validated: a `cls` (Processing or a subclass)
    at width x height rounded down to multiples of 8. `scripts`: the selectable scripts (lower case) the
    caller runs itself."""
    if req.script_name not in (None, "", "None") and req.script_name.lower() not in scripts:
        served = f"selectable scripts here: {', '.join(repr(s) for s in scripts)}" if scripts else \
            "this server has no selectable scripts for this endpoint"
        raise InvalidRequest("script_name", f"script {req.script_name!r} not found; {served} (alwayson "
                             "extensions: see /sdapi/v1/scripts)")
    restore = req.restore_faces if req.restore_faces is not None else bool(options.get("face_restoration"))
    face_restorer = upscalers.faces.pick(options.get("face_restoration_model")) if restore else None
    if restore and face_restorer is None:
        raise InvalidRequest("restore_faces", "no face-restoration model is available on this server (put a "
                             "GFPGAN or CodeFormer file under <models>/GFPGAN or <models>/Codeformer); send false")
    sampler, schedule = samplers.resolve(req.sampler_name, req.sampler_index, req.scheduler)
    checkpoint = models.resolve_title(str(options.get("sd_model_checkpoint") or ""), "sd_model_checkpoint")
    refiner = resolve_refiner(req.refiner_checkpoint, req.refiner_switch_at, options, models)
    w, h = first_pass_size(req.width, req.height)
    p = cls(
        request=req, prompt=req.prompt, negative_prompt=req.negative_prompt or "", styles=list(req.styles or []),
        seed=resolve_seed(req.seed), subseed=resolve_seed(req.subseed), subseed_strength=req.subseed_strength,
        seed_resize_from=(req.seed_resize_from_w, req.seed_resize_from_h), sampler=sampler, schedule=schedule,
        steps=req.steps, cfg_scale=req.cfg_scale, width=w, height=h, batch_size=req.batch_size,
        n_iter=req.n_iter, clip_skip=_clip_skip(options), checkpoint=checkpoint,
        tiling=bool(req.tiling if req.tiling is not None else options.get("tiling", False)),
        eta=req.eta, s_churn=_sigma_param(req.s_churn, options, "s_churn"),
        s_tmin=_sigma_param(req.s_tmin, options, "s_tmin"),
        s_tmax=_sigma_param(req.s_tmax, options, "s_tmax"),
        s_noise=_sigma_param(req.s_noise, options, "s_noise"),
        denoising_strength=req.denoising_strength, options=dict(options), face_restorer=face_restorer,
        refiner=refiner,
    )
    samplers.validate_params(sampler, sampler_params(p))
    soft = builtin_scripts.read_args(req, img2img=cls is not Processing)  # A1111's built-in always-on entries
    if soft is not None:
        p.soft = soft  # type: ignore[attr-defined] - img2img's Soft Inpainting
    p.tiles = request_tiles(req, img2img=cls is not Processing)
    check_speed_request(req)  # Deep Shrink's always-on args
    forge_tiles = forge_scripts.multidiffusion_tiles(req)  # Forge's "MultiDiffusion Integrated"
    if forge_tiles is not None:
        if p.tiles is not None:
            raise InvalidRequest("alwayson_scripts", f"tiling asked twice ({forge_scripts.MULTIDIFFUSION.title} "
                                 "and tiled_diffusion / Tiled Diffusion); send one of them")
        p.tiles = forge_tiles
        forge_scripts.infotext(p, "multidiffusion", forge_scripts.request_settings(req, forge_scripts.MULTIDIFFUSION))
    never_oom = forge_scripts.request_settings(req, forge_scripts.NEVER_OOM)
    if never_oom and never_oom["unet_enabled"]:  # the UNet's memory fallback (automatic tiles) on for the job
        p.options["tiled_diffusion_auto"] = True
    check_tiles_model(models, checkpoint, p.tiles)
    return p


def sampler_params(p: Processing, sampler: Any = None) -> samplers.SamplerParams:
    """The parameters of a pass run by `sampler` (default: the job's): eta from the request, else from the
    option of the sampler's kind (`eta_ancestral` / `eta_ddim`), as A1111 resolves it per sampler."""
    eta = samplers.option_eta(p.eta, sampler or p.sampler, p.options)
    return samplers.SamplerParams(eta=eta, s_churn=p.s_churn, s_tmin=p.s_tmin, s_tmax=p.s_tmax,
                                  s_noise=p.s_noise, unipc=samplers.UniPCOptions.from_options(p.options))


def check_pixel_budget(width: int, height: int, batch_size: int, max_pixels: int, what: str) -> None:
    """The largest size a job samples or decodes, times its batch, against --max-pixels."""
    pixels = width * height * batch_size
    if pixels > max_pixels:
        raise TooLarge("width/height", f"{width}x{height} x batch_size {batch_size} = {pixels} pixels "
                       f"exceeds this server's budget of {max_pixels} pixels per batch; lower {what} "
                       "(or raise --max-pixels)")


def check_seed_resize(p: Processing, max_pixels: int) -> None:
    """`seed_resize_from_w/h` draws the noise at that size: it too stays within --max-pixels per batch."""
    rw, rh = p.seed_resize_from
    if rw > 0 and rh > 0 and rw * rh * p.batch_size > max_pixels:
        raise TooLarge("seed_resize_from_w/seed_resize_from_h",
                       f"noise drawn for {rw}x{rh} x batch_size {p.batch_size} = {rw * rh * p.batch_size} pixels "
                       f"exceeds this server's budget of {max_pixels} pixels per batch; lower them (<= 0 "
                       "turns them off; or raise --max-pixels)")


def prepare(req: Txt2ImgRequest, options: dict[str, Any], models: ModelNames, upscalers: UpscalerRegistry,
            max_pixels: int, firstpass_image: Any = None) -> Processing:
    """Resolve and validate a txt2img request. `options` are the effective options for this job (the
    store's values with `override_settings` applied)."""
    p = prepare_common(req, options, models, upscalers)
    sampler, schedule, checkpoint, w, h = p.sampler, p.schedule, p.checkpoint, p.width, p.height
    budget_w, budget_h = w, h
    if req.enable_hr or firstpass_image is not None:
        p.enable_hr = True
        if firstpass_image is not None:
            # the picture is pass one: its size (rounded down to multiples of 8) is the first-pass size
            src_w, src_h, fp_w, fp_h = firstpass_image.width, firstpass_image.height, 0, 0
            if src_w < 64 or src_h < 64:
                raise InvalidRequest("firstpass_image", f"the image is {src_w}x{src_h}; at least 64x64 needed")
        else:
            src_w, src_h, fp_w, fp_h = req.width, req.height, req.firstphase_width, req.firstphase_height
        resize_x, resize_y = req.hr_resize_x, req.hr_resize_y
        if options.get("use_old_hires_fix_width_height") and firstpass_image is None:
            # A1111's compatibility option: width x height is the final size, pass one about 512x512
            resize_x, resize_y = req.width, req.height
            src_w, src_h = old_hires_first_pass(req.width, req.height)
        p.hires = hires_size(src_w, src_h, req.hr_scale, resize_x, resize_y, fp_w, fp_h)
        p.width, p.height = p.hires.first_w, p.hires.first_h
        if p.hires.final_w < 64 or p.hires.final_h < 64:
            raise InvalidRequest("hr_scale", f"the hires target {p.hires.final_w}x{p.hires.final_h} is below "
                                 "64 px; use a larger hr_scale or hr_resize_x/hr_resize_y")
        budget_w, budget_h = max(budget_w, p.hires.upscale_w), max(budget_h, p.hires.upscale_h)
        if req.hr_upscaler in (None, ""):  # null (and, leniently, "") means A1111's default "Latent"
            p.hr_upscaler = None
        else:
            p.hr_upscaler = resolve_hires_upscaler(upscalers, req.hr_upscaler)
        p.hr_second_pass_steps = req.hr_second_pass_steps
        p.hr_sampler, p.hr_schedule = samplers.resolve_hires(req.hr_sampler_name, req.hr_scheduler,
                                                             (sampler, schedule))
        samplers.validate_params(p.hr_sampler, sampler_params(p, p.hr_sampler))
        p.hr_prompt = req.hr_prompt or ""
        p.hr_negative_prompt = req.hr_negative_prompt or ""
        p.hr_cfg = req.hr_cfg
        if req.hr_checkpoint_name not in (None, "", USE_SAME_CHECKPOINT):
            hr = models.resolve_title(req.hr_checkpoint_name, "hr_checkpoint_name")
            p.hr_checkpoint = None if hr == checkpoint else hr
        p.firstpass_image = firstpass_image
    check_pixel_budget(budget_w, budget_h, p.batch_size, max_pixels, "the size, hr_scale or batch_size")
    check_seed_resize(p, max_pixels)
    return p
