"""ControlLoRA files (a `lora_controlnet` key): a tiny one made from a tiny checkpoint's UNet (low-rank
changes on every conv and attention projection, the hint encoder and zero convs whole, the rest left to
the checkpoint), loaded from a `ControlNet` folder through the store: the network equals the ControlNet it
stands for, and its residuals equal that ControlNet's."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.checkpoints import CheckpointInfo, load_checkpoint
from pipeline.models.controlnet import ControlNetStore
from pipeline.runtime.errors import ModelLoadError
from tests.fixtures.controlnets import build_tiny_control_lora
from tests.fixtures.tinymodels import build_tiny_sd1, build_tiny_sd2, build_tiny_sdxl

BUILDERS = {"sd1": build_tiny_sd1, "sd2": build_tiny_sd2, "sdxl": build_tiny_sdxl}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from safetensors.torch import save_file

    work = tmp_path_factory.mktemp("clora")
    out: dict = {"root": work / "ControlNet"}
    out["root"].mkdir()
    for family, build in BUILDERS.items():
        m = build(work)
        path = m.write_safetensors(work / "sd" / f"{family}.safetensors")
        model = load_checkpoint(CheckpointInfo.from_path(path), torch.device("cpu"), torch.float32)
        net, tensors = build_tiny_control_lora(model.unet, seed=81)
        save_file(tensors, str(out["root"] / f"control-lora-{family}-rank2.safetensors"))
        out[family] = (model, net)
    return out


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_a_control_lora_is_the_controlnet_it_stands_for(tiny: dict, family: str) -> None:
    model, ref = tiny[family]
    store = ControlNetStore([tiny["root"]])
    f = store.find(f"control-lora-{family}", "m")
    arch = f.arch()
    assert arch.family == family and arch.layout == "control_lora"
    net = store.load(f, dict(model.unet.config), torch.device("cpu"), torch.float32, base_unet=model.unet)
    want = ref.state_dict()
    got = net.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), k
    g = torch.Generator().manual_seed(0)
    x, hint = torch.randn(1, 4, 8, 8, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    ctx = torch.randn(1, 77, int(model.unet.config.cross_attention_dim), generator=g)
    extra = {}
    if family == "sdxl":
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, 64, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
        }
    with torch.inference_mode():
        a = net(x, torch.tensor(400), encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False, **extra)
        b = ref(x, torch.tensor(400), encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False, **extra)
    for r, s in zip([*a[0], a[1]], [*b[0], b[1]]):
        assert torch.allclose(r, s, atol=1e-5)


def test_a_control_lora_needs_its_families_checkpoint(tiny: dict) -> None:
    model, _ = tiny["sdxl"]
    store = ControlNetStore([tiny["root"]])
    f = store.find("control-lora-sd1", "m")
    with pytest.raises(ModelLoadError):
        store.load(f, dict(model.unet.config), torch.device("cpu"), torch.float32, base_unet=model.unet)


def test_a_control_lora_follows_the_unets_current_weights(tiny: dict) -> None:
    """Built from the UNet's weights as they are at load (a prompt LoRA patched in reaches it, as the
    extension's live weights): a new weight state (`base_version`) rebuilds it, the same one reuses it."""
    model, _ = tiny["sd1"]
    store = ControlNetStore([tiny["root"]])
    f = store.find("control-lora-sd1", "m")
    cfg, cpu = dict(model.unet.config), torch.device("cpu")
    first = store.load(f, cfg, cpu, torch.float32, base_unet=model.unet, base_version=None)
    assert store.load(f, cfg, cpu, torch.float32, base_unet=model.unet, base_version=None) is first
    w = model.unet.down_blocks[0].resnets[0].time_emb_proj.weight  # the file changes it by up @ down
    with torch.no_grad():
        w += 1.0
    try:
        patched = store.load(f, cfg, cpu, torch.float32, base_unet=model.unet, base_version=("lora", 1.0))
    finally:
        with torch.no_grad():
            w -= 1.0
    key = "down_blocks.0.resnets.0.time_emb_proj.weight"
    assert torch.allclose(patched.state_dict()[key], first.state_dict()[key] + 1.0)
