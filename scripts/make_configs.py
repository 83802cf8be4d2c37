#!/usr/bin/env python
"""Generate `pipeline/configs/`: offline, config-only diffusers directories for every checkpoint family.

Why: the loader reads a checkpoint's architecture from its tensors (pipeline/models/checkpoints/architecture.py);
what tensors cannot show (the scheduler, sample size, VAE scaling factor, tokenizer ids) comes from the
family's configs here, written from the public facts of each family, so that nothing is fetched at run
time. The stock UNet / VAE / text encoder configs are also the reference the tests compare derived
architectures with.

Families written (one directory each, diffusers layout):

    sd1             SD 1.x (CLIP ViT-L/14 text encoder, 768-d cross-attention), epsilon, 512 px
    sd2             SD 2.x 768-v (OpenCLIP ViT-H text encoder, 1024-d cross-attention), v_prediction, 768 px
    sd2-base        SD 2.x 512-base: the same architecture, epsilon, 512 px
    sdxl            SDXL base 1.0 (CLIP ViT-L + OpenCLIP ViT-bigG, text_time conditioning), epsilon, 1024 px

SD 2.x 768-v and 512-base have identical weights' shapes; only the prediction type (and native size)
differ, so the loader picks between `sd2` and `sd2-base` from evidence (see pipeline/models/checkpoints/loader.py:
a sidecar `.yaml`, a `v_pred` key, else the weight probe A1111 also uses).

Tokenizer: the CLIP BPE vocabulary `bpe_simple_vocab_16e6.txt.gz` (MIT licence, (c) OpenAI) is taken from
the `clip-anytorch` wheel (downloaded with `pip download --no-deps` into a temporary directory, checked
against a pinned sha256) and converted to `vocab.json` + `merges.txt` in openai/CLIP SimpleTokenizer's
order. The result is checked: "a photo of a cat" -> 49406, 320, 1125, 539, 320, 2368, 49407.
It is written once, to `clip-tokenizer/` (every SD text encoder tokenizes alike): SD 1.x and SDXL's first
encoder pad with <|endoftext|> (the files' setting); SD 2.x and SDXL's second encoder pad with "!" (id 0),
as OpenCLIP does, which the loader sets (`pipeline/models/checkpoints/shipped.py`).

Usage (re-run after changing anything here; the output is checked in):

    .venv/bin/python scripts/make_configs.py            # writes pipeline/configs/
    .venv/bin/python scripts/make_configs.py --out DIR  # somewhere else
    .venv/bin/python scripts/make_configs.py --bpe FILE # use a local bpe_simple_vocab_16e6.txt.gz

The output is deterministic: same inputs, same bytes.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "pipeline" / "configs"

CLIP_WHEEL = "clip-anytorch==2.6.0"
CLIP_WHEEL_SHA256 = "ebc0afed243851b9dc7e16ab8afb665237e8a5838986e97cd99f123ae4ce94ce"
BPE_MEMBER = "clip/bpe_simple_vocab_16e6.txt.gz"
DIFFUSERS_VERSION = "0.42.1"

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
TOKENIZER = "clip-tokenizer"
CHECK_TEXT, CHECK_IDS = "a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407]


# --------------------------------------------------------------------------------------------------
# Tokenizer: BPE merges file -> vocab.json / merges.txt
# --------------------------------------------------------------------------------------------------
def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2/CLIP BPE, in byte order 0..255.

    Printable Latin-1 bytes stand for themselves; every other byte b gets chr(256 + k), k counting up.
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(
        range(ord("®"), ord("ÿ") + 1))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def byte_alphabet_clip_order() -> list[str]:
    """The same 256 symbols in the order CLIP lists them: the kept bytes first, then the remapped ones."""
    alphabet = byte_alphabet()
    kept = [alphabet[b] for b in range(256) if ord(alphabet[b]) < 256]
    moved = [alphabet[b] for b in range(256) if ord(alphabet[b]) >= 256]
    return kept + moved


def convert_bpe(bpe_gz: bytes) -> tuple[dict[str, int], list[str]]:
    """Return (vocab, merges) in openai/CLIP SimpleTokenizer order (49408 tokens, 48894 merges)."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    # Line 0 is a version header; CLIP uses the next 49152 - 256 - 2 merges.
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = byte_alphabet_clip_order()
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == 49408 and len(merges) == 48894, (len(vocab), len(merges))
    return vocab, merges


def fetch_bpe(local: Path | None) -> bytes:
    if local is not None:
        return local.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, CLIP_WHEEL],
                       check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != CLIP_WHEEL_SHA256:
            raise SystemExit(f"{wheel.name}: sha256 {digest} != pinned {CLIP_WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(BPE_MEMBER)


def tokenizer_files(vocab: dict[str, int], merges: list[str], pad_token: str) -> dict[str, Any]:
    special = {
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token,
    }
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "clean_up_tokenization_spaces": True,
        "add_prefix_space": False,
        **special,
    }
    return {
        "vocab.json": vocab,
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": config,
        "special_tokens_map.json": special,
    }


# --------------------------------------------------------------------------------------------------
# Component configs, from the public architectures
# --------------------------------------------------------------------------------------------------
def scheduler(prediction_type: str, class_name: str) -> dict[str, Any]:
    """The training noise schedule shared by SD 1.x, 2.x and SDXL (scaled-linear 0.00085..0.012, 1000 steps)."""
    return {
        "_class_name": class_name,
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "trained_betas": None,
        "prediction_type": prediction_type,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
    }


def unet_sd(cross_attention_dim: int, attention_head_dim: Any, linear_proj: bool, sample_size: int,
            in_channels: int = 4) -> dict[str, Any]:
    """SD 1.x / 2.x UNet: 4 levels 320/640/1280/1280, 2 resnets per level, cross-attention on the first 3."""
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "attention_head_dim": attention_head_dim,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": cross_attention_dim,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "DownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": in_channels,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "sample_size": sample_size,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "upcast_attention": False,
        "use_linear_projection": linear_proj,
    }


def unet_sdxl() -> dict[str, Any]:
    """SDXL base UNet: 3 levels 320/640/1280, transformer depth 0/2/10 (1/2/10 as listed), 2048-d context,
    text_time added conditioning (pooled 1280 + 6 size/crop numbers x 256 = 2816)."""
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "class_embed_type": None,
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,
        "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "upcast_attention": False,
        "use_linear_projection": True,
    }


def vae(sample_size: int, scaling_factor: float, force_upcast: bool) -> dict[str, Any]:
    """The KL-f8 autoencoder shared by all three families (128/256/512/512, 4 latent channels)."""
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "force_upcast": force_upcast,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


def clip_text(width: int, layers: int, heads: int, act: str, projection_dim: int,
              with_projection: bool) -> dict[str, Any]:
    """A transformers CLIPTextConfig. eos_token_id 2 is the legacy value of the reference configs: it makes
    transformers pool at the argmax of the ids (the first <|endoftext|>), as CLIP and OpenCLIP do."""
    return {
        "architectures": ["CLIPTextModelWithProjection" if with_projection else "CLIPTextModel"],
        "model_type": "clip_text_model",
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": act,
        "hidden_size": width,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 4 * width,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "projection_dim": projection_dim,
        "vocab_size": 49408,
    }


CLIP_L = {"width": 768, "layers": 12, "heads": 12, "act": "quick_gelu", "projection_dim": 768}
# SD 2.x uses OpenCLIP ViT-H's penultimate layer: 23 of its 24 layers are kept (as in the reference config).
OPENCLIP_H = {"width": 1024, "layers": 23, "heads": 16, "act": "gelu", "projection_dim": 512}
OPENCLIP_BIGG = {"width": 1280, "layers": 32, "heads": 20, "act": "gelu", "projection_dim": 1280}


def model_index(pipeline: str, components: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "_class_name": pipeline,
        "_diffusers_version": DIFFUSERS_VERSION,
        **({"feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False}
           if pipeline != "StableDiffusionXLPipeline" else {"force_zeros_for_empty_prompt": True}),
        **components,
    }


SD_COMPONENTS = {
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
SDXL_COMPONENTS = {
    **SD_COMPONENTS,
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
}


def families(vocab: dict[str, int], merges: list[str]) -> dict[str, dict[str, Any]]:
    """Directory name -> {relative file path: JSON object or text}."""
    sd1 = {
        "model_index.json": model_index("StableDiffusionPipeline", SD_COMPONENTS),
        "scheduler/scheduler_config.json": scheduler("epsilon", "EulerDiscreteScheduler"),
        "unet/config.json": unet_sd(768, 8, False, 64),
        "vae/config.json": vae(512, 0.18215, False),
        "text_encoder/config.json": clip_text(**CLIP_L, with_projection=False),
    }

    def sd2(prediction_type: str, sample_size: int) -> dict[str, Any]:
        return {
            "model_index.json": model_index("StableDiffusionPipeline", SD_COMPONENTS),
            "scheduler/scheduler_config.json": scheduler(prediction_type, "EulerDiscreteScheduler"),
            "unet/config.json": unet_sd(1024, [5, 10, 20, 20], True, sample_size // 8),
            "vae/config.json": vae(sample_size, 0.18215, False),
            "text_encoder/config.json": clip_text(**OPENCLIP_H, with_projection=False),
        }

    sdxl = {
        "model_index.json": model_index("StableDiffusionXLPipeline", SDXL_COMPONENTS),
        "scheduler/scheduler_config.json": scheduler("epsilon", "EulerDiscreteScheduler"),
        "unet/config.json": unet_sdxl(),
        "vae/config.json": vae(1024, 0.13025, True),
        "text_encoder/config.json": clip_text(**CLIP_L, with_projection=False),
        "text_encoder_2/config.json": clip_text(**OPENCLIP_BIGG, with_projection=True),
    }
    return {"sd1": sd1, "sd2": sd2("v_prediction", 768),
            "sd2-base": sd2("epsilon", 512), "sdxl": sdxl,
            "clip-tokenizer": tokenizer_files(vocab, merges, pad_token=EOS)}


LICENSE_NOTE = """\
Configuration files in this directory are generated by scripts/make_configs.py (hiresd, MIT).

The tokenizer files (clip-tokenizer/vocab.json and merges.txt) are a format conversion of
bpe_simple_vocab_16e6.txt.gz from OpenAI's CLIP (https://github.com/openai/CLIP), as shipped in the
clip-anytorch 2.6.0 wheel, under the MIT License:

MIT License

Copyright (c) 2021 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def write_tree(out: Path, tree: dict[str, dict[str, Any]]) -> None:
    if out.exists():
        shutil.rmtree(out)
    for family, files in tree.items():
        for rel, body in files.items():
            path = out / family / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(body, str):
                path.write_text(body, encoding="utf-8")
            else:
                path.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "LICENSE-clip-vocab.txt").write_text(LICENSE_NOTE, encoding="utf-8")
    (out / "README.md").write_text(
        "Generated by `scripts/make_configs.py`; do not edit by hand. One diffusers-layout, config-only\n"
        "directory per checkpoint family: " + ", ".join(f"`{f}`" for f in tree if f != TOKENIZER) + ";\n"
        f"the CLIP tokenizer all of them use, once: `{TOKENIZER}`.\n", encoding="utf-8")


def check(out: Path) -> None:
    """Load every tokenizer and check the reference ids; build every config object (no weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(out / TOKENIZER, local_files_only=True)
    ids = tok(CHECK_TEXT).input_ids
    assert ids == CHECK_IDS, ids
    assert tok.model_max_length == 77 and len(tok) == 49408
    for family_dir in sorted(p for p in out.iterdir() if p.is_dir() and p.name != TOKENIZER):
        for enc_dir in sorted(family_dir.glob("text_encoder*")):
            CLIPTextConfig.from_pretrained(enc_dir, local_files_only=True)
        UNet2DConditionModel.load_config(family_dir, subfolder="unet", local_files_only=True)
        AutoencoderKL.load_config(family_dir, subfolder="vae", local_files_only=True)
        print(f"ok  {family_dir.name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--bpe", type=Path, default=None, help="local bpe_simple_vocab_16e6.txt.gz")
    args = ap.parse_args()
    vocab, merges = convert_bpe(fetch_bpe(args.bpe))
    write_tree(args.out, families(vocab, merges))
    check(args.out)


if __name__ == "__main__":
    main()
