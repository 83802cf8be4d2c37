"""img2img and inpainting, as A1111 v1.10 runs them; `run_img2img` reads top to bottom like the algorithm.

Per job: prepare each init image once (flatten, resize by `resize_mode`, mask, overlay, only-masked crop,
masked-content fill) and VAE-encode it. Per batch: seeded noise from the same CPU seeds as txt2img,
the shared `denoise` routine from `denoising_strength` with A1111's img2img step rule (int(d * steps) + 1
steps, or exactly `steps` with the option `img2img_fix_steps`), the inpainting mask blended around every
model call, then decode, restore faces, paste back and overlay the original's unmasked pixels; with the
mask-output options (return_mask, save_mask, ...) each result brings its mask and masked sample along."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageColor

from pipeline.diffusion.loop import PassResult
from pipeline.diffusion.seamless import circular_padding
from pipeline.diffusion.seeds import image_noise, randn_source
from pipeline.diffusion.soft_inpainting import cut_overlay, lay_into
from pipeline.infotext.job import job_info, job_infotext
from pipeline.jobs.common import (
    Companion,
    JobContext,
    JobResult,
    PassSpec,
    encode,
    finish_images,
    is_inpainting_model,
    run_pass,
    saves_before_face_restoration,
    to_tensor,
)
from pipeline.jobs.controlnet import FROM_A1111, PassPicture
from pipeline.jobs.img2img import masks
from pipeline.jobs.img2img.color import apply_color_correction, correction_target
from pipeline.jobs.img2img.prepare import MASKED_CONTENT, Img2ImgProcessing
from pipeline.jobs.img2img.resize import (
    CROP_AND_RESIZE,
    JUST_RESIZE,
    LATENT_UPSCALE,
    RESIZE_AND_FILL,
    resize_image,
)
from pipeline.models import vae_codec as vae
from pipeline.models.sd_model import SDModel
from pipeline.runtime.errors import Interrupted

log = logging.getLogger("hiresd.img2img")


@dataclass
class Source:
    """One init image ready to encode: `image` at the processing size, the `repaint` mask at that size
    (None without a mask), and how the result goes back: `overlay` (original pixels, alpha = keep) and
    `paste_to` (x, y, w, h) in the original for "only masked"; `color_target`: the L*a*b* pixels results are
    colour-corrected to (option img2img_color_correction); `overlay_mask`: A1111's `mask_for_overlay`
    (255 = repainted) at the overlay's size, what the mask outputs show (options return_mask, save_mask)."""

    image: Image.Image
    repaint: Image.Image | None = None
    overlay: Image.Image | None = None
    overlay_mask: Image.Image | None = None
    paste_to: tuple[int, int, int, int] | None = None
    color_target: np.ndarray | None = None


def run_img2img(p: Img2ImgProcessing, ctx: JobContext) -> JobResult:
    """The job: `n_iter` batches of img2img (a selectable script runs instead: jobs/dispatch.py)."""
    ctx.state.begin("img2img", p.n_iter, [float(p.steps * p.width * p.height)] * p.n_iter)
    return img2img_batches(p, ctx)


def img2img_batches(p: Img2ImgProcessing, ctx: JobContext, job_offset: int = 0) -> JobResult:
    """`n_iter` batches of img2img; progress counts them as jobs job_offset, job_offset + 1, ..."""
    state = ctx.state
    bs = p.batch_size
    p.lay_out_batches()
    p.extra_generation_params.setdefault("Denoising strength", p.denoising_strength)
    model = ctx.models.get(p.checkpoint)
    sources = _prepare_sources(p, ctx)
    sources = sources * (bs // len(sources))  # one image repeats over the batch; k images are the batch
    init = _encode(model, p, [s.image for s in sources], ctx)
    repaint = None
    if sources[0].repaint is not None:
        repaint = torch.cat([masks.latent_mask(s.repaint, init.shape[-2], init.shape[-1], p.mask_round)
                             for s in sources]).to(init.device)
        init = _masked_content(p, init, repaint)
    image_cond = _image_conditioning(model, p, sources, init) if is_inpainting_model(model) else None
    picture = _control_picture(p, sources) if p.controlnet else None
    images: list[Image.Image] = []
    infotexts: list[str] = []
    calls: list[int] = []
    companions: list[list[Companion]] = []  # the mask outputs (options return_mask, save_mask, ...)
    mask_options = _mask_options(p)
    before_cc: list[tuple[Image.Image, str, str]] = []  # option save_images_before_color_correction
    keep_uncorrected = (bool(p.options.get("save_images_before_color_correction"))
                        and bool(getattr(p.request, "save_images", False)))
    for it in range(p.n_iter):
        if state.interrupted:
            break
        p.iteration = it
        state.clear_skip()
        seeds = p.all_seeds[it * bs:(it + 1) * bs]
        subseeds = p.all_subseeds[it * bs:(it + 1) * bs]
        state.set_job(job_offset + it, f"Batch {it + 1} out of {p.n_iter}" if p.n_iter > 1 else None, p.steps)
        if p.denoising_strength > 0:
            spec = dataclasses.replace(_pass(p, init, repaint, image_cond), picture=picture)
            result = run_pass(model, p, ctx, seeds, subseeds, spec)
            calls.append(result.unet_calls)
        else:  # nothing to denoise: the encoded-decoded input (A1111 would take one tiny step)
            result = PassResult(init)
        batch = finish_images(result.model or model, result.latents, p, ctx)  # the refiner's VAE
        overlays, overlay_masks = _soft_overlays(p, sources, repaint, init, result.latents)
        if keep_uncorrected and sources[0].color_target is not None:  # A1111: with the overlay, uncorrected
            before_cc += [(_put_back(img, src, over), job_infotext(p, ctx.models, it * bs + i),
                           "-before-color-correction")
                          for i, (img, src, over) in enumerate(zip(batch, sources, overlays, strict=True))]
        batch = [img if src.color_target is None else apply_color_correction(src.color_target, img)
                 for img, src in zip(batch, sources, strict=True)]
        finals = [_put_back(img, src, over) for img, src, over in zip(batch, sources, overlays, strict=True)]
        if any(mask_options) and sources[0].overlay_mask is not None:
            companions += [_mask_outputs(mask_options, mask, _denoised(img, src, over), final)
                           for img, final, src, over, mask
                           in zip(batch, finals, sources, overlays, overlay_masks, strict=True)]
        images += finals
        infotexts += [job_infotext(p, ctx.models, i) for i in range(it * bs, it * bs + len(batch))]
        if isinstance(result.stopped, Interrupted):
            break
    info = job_info(p, ctx.models, infotexts, state.job_timestamp)
    info["is_using_inpainting_conditioning"] = image_cond is not None
    return JobResult(images, infotexts, info, calls,
                     saves_before_face_restoration(p, infotexts) + before_cc, companions)


# -- the pieces -----------------------------------------------------------------------------------

def _prepare_sources(p: Img2ImgProcessing, ctx: JobContext) -> list[Source]:
    """A1111's img2img `init`: the mask once, then every init image."""
    repaint = crop = None
    overlay_mask = None
    if p.mask is not None:
        repaint = masks.prepare_mask(p.mask, invert=p.inpainting_mask_invert, blur_x=p.mask_blur_x,
                                     blur_y=p.mask_blur_y, round_=p.mask_round)
        if p.inpainting_mask_invert:
            p.extra_generation_params["Mask mode"] = "Inpaint not masked"
        if p.mask_blur_x == p.mask_blur_y:
            p.extra_generation_params["Mask blur"] = p.mask_blur_x
        if p.inpaint_full_res:
            crop = masks.crop_region(repaint, p.inpaint_full_res_padding, p.width, p.height)
            if crop is None:  # an empty mask: plain img2img of the whole picture, as A1111 1.10 does
                log.info("inpaint only masked: the mask is empty; running img2img without a mask")
                repaint = None
            else:
                overlay_mask = repaint  # A1111's mask_for_overlay: the blurred mask at the init image's size
                repaint = resize_image(RESIZE_AND_FILL, repaint.crop(crop), p.width, p.height)
                p.extra_generation_params["Inpaint area"] = "Only masked"
                p.extra_generation_params["Masked area padding"] = p.inpaint_full_res_padding
        else:
            mode = JUST_RESIZE if p.resize_mode == LATENT_UPSCALE else p.resize_mode
            repaint = resize_image(mode, repaint, p.width, p.height)
            overlay_mask = masks.overlay_mask_whole(repaint)
    if repaint is not None and p.inpainting_fill != 1:
        p.extra_generation_params["Masked content"] = MASKED_CONTENT[p.inpainting_fill]
    background = _background(p)
    out = []
    for img in p.init_images:
        image = _flatten(img, background)
        if crop is None and p.resize_mode != LATENT_UPSCALE:
            image = resize_image(p.resize_mode, image, p.width, p.height, _scaler(p, ctx))
        src = Source(image)
        if repaint is not None:
            over_src = image if p.resize_mode != LATENT_UPSCALE or crop is not None else \
                resize_image(JUST_RESIZE, image, p.width, p.height)
            src.overlay = masks.overlay(over_src, overlay_mask) if p.overlay_inpaint else None
            src.overlay_mask = overlay_mask
            if crop is not None:
                x1, y1, x2, y2 = crop
                src.paste_to = (x1, y1, x2 - x1, y2 - y1)
                src.image = resize_image(RESIZE_AND_FILL, image.crop(crop), p.width, p.height, _scaler(p, ctx))
            if p.inpainting_fill == 0:
                src.image = masks.fill(src.image, repaint)
            src.repaint = repaint
        if p.options.get("img2img_color_correction"):  # A1111: the image as it goes to the model
            src.color_target = correction_target(src.image)
        out.append(src)
    return out


def _control_picture(p: Img2ImgProcessing, sources: list[Source]) -> PassPicture:
    """What ControlNet units see of the init images, as the extension takes them: each flattened init
    image fitted by the request's resize mode; with "only masked", the masked box of it (resized and
    filled to the processing size) and the box, so that a unit's own image is cut the same way; SD
    upscale's tiles with their boxes in the upscaled picture."""
    background = _background(p)
    inits = [_flatten(img, background) for img in p.init_images]
    inits = inits * (len(sources) // len(inits))
    mask = None
    if p.mask is not None:  # the request's mask as A1111 prepares it (inpaint units take it)
        mask = masks.prepare_mask(p.mask, invert=p.inpainting_mask_invert, blur_x=p.mask_blur_x,
                                  blur_y=p.mask_blur_y, round_=p.mask_round)
    if sources[0].paste_to is not None:
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (s.paste_to for s in sources)]

        def cut(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
            return resize_image(RESIZE_AND_FILL, img.crop(box), p.width, p.height)

        cuts = [cut(img, box) for img, box in zip(inits, boxes, strict=True)]
        cut_masks = [cut(mask, box) for box in boxes] if mask is not None else None
        return PassPicture(cuts, boxes=boxes, full=inits[0].size, masks=cut_masks)
    mode = FROM_A1111.get(p.resize_mode, "Just Resize")
    whole = [mask] * len(inits) if mask is not None else None
    if p.control_boxes is not None:
        boxes, full = p.control_boxes
        return PassPicture(inits, mode, boxes=list(boxes), full=full, masks=whole)
    return PassPicture(inits, mode, masks=whole)


def _background(p: Img2ImgProcessing) -> tuple[int, int, int]:
    value = str(p.options.get("img2img_background_color") or "#ffffff")
    try:
        return ImageColor.getrgb(value)[:3]
    except ValueError:
        return (255, 255, 255)


def _flatten(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Transparent pixels onto the background colour, as A1111's `flatten`."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image.convert("RGB")


def flatten_init(p: Img2ImgProcessing, image: Image.Image) -> Image.Image:
    """An init image as RGB, transparent pixels on the option `img2img_background_color`."""
    return _flatten(image, _background(p))


def _scaler(p: Img2ImgProcessing, ctx: JobContext):
    state = ctx.state
    if p.resize_upscaler == "None":
        return lambda img, w, h: img if img.size == (w, h) else img.resize((w, h), Image.Resampling.LANCZOS)
    return lambda img, w, h: ctx.upscaler.upscale_to(img, p.resize_upscaler, w, h,
                                                     lambda: state.interrupted or state.skipped)


def _encode(model: SDModel, p: Img2ImgProcessing, images: list[Image.Image], ctx: JobContext) -> torch.Tensor:
    """The init latents; latent upscale (mode 3) encodes each image at its own size (rounded down to whole
    latent cells; init images of different sizes each at theirs) and interpolates bilinearly to the
    processing size."""
    if p.resize_mode != LATENT_UPSCALE:
        with circular_padding([model.vae], p.tiling):
            return encode(model, to_tensor(images), p, ctx)
    images = [img.crop((0, 0, img.width // 8 * 8, img.height // 8 * 8)) for img in images]
    groups: list[tuple[tuple[int, int], list[Image.Image]]] = []  # runs of one size, in order
    for img in images:
        if groups and groups[-1][0] == img.size:
            groups[-1][1].append(img)
        else:
            groups.append((img.size, [img]))
    parts = []
    for _, group in groups:
        with circular_padding([model.vae], p.tiling):
            latents = encode(model, to_tensor(group), p, ctx)
        if latents.shape[-2:] != (p.height // 8, p.width // 8):
            latents = F.interpolate(latents, size=(p.height // 8, p.width // 8), mode="bilinear")
        parts.append(latents)
    return torch.cat(parts)


def _masked_content(p: Img2ImgProcessing, init: torch.Tensor, repaint: torch.Tensor) -> torch.Tensor:
    """Masked content 2 (latent noise: seeded unit noise) and 3 (latent nothing: zeros) in the hole."""
    if p.inpainting_fill == 2:
        shape = tuple(init.shape[1:])
        source = randn_source(p.options)
        noise = torch.stack([image_noise(shape, s, source=source, device=init.device)
                             for s in p.all_seeds[:init.shape[0]]]).to(init.device)
        return init * (1 - repaint) + noise * repaint
    if p.inpainting_fill == 3:
        return init * (1 - repaint)
    return init


def _image_conditioning(model: SDModel, p: Img2ImgProcessing, sources: list[Source], init: torch.Tensor
                        ) -> torch.Tensor:
    """9-channel inpainting models: [mask (1 ch, nearest, rounded), VAE(masked image) (4 ch)], where the
    masked image is lerp(src, src * (1 - mask), inpainting_mask_weight) in [-1, 1] (masked pixels go
    mid-grey). Without a mask the whole image counts as masked (A1111: a ones mask)."""
    pixels = to_tensor([s.image for s in sources])
    if sources[0].repaint is not None:
        mask = torch.stack([torch.from_numpy(_mask_array(s.repaint)) for s in sources])[:, None]
        if p.mask_round:
            mask = mask.round()
    else:
        mask = torch.ones(pixels.shape[0], 1, *pixels.shape[-2:])
    signed = pixels * 2 - 1
    masked = torch.lerp(signed, signed * (1 - mask), p.mask_weight)
    with circular_padding([model.vae], p.tiling):
        latents = vae.encode(model, (masked + 1) / 2).float()
    p.extra_generation_params["Conditional mask weight"] = p.mask_weight
    small = F.interpolate(mask, size=init.shape[-2:])
    return torch.cat([small.to(latents.device), latents], dim=1)


def _mask_array(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask.convert("L"), dtype=np.float32) / 255.0


def _pass(p: Img2ImgProcessing, init: torch.Tensor, repaint: torch.Tensor | None,
          image_cond: torch.Tensor | None) -> PassSpec:
    """The one pass of img2img: denoise the init latents from `denoising_strength` (A1111's img2img step
    rule, or fixed steps with img2img_fix_steps), the unmasked latent kept where inpainting."""
    return PassSpec(1, p.width, p.height, p.sampler, p.schedule, p.steps, p.prompt, p.negative_prompt,
                    p.cfg_scale, init=init, strength=p.denoising_strength, fix_steps=p.fix_steps,
                    keep=None if repaint is None else 1 - repaint, image_cond=image_cond,
                    noise_multiplier=p.initial_noise_multiplier, soft=None if repaint is None else p.soft)


def _soft_overlays(p: Img2ImgProcessing, sources: list[Source], repaint: torch.Tensor | None,
                   init: torch.Tensor, latents: torch.Tensor
                   ) -> tuple[list[Image.Image | None], list[Image.Image | None]]:
    """Each image's overlay of the original and its mask for overlay: as prepared, or with Soft Inpainting
    cut by how much the sampled latent moved away from the init latent (soft_inpainting.py; A1111's extension
    then hands on its own mask, laid into the overlay's size, as `mask_for_overlay`)."""
    if p.soft is None or repaint is None or p.denoising_strength <= 0:
        return [s.overlay for s in sources], [s.overlay_mask for s in sources]
    takes = p.soft.overlay_masks(repaint, init, latents, p.width, p.height)
    overlays = [None if s.overlay is None else cut_overlay(s.overlay, take, s.paste_to)
                for s, take in zip(sources, takes, strict=True)]
    return overlays, [None if s.overlay_mask is None else lay_into(take, s.overlay_mask.size, s.paste_to)
                      for s, take in zip(sources, takes, strict=True)]


def _denoised(image: Image.Image, src: Source, overlay: Image.Image | None) -> Image.Image:
    """The sample as it goes under the overlay (A1111's `original_denoised_image`): with an overlay and
    "only masked", resized into its box on a transparent canvas of the original size; else as it is."""
    if overlay is None or src.paste_to is None:
        return image
    x, y, w, h = src.paste_to
    canvas = Image.new("RGBA", overlay.size)
    canvas.paste(resize_image(CROP_AND_RESIZE, image, w, h), (x, y))
    return canvas


def _put_back(image: Image.Image, src: Source, overlay: Image.Image | None) -> Image.Image:
    """Only masked: the sample (crop-and-resize) into its box on a canvas of the original size; then the
    original's unmasked pixels (`overlay`: src.overlay, or Soft Inpainting's) composited on top (option
    overlay_inpaint)."""
    if overlay is None:  # no mask, or overlay_inpaint off (only masked: the bare crop, as A1111)
        return image
    out = _denoised(image, src, overlay).convert("RGBA")
    out.alpha_composite(overlay)
    return out.convert("RGB")


MASK_OPTIONS = ("return_mask", "save_mask", "return_mask_composite", "save_mask_composite")


def _mask_options(p: Img2ImgProcessing) -> tuple[bool, bool, bool, bool]:
    """The mask outputs wanted: return_mask, save_mask, return_mask_composite, save_mask_composite; the
    saving ones only when the job's images are saved (request save_images, option samples_save)."""
    saving = bool(getattr(p.request, "save_images", False)) and bool(p.options.get("samples_save", True))
    ret_mask, save_mask, ret_comp, save_comp = (bool(p.options.get(name)) for name in MASK_OPTIONS)
    return ret_mask, save_mask and saving, ret_comp, save_comp and saving


def _mask_outputs(wanted: tuple[bool, bool, bool, bool], mask: Image.Image, denoised: Image.Image,
                  final: Image.Image) -> list[Companion]:
    """A1111's mask outputs of one inpainted image: the mask for overlay as RGB (`-mask`), and the sample
    before the overlay cut to the mask (`-mask-composite`: premultiplied RGBA, transparent outside, the mask
    fitted to the image's size by resize-and-fill)."""
    ret_mask, save_mask, ret_comp, save_comp = wanted
    out = []
    if ret_mask or save_mask:
        out.append(Companion(mask.convert("RGB"), "-mask", ret_mask, save_mask))
    if ret_comp or save_comp:
        fitted = resize_image(RESIZE_AND_FILL, mask, final.width, final.height).convert("L")
        composite = Image.composite(denoised.convert("RGBA").convert("RGBa"), Image.new("RGBa", final.size),
                                    fitted).convert("RGBA")
        out.append(Companion(composite, "-mask-composite", ret_comp, save_comp))
    return out
