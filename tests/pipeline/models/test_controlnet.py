"""ControlNet files and maths: both layouts of SD 1.x / 2.x / SDXL tiny ControlNets load through the user
path (the store over a folder) into the same network; files that are not ControlNets are refused clearly;
the residuals a unit adds to the UNet call match a reference computed here by hand for every control mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.diffusion.loop import guided_model
from pipeline.models.checkpoints import CheckpointInfo, load_checkpoint
from pipeline.models.controlnet import ActiveControl, ControlNetStore, ControlResiduals, residual_scales
from pipeline.runtime.errors import ModelLoadError, UnknownName
from tests.fixtures.controlnets import build_tiny_controlnet, to_ldm, write_diffusers, write_ldm
from tests.fixtures.tinymodels import build_tiny_sd1, build_tiny_sd2, build_tiny_sdxl

BUILDERS = {"sd1": build_tiny_sd1, "sd2": build_tiny_sd2, "sdxl": build_tiny_sdxl}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("cn-models")
    out = {"root": work / "ControlNet"}
    for family, build in BUILDERS.items():
        m = build(work)
        path = m.write_safetensors(work / "sd" / f"{family}.safetensors")
        net = build_tiny_controlnet(m.unet, seed=60)
        write_diffusers(net, out["root"] / f"{family}_diffusers.safetensors")
        write_ldm(net, out["root"] / f"{family}_ldm.safetensors")
        write_ldm(net, out["root"] / "old" / f"{family}_ldm.pth")
        out[family] = (m, net, path)
    return out


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_both_layouts_load_into_the_same_network(tiny: dict, family: str) -> None:
    store = ControlNetStore([tiny["root"]])
    model, net, _ = tiny[family]
    want = net.state_dict()
    files = [f for f in store.files() if f.name.startswith(family + "_")]
    assert sorted(f.path.name for f in files) == sorted(
        [f"{family}_diffusers.safetensors", f"{family}_ldm.safetensors", f"{family}_ldm.pth"]
    )
    for f in files:
        assert f.arch().family == family
        assert f.arch().layout == ("diffusers" if "diffusers" in f.name else "ldm")
        loaded = store.load(f, dict(model.unet.config), torch.device("cpu"), torch.float32)
        got = loaded.state_dict()
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert dict(loaded.config)["attention_head_dim"] == pytest.approx(net.config.attention_head_dim)


def test_titles_and_name_matching(tiny: dict) -> None:
    store = ControlNetStore([tiny["root"]])
    titles = store.titles()
    assert len(titles) == 9 and all(t.rsplit(" [", 1)[1].endswith("]") for t in titles)
    title = next(t for t in titles if t.startswith("sd1_diffusers"))
    assert store.find(title, "m").name == "sd1_diffusers"
    assert store.find("SD1_DIFFUSERS", "m").name == "sd1_diffusers"
    assert store.find("sdxl_diff", "m").name == "sdxl_diffusers"
    with pytest.raises(UnknownName) as err:
        store.find("nothing", "alwayson_scripts.ControlNet.args[0].model")
    assert "args[0].model" in str(err.value) and "sd1_ldm" in str(err.value)


def test_family_mismatch_is_refused_by_the_architecture(tiny: dict) -> None:
    store = ControlNetStore([tiny["root"]])
    sd1_model = tiny["sd1"][0]
    xl = store.find("sdxl_ldm", "m")
    with pytest.raises(ModelLoadError, match="another model family|vector condition"):
        store.load(xl, dict(sd1_model.unet.config), torch.device("cpu"), torch.float32)


def test_files_that_are_not_controlnets(tmp_path: Path, tiny: dict) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "ControlNet"
    folder.mkdir()
    save_file(
        {"lora_controlnet": torch.zeros(1), "x.weight": torch.zeros(2)},
        str(folder / "control-lora.safetensors"),
    )
    save_file(
        {"body.0.block1.weight": torch.zeros(2), "conv_in.weight": torch.zeros(2)},
        str(folder / "t2i.safetensors"),
    )
    sd = to_ldm(tiny["sd1"][1])
    sd.pop(next(k for k in sd if "zero_convs.0.0.weight" in k))
    save_file(sd, str(folder / "broken.safetensors"))
    evil = folder / "evil.pth"
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"control_model.input_hint_block.0.weight": torch.zeros(1), "x": Boom()}, evil)
    store = ControlNetStore([folder])
    with pytest.raises(ModelLoadError, match="ControlLoRA"):
        store.find("control-lora", "m").arch()
    with pytest.raises(ModelLoadError, match="T2I-Adapter"):
        store.find("t2i", "m").arch()
    with pytest.raises(ModelLoadError, match="refused"):
        store.find("evil", "m").arch()
    assert not marker.exists()
    f = store.find("broken", "m")
    with pytest.raises(ModelLoadError):
        store.load(f, dict(tiny["sd1"][0].unet.config), torch.device("cpu"), torch.float32)


def _reference(model, net, x, t, cond, uncond, hint, scales, cond_only, cfg, pool=False):
    """CFG over [uncond, cond] with the ControlNet's residuals scaled by hand and handed to the UNet."""
    outs = []
    for ctx, is_cond in ((uncond, False), (cond, True)):
        down, mid = net(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
        res = [*down, mid]
        res = [r * s * (0.0 if cond_only and not is_cond else 1.0) for r, s in zip(res, scales)]
        if pool:
            res = [r.mean(dim=(2, 3), keepdim=True) for r in res]
        outs.append(
            model.unet(
                x,
                t,
                encoder_hidden_states=ctx,
                down_block_additional_residuals=tuple(res[:-1]),
                mid_block_additional_residual=res[-1],
                return_dict=False,
            )[0]
        )
    u, c = outs
    return u + cfg * (c - u)


@pytest.mark.parametrize(
    "mode", ["Balanced", "My prompt is more important", "ControlNet is more important", "shuffle model"]
)
def test_residuals_match_a_hand_computed_reference(tiny: dict, mode: str) -> None:
    _, _, path = tiny["sd1"]
    model = load_checkpoint(CheckpointInfo.from_path(path), torch.device("cpu"), torch.float32)
    store = ControlNetStore([tiny["root"]])
    net = store.load(store.find("sd1_ldm", "m"), dict(model.unet.config), model.device, model.dtype)
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    hint = torch.rand(1, 3, 64, 64)
    t = torch.tensor(500)
    width = int(model.unet.config.cross_attention_dim)
    cond = type("C", (), {"context": torch.randn(1, 77, width)})()
    uncond = type("C", (), {"context": torch.randn(1, 77, width)})()
    weight, cfg = 0.7, 6.0
    soft = mode not in ("Balanced", "shuffle model")
    pool = mode == "shuffle model"
    scales = residual_scales(weight, soft, sdxl=False)
    if soft:
        assert scales[12] == pytest.approx(weight) and scales[0] == pytest.approx(weight * 0.825**12)
    control = ControlResiduals(
        [ActiveControl(net, hint, scales, cond_only=mode == "ControlNet is more important", pool=pool)]
    )
    guided = guided_model(model, cfg, 64, 64, control=control)
    with torch.inference_mode():
        got = guided(x, t, cond, uncond)
        want = _reference(
            model,
            net,
            x,
            t,
            cond.context,
            uncond.context,
            hint,
            scales,
            mode == "ControlNet is more important" or pool,
            cfg,
            pool,
        )
        plain = guided_model(model, cfg, 64, 64)(x, t, cond, uncond)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().mean() > 1e-3


def test_a_unit_acts_only_inside_its_guidance_window(tiny: dict) -> None:
    unit = ActiveControl(
        net=None, hint=torch.zeros(1, 3, 8, 8), scales=[1.0], cond_only=False, start=0.25, end=0.5
    )
    control = ControlResiduals([unit])
    acting = []
    for step in range(8):
        control.at_step(step, 8)
        acting.append(unit.acts_at(control.fraction))
    assert acting == [False, False, True, True, True, False, False, False]
    control.at_step(0, 8)
    control.units[0].start = 0.5
    assert control(torch.zeros(1, 4, 1, 1), torch.tensor(1), torch.zeros(1, 1, 1), {}, torch.ones(1)) == {}


def test_sdxl_small_variant_and_a_diffusers_folder(tmp_path: Path, tiny: dict) -> None:
    """An SDXL ControlNet whose attention block keeps no transformer layer (the "small" variants), in the
    original layout, and a diffusers folder (config.json beside the weights; the config is not read)."""
    from diffusers import ControlNetModel

    from pipeline.models.builtin import deterministic_fill
    from tests.fixtures.tinymodels import tiny_sdxl_configs

    base = tiny_sdxl_configs()["unet"]
    cfg = {k: v for k, v in base.items() if k not in ("up_block_types", "sample_size", "out_channels")}
    small = ControlNetModel(
        **dict(cfg, transformer_layers_per_block=(1, 0), conditioning_embedding_out_channels=(8, 8, 16, 16))
    )
    deterministic_fill(small, 3)
    folder = tmp_path / "ControlNet"
    write_ldm(small, folder / "xl_small.safetensors")
    small.save_pretrained(folder / "xl_folder")
    store = ControlNetStore([folder])
    assert sorted(f.name for f in store.files()) == ["xl_folder", "xl_small"]
    for name in ("xl_small", "xl_folder"):
        f = store.find(name, "m")
        assert f.arch().family == "sdxl" and f.arch().context_dim is None
        net = store.load(f, base, torch.device("cpu"), torch.float32)
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), small.state_dict().values()))


def test_memory_mode_runs_the_controlnet_alone_on_the_compute_device(tiny: dict) -> None:
    """--medvram: the UNet leaves the compute device while the ControlNet runs, and comes back for its own
    forward (the placement's log; on a CPU-only machine both devices are the CPU), same numbers."""
    from pipeline.models.accel import memory

    _, _, path = tiny["sd1"]
    model = load_checkpoint(CheckpointInfo.from_path(path), torch.device("cpu"), torch.float32)
    store = ControlNetStore([tiny["root"]])
    net = store.load(store.find("sd1_ldm", "m"), dict(model.unet.config), model.device, model.dtype)
    width = int(model.unet.config.cross_attention_dim)
    torch.manual_seed(1)
    x, hint = torch.randn(1, 4, 8, 8), torch.rand(1, 3, 64, 64)
    cond = type("C", (), {"context": torch.randn(1, 77, width)})()
    uncond = type("C", (), {"context": torch.randn(1, 77, width)})()
    scales = residual_scales(1.0, False, False)
    with torch.inference_mode():
        plain = guided_model(
            model, 5.0, 64, 64, control=ControlResiduals([ActiveControl(net, hint, scales, False)])
        )
        want = plain(x, torch.tensor(300), cond, uncond)
        placement = memory.install(model, "medvram")
        try:
            control = ControlResiduals([ActiveControl(net, hint, scales, False)], placement)
            placement.bring("unet")
            got = guided_model(model, 5.0, 64, 64, control=control)(x, torch.tensor(300), cond, uncond)
        finally:
            placement.remove()
    assert torch.equal(got, want)
    moves = placement.log[placement.log.index(("unet", "")) + 1 :]
    assert moves[:2] == [("", "unet"), ("unet", "")]  # out for the ControlNet, back in for the UNet
