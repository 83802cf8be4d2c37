"""LDM (A1111 single-file) key names -> diffusers / transformers key names, one component at a time.

Every function takes the file's tensors under the component's prefix (prefix already removed) and returns
`(converted, unused, origin)`: the tensors under the module's names, the file keys it could not place, and
for each module name the file key it came from (for error messages). The loader turns a non-empty `unused`
into an error, so a file key is never dropped silently.
Written from the layouts' definitions (openaimodel's block indices, the ldm autoencoder's names,
open_clip's TextTransformer), the inverse of `tests/fixtures/ldm_export.py`.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

Tensors = Mapping[str, torch.Tensor]
Converted = tuple[dict[str, torch.Tensor], list[str], dict[str, str]]

_UNET_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_UNET_TOP = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
             "label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2.",
             "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out."}


def _rename(rest: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return None


def unet(sd: Tensors, layers_per_block: int) -> Converted:
    """openaimodel UNet keys -> `UNet2DConditionModel` keys; `layers_per_block` as in the config."""
    per = layers_per_block + 1
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unused: list[str] = []
    for key, value in sd.items():
        new = _unet_key(key, layers_per_block, per)
        if new is None:
            unused.append(key)
        else:
            out[new], origin[new] = value, key
    return out, unused, origin


def _unet_key(key: str, lpb: int, per: int) -> str | None:
    for old, new in _UNET_TOP.items():
        if key.startswith(old):
            return new + key[len(old):]
    parts = key.split(".")
    if len(parts) < 4:
        return None
    group, block, slot, rest = parts[0], parts[1], parts[2], ".".join(parts[3:])
    if not block.isdigit():
        return None
    n = int(block)
    if group == "input_blocks":
        b, j = divmod(n - 1, per)
        if j == lpb:
            return f"down_blocks.{b}.downsamplers.0.conv.{rest[3:]}" if slot == "0" and rest.startswith("op.") else None
        if slot == "0":
            res = _rename(rest, _UNET_RESNET)
            return f"down_blocks.{b}.resnets.{j}.{res}" if res else None
        return f"down_blocks.{b}.attentions.{j}.{rest}" if slot == "1" else None
    if group == "middle_block":
        body = ".".join(parts[2:])
        if n in (0, 2):
            res = _rename(body, _UNET_RESNET)
            return f"mid_block.resnets.{n // 2}.{res}" if res else None
        return f"mid_block.attentions.0.{body}" if n == 1 else None
    if group == "output_blocks":
        b, j = divmod(n, per)
        if slot == "0":
            res = _rename(rest, _UNET_RESNET)
            return f"up_blocks.{b}.resnets.{j}.{res}" if res else None
        if rest.startswith("conv.") and slot in ("1", "2"):
            return f"up_blocks.{b}.upsamplers.0.conv.{rest[5:]}"
        return f"up_blocks.{b}.attentions.{j}.{rest}" if slot == "1" else None
    return None


def vae(sd: Tensors, levels: int) -> Converted:
    """ldm autoencoder keys -> `AutoencoderKL` keys (1x1-conv attention projections become Linear)."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unused: list[str] = []
    for key, value in sd.items():
        new = _vae_key(key, levels)
        if new is None:
            unused.append(key)
            continue
        if ".mid_block.attentions.0.to_" in new and new.endswith(".weight") and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[new], origin[new] = value, key
    return out, unused, origin


def _vae_key(key: str, levels: int) -> str | None:
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return None
    if rest.startswith(("conv_in.", "conv_out.")):
        return key
    if rest.startswith("norm_out."):
        return f"{side}.conv_norm_out.{rest[len('norm_out.'):]}"
    parts = rest.split(".")
    if parts[0] == "mid" and len(parts) >= 3:
        tail = ".".join(parts[2:])
        if parts[1] in ("block_1", "block_2"):
            res = _rename(tail, _VAE_RESNET)
            return f"{side}.mid_block.resnets.{int(parts[1][-1]) - 1}.{res}" if res else None
        if parts[1] == "attn_1":
            att = _rename(tail, _VAE_ATTN)
            return f"{side}.mid_block.attentions.0.{att}" if att else None
        return None
    if parts[0] in ("down", "up") and len(parts) >= 4 and parts[1].isdigit():
        level = int(parts[1])
        blocks, index = ("down_blocks", level) if parts[0] == "down" else ("up_blocks", levels - 1 - level)
        if parts[2] == "block" and parts[3].isdigit():
            res = _rename(".".join(parts[4:]), _VAE_RESNET)
            return f"{side}.{blocks}.{index}.resnets.{parts[3]}.{res}" if res else None
        if parts[2] in ("downsample", "upsample") and parts[3] == "conv":
            sampler = "downsamplers" if parts[2] == "downsample" else "upsamplers"
            return f"{side}.{blocks}.{index}.{sampler}.0.conv.{'.'.join(parts[4:])}"
    return None


def hf_clip(sd: Tensors, module_prefix: str) -> Converted:
    """transformers-layout CLIP keys (under `text_model.` in the file) -> the module's own names
    (`module_prefix` is "text_model." for modules whose state dict keeps it, else "")."""
    keys = [k for k in sd if k != "embeddings.position_ids"]
    return {module_prefix + k: sd[k] for k in keys}, [], {module_prefix + k: k for k in keys}


_OPENCLIP_LAYER = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def openclip(sd: Tensors, module_prefix: str, layers: int, projection: bool) -> Converted:
    """open_clip TextTransformer keys -> transformers CLIP names; the fused QKV is split in three by the
    width. Layers from `layers` on (SD 2.x's last) and the projection when not `projection` are returned
    as unused, for the caller to declare expected."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unused: list[str] = []
    p = module_prefix
    top = {"token_embedding.weight": "embeddings.token_embedding.weight",
           "positional_embedding": "embeddings.position_embedding.weight",
           "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
    for key, value in sd.items():
        if key in top:
            out[p + top[key]], origin[p + top[key]] = value, key
            continue
        if key == "text_projection" and projection:
            out["text_projection.weight"], origin["text_projection.weight"] = value.T.contiguous(), key
            continue
        parts = key.split(".")
        if key.startswith("transformer.resblocks.") and len(parts) > 3 and parts[2].isdigit():
            i, rest = int(parts[2]), ".".join(parts[3:])
            if i >= layers:
                unused.append(key)
                continue
            dst = f"{p}encoder.layers.{i}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    out[f"{dst}self_attn.{name}_proj.{kind}"] = chunk.contiguous()
                    origin[f"{dst}self_attn.{name}_proj.{kind}"] = key
                continue
            res = _rename(rest, _OPENCLIP_LAYER)
            if res is not None:
                out[dst + res], origin[dst + res] = value, key
                continue
        unused.append(key)
    return out, unused, origin
