"""A built-in tiny SD 1.x model with deterministic weights, so the server runs with no checkpoint at all.

Real architecture (UNet2DConditionModel, AutoencoderKL with the true 8x latent factor, CLIPTextModel
with the real 49408-token vocabulary and tokenizer), tiny widths, random weights drawn from a fixed
seed by our own initialiser (independent of library init schemes, so the weights, and therefore the
hash in its title, only change if this file changes). It makes noise-like pictures, quickly: it is for
development, API clients' smoke tests and CI, not for art.
"""
from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from typing import Any

import torch

from pipeline.models.checkpoints.registry import CheckpointInfo
from pipeline.models.checkpoints.shipped import clip_tokenizer, read_config
from pipeline.models.sd_model import SDModel

BUILTIN_NAME = "hiresd-builtin-tiny"
BUILTIN_FILENAME = "<builtin>"
SEED = 20240611


def tiny_sd1_configs() -> dict[str, dict[str, Any]]:
    """Component configs of the tiny SD 1.x architecture (also used by the test fixtures)."""
    return {
        "unet": {
            "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
            "block_out_channels": (32, 64), "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 32,
            "attention_head_dim": 4, "norm_num_groups": 32,
        },
        "vae": {
            "sample_size": 64, "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
            "block_out_channels": (32, 32, 32, 32), "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 32, "scaling_factor": 0.18215,
        },
        "text_encoder": {
            "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 32,
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
        },
    }


def deterministic_fill(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter from `seed`: norm scales 1, biases 0, other weights N(0, 1/fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            if param.ndim == 1:
                param.fill_(1.0 if (isinstance(owner, norms) and leaf == "weight") else 0.0)
            else:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) / math.sqrt(fan_in))


def weights_sha256(components: dict[str, torch.nn.Module]) -> str:
    """sha256 of a canonical serialisation: sorted `component.key`, dtype, shape, little-endian fp32 bytes."""
    h = hashlib.sha256()
    for comp in sorted(components):
        for key, tensor in sorted(components[comp].state_dict().items()):
            t = tensor.detach().to("cpu", torch.float32).contiguous()
            h.update(f"{comp}.{key}|{list(t.shape)}\n".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def _build_modules() -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = tiny_sd1_configs()
    modules: dict[str, torch.nn.Module] = {
        "unet": UNet2DConditionModel(**cfg["unet"]),
        "vae": AutoencoderKL(**cfg["vae"]),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
    }
    for i, name in enumerate(sorted(modules)):
        deterministic_fill(modules[name], SEED + i)
        modules[name].eval().requires_grad_(False)
    return modules


@lru_cache(maxsize=1)
def builtin_sha256() -> str:
    """The builtin model's sha256 (builds the weights once per process; well under a second or two)."""
    return weights_sha256(_build_modules())


def builtin_checkpoint_info() -> CheckpointInfo:
    """The listing entry of the builtin model (`filename` "<builtin>", `config` None), hash included;
    loading it builds the model (`build_builtin_model`)."""
    return CheckpointInfo.builtin(BUILTIN_NAME, BUILTIN_FILENAME, builtin_sha256(), build=build_builtin_model)


def _sd1_scheduler_config() -> dict[str, Any]:
    return read_config("sd1", "scheduler/scheduler_config.json")


def load_sd1_tokenizer() -> Any:
    """The real CLIP ViT-L tokenizer from the shipped configs (offline)."""
    return clip_tokenizer()


def build_builtin_model(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> SDModel:
    """Build the builtin tiny SD 1.x model on `device` in `dtype` (a second or two on a CPU)."""
    device = torch.device(device)
    modules = _build_modules()
    sha = weights_sha256(modules)
    for m in modules.values():
        m.to(device=device, dtype=dtype)
    return SDModel(
        title=f"{BUILTIN_NAME} [{sha[:10]}]",
        family="sd1",
        unet=modules["unet"],
        vae=modules["vae"],
        text_encoders=[modules["text_encoder"]],
        tokenizers=[load_sd1_tokenizer()],
        scheduler_config=_sd1_scheduler_config(),
        device=device,
        dtype=dtype,
        vae_dtype=dtype,
        extra={"filename": BUILTIN_FILENAME, "sha256": sha, "model_name": BUILTIN_NAME, "builtin": True},
    )
