"""The architecture of a Stable Diffusion single file, read from its key names and tensor shapes.

A family's stock config is only the starting point: every field the tensors show is derived from them, so
distilled and pruned files (SSD-1B, Segmind Vega, KOALA, BK-SDM, small-sd / tiny-sd) and tiny test models
load with their own shapes. What the tensors cannot show (norm groups, `upcast_attention`, `sample_size`,
the VAE scaling factor, tokenizer ids) comes from the family's shipped config.

UNet (keys under `model.diffusion_model.`, LDM layout):
    in/out channels, base width        input_blocks.0.0.weight, out.2.weight
    levels, widths, res blocks/level   walk input_blocks.1..: a `0.op` (Downsample) closes a level, every
                                       ResBlock (`0.in_layers`) adds a layer of width `0.out_layers.3` rows
    attention depth per layer          count of `<block>.1.transformer_blocks.N` (0: no attention)
    up side                            output_blocks, (layers + 1) per level, deepest level first
    mid block                          `middle_block.1.proj_in`: with attention; only `middle_block.0`: one
                                       ResBlock (SSD-1B, Vega); nothing: none (BK-SDM Small/Tiny)
    cross-attention width, projection  `attn2.to_k` columns; `proj_in` rank (2: Linear, 4: 1x1 conv)
    vector conditioning                `label_emb.0.0.weight` columns = pooled width + n x time-id width
                                       (SDXL base n = 6: sizes and crop; refiner n = 5: with aesthetic score)
    heads (not in the weights)         conv projection (SD 1.x-like): 8 heads; Linear (SD 2.x, SDXL-likes):
                                       64-channel heads, one head for widths under 64 (tiny models)
Text encoders: width, layers, MLP width, positions, vocabulary and projection from shapes; heads = width / 64
(at least 1); CLIP-L (HF layout) uses quick_gelu, OpenCLIP (open_clip layout) gelu. SD 2.x conditions on the
penultimate layer, so its encoder is built one layer short and the file's last layer is not used.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.runtime.errors import ModelLoadError

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_CLIP = "cond_stage_model.transformer.text_model."
SD2_OPENCLIP = "cond_stage_model.model."
XL_CLIP = "conditioner.embedders.0.transformer.text_model."
XL_BIGG = "conditioner.embedders.1.model."
EMBEDDER0_OPENCLIP = "conditioner.embedders.0.model."  # SDXL refiner (bigG) or SD 2.1 Turbo (OpenCLIP-H)

Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a file: where its keys are, their layout and the transformers config to build.

    role: "clip" (SD 1.x CLIP-L), "openclip" (SD 2.x OpenCLIP-H), "xl_clip_l", "xl_bigg";
    layout: "hf" (transformers names under `prefix`) or "openclip" (open_clip names, fused QKV);
    projection: build `CLIPTextModelWithProjection` (the pooled output SDXL needs);
    unused_layers: trailing layers of the file the encoder does not use (SD 2.x: 1)."""

    role: str
    prefix: str
    layout: str
    config: dict[str, Any]
    projection: bool
    unused_layers: int = 0

    @property
    def label(self) -> str:
        return {"clip": "text encoder (CLIP ViT-L)", "openclip": "text encoder (OpenCLIP ViT-H)",
                "xl_clip_l": "text encoder 1 (CLIP ViT-L)", "xl_bigg": "text encoder 2 (OpenCLIP ViT-bigG)"
                }[self.role]


class _Keys:
    """The keys under one prefix, with every dotted prefix indexed for O(1) "does a block exist" tests."""

    def __init__(self, shapes: Shapes, prefix: str):
        self.shapes = {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
        self.heads: set[str] = set()
        for key in self.shapes:
            parts = key.split(".")
            for n in range(1, len(parts)):
                self.heads.add(".".join(parts[:n]) + ".")

    def has(self, head: str) -> bool:
        return head in self.heads or head in self.shapes

    def count(self, head: str) -> int:
        """How many consecutive children `head0.`, `head1.`, ... exist."""
        n = 0
        while f"{head}{n}." in self.heads:
            n += 1
        return n

    def shape(self, key: str) -> tuple[int, ...] | None:
        return self.shapes.get(key)


def unet_heads(widths: Sequence[int], linear: bool) -> int | list[int]:
    """The head counts the families use (not readable from square attention weights)."""
    return 8 if not linear else [max(1, int(w) // 64) for w in widths]


def text_heads(width: int) -> int:
    return max(1, int(width) // 64)


def _fail(path: str, what: str) -> ModelLoadError:
    return ModelLoadError(path, f"UNet architecture: {what}")


def _uniform(values: Sequence[int]) -> int | None:
    return values[0] if values and all(v == values[0] for v in values) else None


def unet_config(shapes: Shapes, base: Mapping[str, Any], path: str = "<state dict>",
                pooled_dim: int | None = None, time_ids: int = 6) -> dict[str, Any]:
    """The diffusers `UNet2DConditionModel` config of the UNet in `shapes` ({file key: shape}).

    base: the family's stock config, kept for what the tensors cannot show. pooled_dim: the pooled text
    width feeding `label_emb` (SDXL bigG projection), time_ids: how many size/score ids follow it."""
    u = _Keys(shapes, UNET)
    conv_in = u.shape("input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise _fail(path, "no input convolution (input_blocks.0.0.weight)")
    base_ch, in_ch = int(conv_in[0]), int(conv_in[1])
    # -- input side: levels of (width, attention depth) per ResBlock
    levels: list[list[tuple[int, int]]] = [[]]
    i = 1
    while True:
        head = f"input_blocks.{i}."
        if u.has(head + "0.op.weight"):
            if not levels[-1]:
                raise _fail(path, f"{head}0.op: a downsample with no ResBlock before it")
            levels.append([])
        elif u.has(head + "0.in_layers.0.weight"):
            width = u.shape(head + "0.out_layers.3.weight")
            if width is None:
                raise _fail(path, f"{head}0 is a ResBlock without out_layers.3")
            levels[-1].append((int(width[0]), u.count(head + "1.transformer_blocks.")))
        else:
            break
        i += 1
    if not levels[-1]:
        raise _fail(path, "the last input level has no ResBlock")
    widths = []
    for n, level in enumerate(levels):
        w = _uniform([lw for lw, _ in level])
        if w is None:
            raise _fail(path, f"level {n} mixes widths {[lw for lw, _ in level]}")
        widths.append(w)
    layers = _uniform([len(level) for level in levels])
    if layers is None:
        raise _fail(path, f"res blocks per level differ ({[len(lv) for lv in levels]}): not supported")
    # -- output side: (layers + 1) blocks per level, deepest level first
    up_depths: list[list[int]] = []
    for b in range(len(levels)):
        row = []
        for j in range(layers + 1):
            head = f"output_blocks.{b * (layers + 1) + j}."
            if not u.has(head + "0.in_layers.0.weight"):
                raise _fail(path, f"{head}0 (ResBlock) missing: output side does not mirror the input side")
            row.append(u.count(head + "1.transformer_blocks."))
        up_depths.append(row)
    if u.has(f"output_blocks.{len(levels) * (layers + 1)}."):
        raise _fail(path, "more output blocks than the input side has")
    down_depths = [[d for _, d in level] for level in levels]

    def block_type(depths: list[int], kind: str, where: str) -> str:
        if all(d > 0 for d in depths):
            return f"CrossAttn{kind}Block2D"
        if all(d == 0 for d in depths):
            return f"{kind}Block2D"
        raise _fail(path, f"{where} mixes blocks with and without attention ({depths})")

    down_types = [block_type(d, "Down", f"input level {n}") for n, d in enumerate(down_depths)]
    up_types = [block_type(d, "Up", f"output level {n}") for n, d in enumerate(up_depths)]
    # -- mid block
    if u.has("middle_block.1.proj_in.weight"):
        mid_type: str | None = "UNetMidBlock2DCrossAttn"
        mid_depth = u.count("middle_block.1.transformer_blocks.")
    elif u.has("middle_block.0.in_layers.0.weight"):
        mid_type, mid_depth = "UNetMidBlock2D", 0
    else:
        mid_type, mid_depth = None, 0
    # -- transformer depths (diffusers: the mid block takes the last level's entry, its first if a list)
    uniform_down = [_uniform(d) for d in down_depths]
    symmetric = all(
        uniform_down[n] is not None and _uniform(up_depths[len(levels) - 1 - n]) == uniform_down[n]
        for n in range(len(levels)))
    last = len(levels) - 1
    if mid_depth and down_depths[last][0] and down_depths[last][0] != mid_depth:
        raise _fail(path, f"mid-block depth {mid_depth} differs from the last level's {down_depths[last][0]}")
    fill = [1] * len(levels)
    fill[last] = mid_depth or 1
    depth_cfg: dict[str, Any]
    if symmetric:
        per_level = [uniform_down[n] or fill[n] for n in range(len(levels))]
        depth_cfg = {"transformer_layers_per_block": per_level[0] if _uniform(per_level) else per_level,
                     "reverse_transformer_layers_per_block": None}
    else:
        down = [[d or fill[n] for d in down_depths[n]] for n in range(len(levels))]
        up = [[d or 1 for d in row] for row in up_depths]
        depth_cfg = {"transformer_layers_per_block": down, "reverse_transformer_layers_per_block": up}
    # -- attention widths and projections
    to_k = next((s for k, s in sorted(u.shapes.items()) if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((s for k, s in sorted(u.shapes.items()) if k.endswith(".proj_in.weight")), None)
    linear = bool(base.get("use_linear_projection", False)) if proj_in is None else len(proj_in) == 2
    cfg: dict[str, Any] = {k: v for k, v in base.items() if not k.startswith("_")}
    cfg.update(
        in_channels=in_ch, out_channels=int((u.shape("out.2.weight") or (4,))[0]), layers_per_block=layers,
        block_out_channels=widths, down_block_types=down_types, up_block_types=up_types, mid_block_type=mid_type,
        cross_attention_dim=int(to_k[1]) if to_k is not None else base.get("cross_attention_dim", 768),
        use_linear_projection=linear, attention_head_dim=unet_heads(widths, linear), num_attention_heads=None,
        class_embed_type=None, num_class_embeds=None, addition_embed_type=None,
        **depth_cfg,
    )
    temb = u.shape("time_embed.0.weight")
    if temb is not None and int(temb[0]) != 4 * base_ch:
        cfg["time_embedding_dim"] = int(temb[0])
    for key, name in (("input_blocks.0.0.weight", "conv_in_kernel"), ("out.2.weight", "conv_out_kernel")):
        shape = u.shape(key)
        if shape is not None and len(shape) == 4 and int(shape[-1]) != 3:
            cfg[name] = int(shape[-1])
    label = u.shape("label_emb.0.0.weight")
    if label is not None:
        adm = int(label[1])
        if pooled_dim is None or (adm - pooled_dim) % time_ids or adm <= pooled_dim:
            raise ModelLoadError(path, f"the UNet takes a {adm}-wide vector condition (label_emb) that no "
                                       "SDXL text encoder in the file explains: an SD 2.x unCLIP (image "
                                       "variation) model? Not supported")
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=(adm - pooled_dim) // time_ids,
                   projection_class_embeddings_input_dim=adm)
    elif base.get("addition_embed_type"):
        raise _fail(path, "an SDXL-family file whose UNet has no label_emb (vector conditioning)")
    return cfg


def vae_config(shapes: Shapes, base: Mapping[str, Any], path: str = "<state dict>") -> dict[str, Any]:
    """The diffusers `AutoencoderKL` config of the VAE under `first_stage_model.`."""
    v = _Keys(shapes, VAE)
    needed = ("encoder.conv_in.weight", "decoder.conv_in.weight", "decoder.conv_out.weight")
    missing = [k for k in needed if v.shape(k) is None]
    if missing:
        raise ModelLoadError(path, f"VAE weights missing from the file (no {VAE}{missing[0]})")
    levels = v.count("encoder.down.")
    widths = []
    for n in range(levels):
        conv = v.shape(f"encoder.down.{n}.block.0.conv1.weight")
        if conv is None:
            raise ModelLoadError(path, f"VAE architecture: encoder.down.{n} has no first ResBlock")
        widths.append(int(conv[0]))
    cfg: dict[str, Any] = {k: val for k, val in base.items() if not k.startswith("_")}
    cfg.update(
        in_channels=int(v.shape("encoder.conv_in.weight")[1]), out_channels=int(v.shape("decoder.conv_out.weight")[0]),
        latent_channels=int(v.shape("decoder.conv_in.weight")[1]), block_out_channels=widths,
        layers_per_block=v.count("encoder.down.0.block."), down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
    )
    if not v.has("quant_conv.weight"):
        cfg["use_quant_conv"] = False
    if not v.has("post_quant_conv.weight"):
        cfg["use_post_quant_conv"] = False
    return cfg


def hf_text_encoder(shapes: Shapes, prefix: str, role: str, base: Mapping[str, Any], path: str
                    ) -> TextEncoderSpec:
    """A transformers-layout CLIP text encoder under `prefix` (its config's activation is CLIP-L's)."""
    t = _Keys(shapes, prefix)
    tok = t.shape("embeddings.token_embedding.weight")
    pos = t.shape("embeddings.position_embedding.weight")
    fc1 = t.shape("encoder.layers.0.mlp.fc1.weight")
    if tok is None or pos is None or fc1 is None:
        raise ModelLoadError(path, f"text encoder weights missing from the file (no {prefix}embeddings / layers)")
    width = int(tok[1])
    cfg = {k: v for k, v in base.items() if not k.startswith("_") and k not in ("architectures",)}
    cfg.update(hidden_size=width, vocab_size=int(tok[0]), max_position_embeddings=int(pos[0]),
               num_hidden_layers=t.count("encoder.layers."), intermediate_size=int(fc1[0]),
               num_attention_heads=text_heads(width), hidden_act="quick_gelu", projection_dim=width)
    return TextEncoderSpec(role, prefix, "hf", cfg, projection=False)


def _openclip(shapes: Shapes, prefix: str, role: str, base: Mapping[str, Any], path: str,
              projection: bool, unused_layers: int) -> TextEncoderSpec:
    t = _Keys(shapes, prefix)
    tok, pos = t.shape("token_embedding.weight"), t.shape("positional_embedding")
    fc = t.shape("transformer.resblocks.0.mlp.c_fc.weight")
    if tok is None or pos is None or fc is None:
        raise ModelLoadError(path, f"text encoder weights missing from the file (no {prefix}token_embedding / "
                                   "resblocks)")
    width = int(tok[1])
    proj = t.shape("text_projection")
    cfg = {k: v for k, v in base.items() if not k.startswith("_") and k not in ("architectures",)}
    cfg.update(hidden_size=width, vocab_size=int(tok[0]), max_position_embeddings=int(pos[0]),
               num_hidden_layers=t.count("transformer.resblocks.") - unused_layers, intermediate_size=int(fc[0]),
               num_attention_heads=text_heads(width), hidden_act="gelu",
               projection_dim=int(proj[1]) if proj is not None and projection else width)
    if projection and proj is None:
        raise ModelLoadError(path, f"{prefix}text_projection missing (the SDXL pooled output needs it)")
    return TextEncoderSpec(role, prefix, "openclip", cfg, projection=projection, unused_layers=unused_layers)


def text_encoders(shapes: Shapes, family: str, refiner: bool, bases: Sequence[Mapping[str, Any]],
                  path: str = "<state dict>") -> list[TextEncoderSpec]:
    """The text encoders of a file of `family` (bases: the family's shipped text encoder configs, in order)."""
    if family == "sd1":
        return [hf_text_encoder(shapes, SD1_CLIP, "clip", bases[0], path)]
    if family == "sd2":
        prefix = SD2_OPENCLIP if any(k.startswith(SD2_OPENCLIP) for k in shapes) else EMBEDDER0_OPENCLIP
        return [_openclip(shapes, prefix, "openclip", bases[0], path, projection=False, unused_layers=1)]
    if refiner:
        return [_openclip(shapes, EMBEDDER0_OPENCLIP, "xl_bigg", bases[-1], path, projection=True, unused_layers=0)]
    return [hf_text_encoder(shapes, XL_CLIP, "xl_clip_l", bases[0], path),
            _openclip(shapes, XL_BIGG, "xl_bigg", bases[1], path, projection=True, unused_layers=0)]


def pooled_width(specs: Sequence[TextEncoderSpec]) -> int | None:
    """The pooled text width an SDXL UNet's `label_emb` starts with (the bigG projection), else None."""
    return next((int(s.config["projection_dim"]) for s in specs if s.projection), None)

