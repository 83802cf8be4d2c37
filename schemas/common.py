"""The request fields txt2img and img2img share (A1111's common processing fields and API fields), and
the leniency every generation request has. Unknown fields are ignored; integral floats are accepted for
integers."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas import leniency


class Lenient(BaseModel):
    """Ignore unknown keys (Forge / SD.Next / extension fields) and refuse NaN and infinity.

    Floats sent for integer fields are truncated as A1111 (pydantic 1) does: `10.0` -> 10 and
    AIYA's `hr_second_pass_steps: int(steps)/2` = 12.5 -> 12. Range limits still apply afterwards.
    Booleans are taken as 0/1 by number fields, 0/1 as booleans; numbers sent as JSON strings and values
    nested deeper than 64 levels are a 422. The JSON schema states the unions (`schemas.leniency`). Fields
    named in `blank_is_default` also take "" (their own validator maps it)."""

    blank_is_default: ClassVar[tuple[str, ...]] = ()
    model_config = ConfigDict(
        extra="ignore", allow_inf_nan=False, populate_by_name=True,
        json_schema_extra=lambda s, cls: leniency.document(s, True, cls.blank_is_default))

    @model_validator(mode="before")
    @classmethod
    def _truncate_floats_for_ints(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, f in cls.model_fields.items():
            if name not in out:
                continue
            kind = leniency.scalar_kind(f.annotation)
            leniency.refuse_deep(name, out[name])
            if not (name in cls.blank_is_default and out[name] == ""):
                leniency.refuse_strings(name, kind, out[name])
            out[name] = leniency.truncate_float(kind, out[name])
        return out


class TiledDiffusion(Lenient):
    """Tiled sampling of every sampling pass (txt2img, hires pass two, img2img): the latent is cut into
    tiles that overlap, each model call runs per tile and the outputs are merged (MultiDiffusion: plain
    average; Mixture of Diffusers: Gaussian weights). Sizes in pixels, used in whole latent cells (8 px)."""

    enabled: bool = True
    method: Literal["MultiDiffusion", "Mixture of Diffusers"] = "Mixture of Diffusers"
    tile_width: int = Field(768, ge=64, le=8192)
    tile_height: int = Field(768, ge=64, le=8192)
    overlap: int = Field(64, ge=0, le=4096)
    tile_batch_size: int = Field(4, ge=1, le=64)

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> TiledDiffusion:
        if self.overlap // 8 >= min(self.tile_width, self.tile_height) // 8:
            raise ValueError(f"overlap {self.overlap} must be smaller than the tile "
                             f"({self.tile_width}x{self.tile_height})")
        return self


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch's manual_seed takes


class GenerationRequest(Lenient):
    """Every field of A1111 v1.10's txt2img and img2img requests that both endpoints have, with its API default.
    `width`/`height` are the first-pass size for txt2img and the output size for img2img."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = Field(-1, ge=SEED_MIN, le=SEED_MAX, description="-1: random; else any seed torch's "
                      "manual_seed takes, as A1111 passes it on (-2^63 .. 2^64-1; image i gets seed + i)")
    subseed: int = Field(-1, ge=SEED_MIN, le=SEED_MAX, description="the variation seed; -1: random")
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_h: int = Field(-1, le=16384, description="<= 0: off; else the height the noise is drawn for")
    seed_resize_from_w: int = Field(-1, le=16384, description="<= 0: off; else the width the noise is drawn for")
    sampler_name: str | None = None
    sampler_index: str | None = "Euler"
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=64, description="images sampled together")
    n_iter: int = Field(1, ge=1, le=1000, description="number of batches")
    steps: int = Field(50, ge=1, le=1000)
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0)
    width: int = Field(512, ge=64, le=16384, description="used rounded down to a multiple of 8")
    height: int = Field(512, ge=64, le=16384, description="used rounded down to a multiple of 8")
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = Field(None, ge=0.0, le=10.0)
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    s_min_uncond: float | None = None
    s_churn: float | None = Field(None, ge=0.0)
    s_tmax: float | None = Field(None, ge=0.0)
    s_tmin: float | None = Field(None, ge=0.0)
    s_noise: float | None = Field(None, ge=0.0)
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None
    distilled_cfg_scale: float | None = None  # Forge; only Flux-style models use it
    tiled_diffusion: TiledDiffusion | None = Field(None, description="hiresd: tiled sampling of every pass "
                                                   "(txt2img's pass one, hires pass two, img2img); or send the "
                                                   "Tiled Diffusion extension's alwayson_scripts entry")

    blank_is_default: ClassVar[tuple[str, ...]] = ("seed", "subseed")

    @field_validator("seed", "subseed", mode="before")
    @classmethod
    def _empty_seed_is_random(cls, value: Any) -> Any:
        """A1111 takes "" (and null) as -1: a random seed."""
        return -1 if value is None or value == "" else value
