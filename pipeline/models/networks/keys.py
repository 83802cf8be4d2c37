"""Key layouts of LoRA-family files -> the parameters of our diffusers modules.

Understood layouts, for SD 1.x, SD 2.x and SDXL (both text encoders):
  kohya      `lora_unet_<path>`, `lora_te_<path>` (SD1/SD2), `lora_te1_` / `lora_te2_` (SDXL CLIP-L / bigG),
             `<path>` with `.` written as `_`; UNet paths in diffusers naming (SD1/SD2 trainers) or LDM naming
             (`input_blocks_4_1_...`, SDXL trainers and A1111 exports); text-encoder paths in HF CLIP naming.
  peft       `unet.<path>` / `text_encoder.<path>` / `text_encoder_2.<path>` with `lora_A`/`lora_B`,
             `lora.down`/`lora.up` or `lora_linear_layer.down`/`.up`.
A key is `<module stem>.<suffix>`; the suffixes below name the factor each tensor is (peft names mapped
to kohya's)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

SUFFIXES = {
    "lora_up.weight": "lora_up", "lora_down.weight": "lora_down", "lora_mid.weight": "lora_mid",
    "lora_B.weight": "lora_up", "lora_A.weight": "lora_down",
    "lora.up.weight": "lora_up", "lora.down.weight": "lora_down",
    "lora_linear_layer.up.weight": "lora_up", "lora_linear_layer.down.weight": "lora_down",
    "alpha": "alpha", "scale": "scale", "dora_scale": "dora_scale", "bias": "bias",
    "hada_w1_a": "hada_w1_a", "hada_w1_b": "hada_w1_b", "hada_w2_a": "hada_w2_a", "hada_w2_b": "hada_w2_b",
    "hada_t1": "hada_t1", "hada_t2": "hada_t2",
    "lokr_w1": "lokr_w1", "lokr_w1_a": "lokr_w1_a", "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2", "lokr_w2_a": "lokr_w2_a", "lokr_w2_b": "lokr_w2_b", "lokr_t2": "lokr_t2",
    "weight": "weight", "on_input": "on_input",
    "diff": "diff", "diff_b": "diff_b", "w_norm": "w_norm", "b_norm": "b_norm",
    "a1.weight": "a1", "a2.weight": "a2", "b1.weight": "b1", "b2.weight": "b2",
    "oft_blocks": "oft_blocks", "oft_diag": "oft_diag", "rescale": "rescale",
}
# longest first, so that `lora_up.weight` wins over `weight`
_BY_LENGTH = sorted(SUFFIXES, key=len, reverse=True)
_WEIGHTED = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm, torch.nn.GroupNorm)


def split_key(key: str) -> tuple[str, str] | None:
    """(module stem, factor name) of a file key, or None when the key names no factor we know."""
    for suffix in _BY_LENGTH:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], SUFFIXES[suffix]
    return None


@dataclass(frozen=True)
class Target:
    """A module of the loaded model a network patches: its component, dotted path and whether the `te`
    (text encoder) or `unet` multiplier applies."""

    component: str  # "unet", "text_encoder", "text_encoder_2"
    path: str
    module: Any

    @property
    def is_te(self) -> bool:
        return self.component != "unet"


def _ldm_unet_names(config: Any) -> dict[str, str]:
    """diffusers UNet module path -> LDM path prefix rewrites, as {diffusers prefix: ldm prefix}."""
    lpb = config.layers_per_block
    n = int(lpb if isinstance(lpb, int) else lpb[0])
    table = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2",
             "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
             "mid_block.resnets.1": "middle_block.2"}
    blocks = len(config.block_out_channels)
    for i in range(blocks):
        for j in range(n):
            k = 1 + (n + 1) * i + j
            table[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{k}.0"
            table[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{k}.1"
        table[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(n + 1) * (i + 1)}.0.op"
        has_attn = "CrossAttn" in str(config.up_block_types[i])
        for j in range(n + 1):
            k = (n + 1) * i + j
            table[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{k}.0"
            table[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{k}.1"
        slot = 2 if has_attn else 1
        table[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{(n + 1) * i + n}.{slot}.conv"
    return table


_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def ldm_unet_path(path: str, table: dict[str, str]) -> str | None:
    """The LDM (A1111 / SGM) name of a diffusers UNet module path, or None."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in table:
            rest = parts[cut:]
            if ".resnets." in head + "." and rest and rest[0] in _RESNET:
                rest = [_RESNET[rest[0]], *rest[1:]]
            return ".".join([table[head], *rest])
    return None


def target_map(model: Any) -> dict[str, Target]:
    """Every name a file may use for each patchable module of `model` (an SDModel) -> its Target."""
    out: dict[str, Target] = {}
    table = _ldm_unet_names(model.unet.config)
    for path, module in model.unet.named_modules():
        if not isinstance(module, _WEIGHTED):
            continue
        t = Target("unet", path, module)
        out["lora_unet_" + path.replace(".", "_")] = t
        out["unet." + path] = t
        ldm = ldm_unet_path(path, table)
        if ldm is not None:
            out.setdefault("lora_unet_" + ldm.replace(".", "_"), t)
    if model.family == "sdxl":
        prefixes = [("text_encoder", ["lora_te1_"]), ("text_encoder_2", ["lora_te2_"])]
    else:
        prefixes = [("text_encoder", ["lora_te_", "lora_te1_"])]
    for (component, kohya), encoder in zip(prefixes, model.text_encoders):
        for path, module in encoder.named_modules():
            if not isinstance(module, _WEIGHTED):
                continue
            t = Target(component, path, module)
            # HF CLIP paths as trainers saw them: `text_model.encoder.layers.0...` (transformers 5 puts the
            # text model's modules at the top level)
            hf = path if path.startswith("text_model.") else f"text_model.{path}"
            for name in {path, hf}:
                for prefix in kohya:
                    out[prefix + name.replace(".", "_")] = t
                out[f"{component}.{name}"] = t
    return out


def file_family(keys: list[str]) -> str | None:
    """'sdxl' when a file's keys name two text encoders, 'sd' when they name one, None when they name
    none (a UNet-only file, which fits either by its prefix)."""
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys):
        return "sdxl"
    if any(k.startswith(("lora_te_", "text_encoder.")) for k in keys):
        return "sd"
    return None
