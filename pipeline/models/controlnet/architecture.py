"""A ControlNet file's architecture, read from its tensors: no hub look-up, no guessed config.

Two layouts arrive in `models/ControlNet/`:
    original (LDM, sd-webui-controlnet's `cldm`)   `control_model.` + input_blocks / middle_block /
                                                  time_embed / label_emb (the UNet encoder's openaimodel
                                                  names), `zero_convs.N.0`, `middle_block_out.0`,
                                                  `input_hint_block.{0,2,..}` (convs with SiLU between)
    diffusers                                      `conv_in`, `down_blocks`, `mid_block`,
                                                  `controlnet_cond_embedding`, `controlnet_down_blocks.N`,
                                                  `controlnet_mid_block`
The LDM layout is renamed to diffusers names (the UNet encoder through the checkpoint converter), then one
reader derives the `ControlNetModel` config from the diffusers names' shapes:
    base width, latent channels        conv_in.weight
    hint channels, embedding widths    controlnet_cond_embedding.conv_in / blocks.(2j+1) rows
    levels, widths, res blocks         down_blocks.N.resnets.M.conv1 rows
    attention and its depth            down_blocks.N.attentions.0.transformer_blocks.K (CrossAttn blocks;
                                       SDXL "mid"/"small" ControlNets have fewer)
    mid block                          mid_block.attentions.0 (depth), else one ResBlock pair
    context width, projection          attn2.to_k columns, proj_in rank
    vector conditioning (SDXL)         add_embedding.linear_1 columns
Heads are not in the weights: the checkpoint loader's rule (conv projection: 8 heads; Linear: 64-channel
heads). The family: SDXL with a vector condition, SD 2.x with Linear projections, else SD 1.x."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.models.checkpoints import convert
from pipeline.models.checkpoints.architecture import unet_heads
from pipeline.models.controlnet import adapter, control_lora
from pipeline.runtime.errors import ModelLoadError

LDM_PREFIX = "control_model."
DIFFUSERS_MARK = "controlnet_cond_embedding.conv_in.weight"
LDM_MARK = "input_hint_block.0.weight"


@dataclass(frozen=True)
class ControlNetArch:
    """What the tensors say: the diffusers config (without the base-dependent fields), the family, the
    context width and the layout the file was in ("ldm" or "diffusers")."""

    config: dict[str, Any]
    family: str
    context_dim: int | None  # None: no attention layer reads the prompt (SDXL "small"-like files)
    layout: str  # "ldm", "diffusers", "t2i_adapter" (original) or "t2i_adapter diffusers"

    @property
    def is_adapter(self) -> bool:
        return self.layout.startswith("t2i_adapter")


def kind_of(keys: Sequence[str]) -> str:
    """ "ldm", "diffusers", or what it is instead ("t2i_adapter", "control_lora", "unknown")."""
    keyset = set(keys)
    if any("lora_controlnet" in k for k in keyset):
        return "control_lora"
    if DIFFUSERS_MARK in keyset:
        return "diffusers"
    if LDM_MARK in keyset or LDM_PREFIX + LDM_MARK in keyset:
        return "ldm"
    if any(k.startswith(("adapter.", "body.0.", "conv_in.")) for k in keyset) and any(
        ".body." in k or k.startswith("body.") for k in keyset
    ):
        return "t2i_adapter"
    return "unknown"


def _not_supported(path: str, kind: str) -> ModelLoadError:
    what = {
        "unknown": "not a ControlNet (no input_hint_block / controlnet_cond_embedding keys)",
    }[kind]
    return ModelLoadError(
        path,
        f"{what}: not supported yet; hiresd loads ControlNets in the original "
        "(control_model.*) or diffusers layout, and T2I-Adapters",
    )


def to_diffusers(sd: Mapping[str, torch.Tensor], path: str = "<state dict>") -> dict[str, torch.Tensor]:
    """The file's tensors under diffusers `ControlNetModel` names; every key placed, else ModelLoadError."""
    kind = kind_of(list(sd))
    if kind == "diffusers":
        return dict(sd)
    if kind not in ("ldm", "control_lora"):
        raise _not_supported(path, kind)
    body = {k.removeprefix(LDM_PREFIX): v for k, v in sd.items() if k != control_lora.MARK}
    hint = sorted({int(k.split(".")[1]) for k in body if k.startswith("input_hint_block.")})
    convs = [i for i in hint if f"input_hint_block.{i}.weight" in body]
    out: dict[str, torch.Tensor] = {}
    unet_part: dict[str, torch.Tensor] = {}
    for key, value in body.items():
        parts = key.split(".")
        if parts[0] == "zero_convs" and len(parts) == 4 and parts[2] == "0":
            out[f"controlnet_down_blocks.{parts[1]}.{parts[3]}"] = value
        elif key.startswith("middle_block_out.0."):
            out["controlnet_mid_block." + key[len("middle_block_out.0.") :]] = value
        elif parts[0] == "input_hint_block":
            n = convs.index(int(parts[1])) if int(parts[1]) in convs else -1
            if n < 0:
                raise ModelLoadError(path, f"unexpected hint-block key {key!r}")
            name = "conv_in" if n == 0 else "conv_out" if n == len(convs) - 1 else f"blocks.{n - 1}"
            out[f"controlnet_cond_embedding.{name}.{parts[2]}"] = value
        else:
            unet_part[key] = value
    converted, unused, _ = convert.unet(unet_part, _ldm_layers_per_block(body, path))
    if unused:
        raise ModelLoadError(
            path,
            f"{len(unused)} keys of the ControlNet file have no place in its "
            f"architecture, e.g. {sorted(unused)[:3]}",
        )
    out.update(converted)
    return out


def _ldm_layers_per_block(body: Mapping[str, Any], path: str) -> int:
    heads = {".".join(k.split(".")[:4]) for k in body if k.startswith("input_blocks.")}
    i = 1
    while f"input_blocks.{i}.0.in_layers" in heads or f"input_blocks.{i}.0.op" in heads:
        if f"input_blocks.{i}.0.op" in heads:
            return i - 1
        i += 1
    if i == 1:
        raise ModelLoadError(path, "no input blocks in the ControlNet file")
    return i - 1


def _count(keys: set[str], head: str) -> int:
    n = 0
    while any(k.startswith(f"{head}{n}.") for k in keys):
        n += 1
    return n


def read(shapes: Mapping[str, Sequence[int]], path: str = "<state dict>") -> ControlNetArch:
    """The architecture of diffusers-named tensors ({name: shape}; the LDM layout also accepted, named as
    in the file)."""
    keys = set(shapes)
    kind = kind_of(list(keys))
    layout = kind
    if kind == "ldm":
        renamed = to_diffusers({k: _Shaped(tuple(v)) for k, v in shapes.items()}, path)  # type: ignore[misc]
        shapes = {k: v.shape for k, v in renamed.items()}
        keys = set(shapes)
    elif kind == "control_lora":
        fam, context = control_lora.family(shapes)
        try:
            renamed = to_diffusers({k: _Shaped(tuple(v)) for k, v in shapes.items()}, path)  # type: ignore[misc]
        except ModelLoadError as exc:
            raise ModelLoadError(path, f"a ControlLoRA file (lora_controlnet key) that does not read: {exc.reason}") from exc
        hint_shapes = {k: v.shape for k, v in renamed.items() if k.startswith("controlnet_cond_embedding.")}
        if "controlnet_cond_embedding.conv_in.weight" not in hint_shapes:
            raise ModelLoadError(path, "ControlLoRA without a hint encoder (input_hint_block)")
        emb = [hint_shapes["controlnet_cond_embedding.conv_in.weight"][0]] + [
            hint_shapes[f"controlnet_cond_embedding.blocks.{2 * j + 1}.weight"][0]
            for j in range(_count(set(hint_shapes), "controlnet_cond_embedding.blocks.") // 2)
        ]
        hint = (int(hint_shapes["controlnet_cond_embedding.conv_in.weight"][1]), tuple(int(e) for e in emb))
        return ControlNetArch({"hint": hint}, fam, context, "control_lora")
    elif kind == "t2i_adapter":
        a = adapter.read(shapes, path)
        layout = "t2i_adapter diffusers" if any(k.startswith("adapter.") for k in keys) else "t2i_adapter"
        return ControlNetArch({"adapter": a}, a.family, None, layout)
    elif kind != "diffusers":
        raise _not_supported(path, kind)

    def shape(key: str) -> tuple[int, ...]:
        s = shapes.get(key)
        if s is None:
            raise ModelLoadError(path, f"ControlNet architecture: {key} missing")
        return tuple(int(x) for x in s)

    base_ch, in_ch = shape("conv_in.weight")[:2]
    cond = shape("controlnet_cond_embedding.conv_in.weight")
    emb = [cond[0]] + [
        shape(f"controlnet_cond_embedding.blocks.{2 * j + 1}.weight")[0]
        for j in range(_count(keys, "controlnet_cond_embedding.blocks.") // 2)
    ]
    levels = _count(keys, "down_blocks.")
    widths, layers, types, depths = [], [], [], []
    for b in range(levels):
        head = f"down_blocks.{b}."
        n_res = _count(keys, head + "resnets.")
        widths.append(shape(f"{head}resnets.0.conv1.weight")[0])
        layers.append(n_res)
        n_att = _count(keys, head + "attentions.")
        if n_att:
            per = {_count(keys, f"{head}attentions.{j}.transformer_blocks.") for j in range(n_att)}
            if len(per) != 1:
                raise ModelLoadError(path, f"ControlNet architecture: level {b} mixes attention depths {per}")
            types.append("CrossAttnDownBlock2D")
            depths.append(per.pop())
        else:
            types.append("DownBlock2D")
            depths.append(1)
    if len(set(layers)) != 1:
        raise ModelLoadError(path, f"ControlNet architecture: res blocks per level differ ({layers})")
    if _count(keys, "mid_block.attentions."):
        mid_type, mid_depth = (
            "UNetMidBlock2DCrossAttn",
            _count(keys, "mid_block.attentions.0.transformer_blocks."),
        )
    else:
        mid_type, mid_depth = "UNetMidBlock2D", 0
    if mid_depth and depths[-1] != mid_depth and types[-1] == "CrossAttnDownBlock2D":
        raise ModelLoadError(
            path, f"ControlNet architecture: mid depth {mid_depth} differs from the last level's {depths[-1]}"
        )
    if types[-1] == "DownBlock2D":
        depths[-1] = mid_depth or 1
    to_k = next((s for k, s in sorted(shapes.items()) if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((s for k, s in sorted(shapes.items()) if k.endswith(".proj_in.weight")), None)
    linear = proj_in is not None and len(proj_in) == 2
    context = int(to_k[1]) if to_k is not None else None
    cfg: dict[str, Any] = {
        "in_channels": in_ch,
        "conditioning_channels": cond[1],
        "down_block_types": tuple(types),
        "mid_block_type": mid_type,
        "block_out_channels": tuple(widths),
        "layers_per_block": layers[0],
        "cross_attention_dim": context if context is not None else 768,
        "use_linear_projection": linear,
        "transformer_layers_per_block": depths[0] if len(set(depths)) == 1 else tuple(depths),
        "attention_head_dim": unet_heads(widths, linear),
        "conditioning_embedding_out_channels": tuple(emb),
    }
    temb = shape("time_embedding.linear_1.weight")
    if temb[0] != 4 * base_ch:
        raise ModelLoadError(
            path, f"ControlNet architecture: time embedding {temb[0]} wide, not 4 x {base_ch}"
        )
    family = "sd2" if linear else "sd1"
    if "add_embedding.linear_1.weight" in shapes:
        family = "sdxl"
        cfg.update(
            addition_embed_type="text_time",
            projection_class_embeddings_input_dim=shape("add_embedding.linear_1.weight")[1],
        )
    return ControlNetArch(cfg, family, context, layout)


class _Shaped:
    """Stands in for a tensor where only `.shape` is read (renaming a header's keys)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


def full_config(arch: ControlNetArch, base_unet: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The config to build, with what no tensor shows taken from the checkpoint's UNet (norm groups, time
    embedding, SDXL's time-id width), checked against it (context width, vector width)."""
    cfg = dict(arch.config)
    for key in (
        "norm_num_groups",
        "norm_eps",
        "flip_sin_to_cos",
        "freq_shift",
        "act_fn",
        "upcast_attention",
        "resnet_time_scale_shift",
    ):
        if key in base_unet:
            cfg[key] = base_unet[key]
    if arch.context_dim is None:
        cfg["cross_attention_dim"] = int(base_unet.get("cross_attention_dim", 768))
    elif int(base_unet.get("cross_attention_dim", arch.context_dim)) != arch.context_dim:
        raise ModelLoadError(
            path,
            f"the ControlNet reads a {arch.context_dim}-wide prompt, the checkpoint "
            f"gives {base_unet.get('cross_attention_dim')}: made for another model family",
        )
    if arch.family == "sdxl":
        adm = int(cfg["projection_class_embeddings_input_dim"])
        if int(base_unet.get("projection_class_embeddings_input_dim") or 0) != adm:
            raise ModelLoadError(
                path,
                f"the ControlNet's vector condition is {adm} wide, the checkpoint's "
                f"{base_unet.get('projection_class_embeddings_input_dim')}",
            )
        cfg["addition_time_embed_dim"] = int(base_unet["addition_time_embed_dim"])
    return cfg
