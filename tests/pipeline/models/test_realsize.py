"""A real-size SD 1.5 architecture, random weights, through the single-file loader with the shipped configs.

Proves the shipped `pipeline/configs/sd1` matches the shapes of real SD 1.5 checkpoints: every tensor in
an A1111-layout file is consumed, none is missing (no meta tensors), the parameter counts are SD 1.5's,
and well-known real key names carry their real shapes. About 2 GB on disk (fp16), ~7 GB peak RAM.
"""
from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # `tests.fixtures` (no root conftest yet)

from pipeline.models.checkpoints import CONFIGS_DIR, CheckpointInfo, load_checkpoint, read_state_dict
from tests.fixtures.ldm_export import sd_to_ldm

# Parameter counts of the SD 1.5 components (UNet 859.52 M, VAE 83.65 M, CLIP ViT-L text 123.06 M).
SD15_PARAMS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
# A few keys of real SD 1.5 files with their shapes.
REAL_KEYS = {
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
    "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
    "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
    "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
    "model.diffusion_model.time_embed.0.weight": (1280, 320),
    "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
    "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
    "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
    "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
}


def _build_random_sd15() -> dict[str, torch.nn.Module]:
    """SD 1.5 modules from the shipped configs: built on the meta device (no init cost), then
    materialised and filled cheaply from a fixed seed."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CONFIGS_DIR / "sd1"
    with torch.device("meta"):
        modules = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg, subfolder="unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(cfg, subfolder="vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder")),
        }
    gen = torch.Generator().manual_seed(0)
    for module in modules.values():
        module.to_empty(device="cpu")
        with torch.no_grad():
            for _, p in module.named_parameters():
                p.normal_(0.0, 0.02, generator=gen)
            for name, b in module.named_buffers():  # non-persistent buffers: recompute what matters
                if name.endswith("position_ids"):
                    b.copy_(torch.arange(b.shape[-1]).expand_as(b))
        module.eval().requires_grad_(False)
    return modules


@pytest.mark.slow
def test_real_size_sd15_single_file_loads_with_shipped_configs(tmp_path):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    src = _build_random_sd15()
    assert {k: sum(p.numel() for p in m.parameters()) for k, m in src.items()} == SD15_PARAMS
    state = {k: v.half().contiguous() for k, v in sd_to_ldm(src["unet"], src["vae"], src["text_encoder"]).items()}
    samples = {k: state[k].clone() for k in REAL_KEYS}
    path = tmp_path / "Stable-diffusion" / "sd15-random.safetensors"
    path.parent.mkdir()
    save_file(state, str(path))
    n_file_keys = len(state)
    del src, state
    gc.collect()
    t_write = time.perf_counter() - t0

    info = CheckpointInfo.from_path(path, path.parent)
    model = load_checkpoint(info, "cpu", torch.float16, compute_hash=False)
    t_load = time.perf_counter() - t0 - t_write
    assert model.family == "sd1" and model.prediction_type == "epsilon"
    assert model.extra["config_dir"] == str(CONFIGS_DIR / "sd1")
    for module in (model.unet, model.vae, *model.text_encoders):
        assert not [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    assert {"unet": sum(p.numel() for p in model.unet.parameters()),
            "vae": sum(p.numel() for p in model.vae.parameters()),
            "text_encoder": sum(p.numel() for p in model.text_encoders[0].parameters())} == SD15_PARAMS
    assert model.unet.config.cross_attention_dim == 768 and model.vae_scale_factor == 8

    # Every tensor in the file is consumed and every parameter is covered: no missing, no unexpected.
    sd = read_state_dict(path)
    assert {k: tuple(sd[k].shape) for k in REAL_KEYS} == REAL_KEYS
    unet_sd = convert_ldm_unet_checkpoint(sd, model.unet.config)
    vae_sd = convert_ldm_vae_checkpoint(sd, model.vae.config)
    clip_prefix = "cond_stage_model.transformer.text_model."
    clip_keys = {k[len(clip_prefix):] for k in sd if k.startswith(clip_prefix)} - {"embeddings.position_ids"}
    assert set(unet_sd) == set(model.unet.state_dict())
    assert set(vae_sd) == set(model.vae.state_dict())
    assert clip_keys == set(model.text_encoders[0].state_dict())
    assert len(unet_sd) + len(vae_sd) + len(clip_keys) + 1 == n_file_keys
    del sd, unet_sd, vae_sd

    # Values arrive unchanged (fp16 file, fp16 model), including the reshaped VAE attention.
    loaded = {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": model.unet.down_blocks[0].attentions[0].proj_in.weight,
        "model.diffusion_model.out.2.weight": model.unet.conv_out.weight,
        "first_stage_model.encoder.mid.attn_1.q.weight": model.vae.encoder.mid_block.attentions[0].to_q.weight,
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight":
            model.text_encoders[0].encoder.layers[11].mlp.fc2.weight,
    }
    for key, tensor in loaded.items():
        assert torch.equal(tensor.reshape(samples[key].shape), samples[key]), key
    print(f"\nreal-size SD 1.5: build+write {t_write:.1f}s, load {t_load:.1f}s")
