"""The SDXL refiner: a tiny refiner file loads from the file alone, and txt2img hands sampling over to it
where A1111 v1.10 does (by noise level or by steps, per hires pass), with its own conditioning."""
from __future__ import annotations

import pytest
import torch

from pipeline.jobs.refiner import with_swap_cost
from pipeline.models.checkpoints import CheckpointRegistry
from pipeline.models.manager import ModelManager
from pipeline.runtime.errors import UnknownName
from tests.conftest import Env, count_unet, infotext_params
from upscalers.registry import UpscalerRegistry

XL = {"sampler_name": "Euler", "steps": 20, "width": 64, "height": 64, "cfg_scale": 5.0, "seed": 3}


@pytest.fixture(scope="module")
def xl_files(tmp_path_factory):
    from tests.fixtures.tinymodels import build_tiny_refiner, build_tiny_sd1, build_tiny_sdxl

    root = tmp_path_factory.mktemp("models-refiner")
    work = tmp_path_factory.mktemp("refiner-build")
    folder = root / "Stable-diffusion"
    base = build_tiny_sdxl(work)
    refiner = build_tiny_refiner(work)
    base.write_safetensors(folder / "tiny-xl-base.safetensors")
    refiner.write_safetensors(folder / "tiny-xl-refiner.safetensors")
    build_tiny_sd1(work, seed=5).write_safetensors(folder / "tiny-sd1.safetensors")
    return {"root": root, "refiner": refiner}


@pytest.fixture(scope="module")
def xl_env(xl_files) -> Env:
    root = xl_files["root"]
    mm = ModelManager(CheckpointRegistry(root, root / "data"), torch.device("cpu"), torch.float32, max_loaded=2)
    env = Env(mm, UpscalerRegistry(root))
    env.options["sd_model_checkpoint"] = "tiny-xl-base.safetensors"
    return env


def _split(env: Env, **fields):
    base, ref = env.model("tiny-xl-base"), env.model("tiny-xl-refiner")
    with count_unet(base, ref, tags=["base", "refiner"]) as counter:
        result = env.run(**{**XL, **fields})
    return counter, result


def test_refiner_file_loads_from_the_file_alone(xl_env, xl_files):
    model = xl_env.model("tiny-xl-refiner")
    source = xl_files["refiner"]
    assert model.family == "sdxl" and model.refiner and model.extra["variant"] == "xl_refiner"
    assert len(model.text_encoders) == 1 and model.tokenizers[0].pad_token == "!"
    for loaded, src in ((model.unet, source.unet), (model.vae, source.vae), (model.text_encoders[0],
                                                                              source.text_encoders[0])):
        a, b = loaded.state_dict(), src.state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    cfg = model.unet.config
    assert (cfg.addition_time_embed_dim, cfg.projection_class_embeddings_input_dim, cfg.cross_attention_dim) == \
        (8, 104, 64)
    assert list(cfg.down_block_types) == list(source.unet.config.down_block_types)
    assert model.unet.mid_block.attentions[0].transformer_blocks.__len__() == 2


@pytest.mark.parametrize(("schedule", "switch_at", "base_calls"), [
    ("Automatic", 0.8, 16), ("Automatic", 0.5, 10), ("Karras", 0.8, 12)])
def test_switch_by_noise_level_matches_a1111(xl_env, schedule, switch_at, base_calls):
    """A1111's timestep rule (20 steps; img2img-refiner-tiled.md §1.2): the refiner takes over at the first
    call whose nearest training timestep is at or below 999 - 1000 * s."""
    counter, result = _split(xl_env, scheduler=schedule, refiner_checkpoint="tiny-xl-refiner",
                             refiner_switch_at=switch_at)
    assert (counter.count("base"), counter.count("refiner")) == (base_calls, 20 - base_calls)
    assert [tag for tag, _ in counter.calls] == ["base"] * base_calls + ["refiner"] * (20 - base_calls)
    params = infotext_params(result.infotexts[0])
    assert params["Refiner"].startswith("tiny-xl-refiner [") and params["Refiner switch at"] == str(switch_at)
    assert params["Model"] == "tiny-xl-base"
    assert result.images[0].size == (64, 64)


def test_switch_by_sampling_steps_option(xl_env):
    opts = {"refiner_switch_by_sample_steps": True}
    base, ref = xl_env.model("tiny-xl-base"), xl_env.model("tiny-xl-refiner")
    with count_unet(base, ref, tags=["base", "refiner"]) as counter:
        result = xl_env.run(options=opts, **{**XL, "steps": 10, "refiner_checkpoint": "tiny-xl-refiner",
                                             "refiner_switch_at": 0.3})
    assert (counter.count("base"), counter.count("refiner")) == (3, 7)
    assert infotext_params(result.infotexts[0])["Refiner switch by sampling steps"] == "True"
    plain = xl_env.run(options=opts, **{**XL, "steps": 2})  # A1111 writes the key on every job while the option is on
    assert infotext_params(plain.infotexts[0])["Refiner switch by sampling steps"] == "True"


def test_null_switch_at_refines_everything_and_one_never_switches(xl_env):
    counter, result = _split(xl_env, steps=3, refiner_checkpoint="tiny-xl-refiner", refiner_switch_at=None)
    assert (counter.count("base"), counter.count("refiner")) == (0, 3)
    params = infotext_params(result.infotexts[0])
    assert "Refiner" in params and "Refiner switch at" not in params
    counter, result = _split(xl_env, steps=3, refiner_checkpoint="tiny-xl-refiner", refiner_switch_at=1.0)
    assert (counter.count("base"), counter.count("refiner")) == (3, 0)
    assert "Refiner" not in infotext_params(result.infotexts[0])
    counter, result = _split(xl_env, steps=2, refiner_checkpoint="None", refiner_switch_at=0.5)
    assert counter.count("refiner") == 0


def test_refiner_conditioning_uses_its_own_encoder_and_aesthetic_scores(xl_env):
    ref = xl_env.model("tiny-xl-refiner")
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def grab(_module, args, kwargs):
        seen.append((kwargs["encoder_hidden_states"], kwargs["added_cond_kwargs"]["time_ids"],
                     kwargs["added_cond_kwargs"]["text_embeds"]))

    handle = ref.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        xl_env.run(**{**XL, "steps": 4, "negative_prompt": "blurry", "refiner_checkpoint": "tiny-xl-refiner",
                      "refiner_switch_at": 0.5},
                   options={"sdxl_refiner_high_aesthetic_score": 7.0, "sdxl_refiner_low_aesthetic_score": 1.5})
    finally:
        handle.remove()
    ctx, ids, pooled = seen[0]
    assert ctx.shape[-1] == 64 and pooled.shape[-1] == 64  # bigG only: no CLIP-L features
    assert ids.tolist() == [[64, 64, 0, 0, 1.5], [64, 64, 0, 0, 7.0]]  # negative first, scored low


def test_crop_options_reach_the_base_and_the_refiner_micro_conditioning(xl_env):
    ids_seen: dict[str, list[list[float]]] = {}
    handles = []
    for name in ("tiny-xl-base", "tiny-xl-refiner"):
        def grab(_module, _args, kwargs, name=name):
            ids_seen.setdefault(name, kwargs["added_cond_kwargs"]["time_ids"].tolist())
        handles.append(xl_env.model(name).unet.register_forward_pre_hook(grab, with_kwargs=True))
    try:
        xl_env.run(**{**XL, "steps": 4, "negative_prompt": "blurry", "refiner_checkpoint": "tiny-xl-refiner",
                      "refiner_switch_at": 0.5}, options={"sdxl_crop_top": 8, "sdxl_crop_left": 16})
    finally:
        for h in handles:
            h.remove()
    assert ids_seen["tiny-xl-base"] == [[64, 64, 8, 16, 64, 64]] * 2  # original size, crop, target size
    assert ids_seen["tiny-xl-refiner"] == [[64, 64, 8, 16, 2.5], [64, 64, 8, 16, 6.0]]


def test_unknown_refiner_is_refused_before_any_work(xl_env):
    base = xl_env.model("tiny-xl-base")
    with count_unet(base) as counter, pytest.raises(UnknownName) as err:
        xl_env.run(**{**XL, "refiner_checkpoint": "no-such-refiner"})
    assert err.value.field == "refiner_checkpoint" and "tiny-xl-refiner.safetensors" in str(err.value.valid)
    assert counter.count() == 0


@pytest.mark.parametrize(("option", "pass1", "pass2"), [
    (None, (4, 0), (2, 2)), ("first pass", (2, 2), (4, 0)), ("both passes", (2, 2), (2, 2))])
def test_hires_refiner_pass_option(xl_env, option, pass1, pass2):
    """hires_fix_refiner_pass: the default refines pass two only; "first pass" refines pass one and runs
    pass two on the base again; "both passes" switches in each."""
    opts = {"hires_fix_refiner_pass": option} if option else {}
    base, ref = xl_env.model("tiny-xl-base"), xl_env.model("tiny-xl-refiner")
    with count_unet(base, ref, tags=["base", "refiner"]) as counter:
        result = xl_env.run(options=opts, **{**XL, "steps": 4, "enable_hr": True, "hr_scale": 2,
                                             "denoising_strength": 1.0, "refiner_checkpoint": "tiny-xl-refiner",
                                             "refiner_switch_at": 0.5, "scheduler": "Automatic"})
    tags = [tag for tag, _ in counter.calls]
    first, second = tags[:4], tags[4:]
    assert (first.count("base"), first.count("refiner")) == pass1
    assert (second.count("base"), second.count("refiner")) == pass2
    params = infotext_params(result.infotexts[0])
    assert params.get("Hires refiner") == option
    assert result.images[0].size == (128, 128)


def test_any_checkpoint_may_refine_and_interrupt_stops_before_the_swap(xl_env):
    sd1 = xl_env.model("tiny-sd1")
    base = xl_env.model("tiny-xl-base")
    with count_unet(base, sd1, tags=["base", "sd1"]) as counter:
        xl_env.run(**{**XL, "steps": 4, "refiner_checkpoint": "tiny-sd1", "refiner_switch_at": 0.5})
    assert counter.count("sd1") > 0 and counter.count("base") > 0

    def stop(n: int, _t: float) -> None:
        if n == 2:
            xl_env.state.interrupt()

    with count_unet(base, sd1, tags=["base", "sd1"], on_call=stop) as counter:
        result = xl_env.run(**{**XL, "steps": 4, "refiner_checkpoint": "tiny-sd1", "refiner_switch_at": 0.5})
    assert counter.count("sd1") == 0 and counter.count("base") == 2
    assert len(result.images) == 1


def test_eta_weights_charge_the_swap(xl_env):
    p = xl_env.prepare(**{**XL, "refiner_checkpoint": "tiny-xl-refiner", "refiner_switch_at": 0.8})
    plain = xl_env.prepare(**XL)
    assert with_swap_cost(plain, [1.0]) == [1.0]
    assert with_swap_cost(p, [1.0])[0] > 1.0


def test_img2img_takes_the_refiner_too(xl_env):
    """refiner_checkpoint / refiner_switch_at are fields of img2img as well; the strength's noise level
    decides where the refiner starts (strength 0.5 is below s = 0.8's noise level only at the end)."""
    from PIL import Image

    from tests.pipeline.jobs.test_img2img import run as run_img2img

    image = Image.new("RGB", (64, 64), (120, 60, 200))
    base, ref = xl_env.model("tiny-xl-base"), xl_env.model("tiny-xl-refiner")
    with count_unet(base, ref, tags=["base", "refiner"]) as counter:
        result = run_img2img(xl_env, [image], checkpoint="tiny-xl-base.safetensors", steps=10,
                             denoising_strength=0.5, refiner_checkpoint="tiny-xl-refiner", refiner_switch_at=0.8)
    assert counter.count("base") > 0 and counter.count("refiner") > 0
    assert [t for t, _ in counter.calls] == sorted((t for t, _ in counter.calls), key=("base", "refiner").index)
    assert infotext_params(result.infotexts[0])["Refiner switch at"] == "0.8"


def test_progress_runs_on_across_the_switch(xl_env):
    base, ref = xl_env.model("tiny-xl-base"), xl_env.model("tiny-xl-refiner")
    steps_seen: list[int] = []

    def look(_n: int, _t: float) -> None:
        snap = xl_env.state.snapshot()["state"]
        steps_seen.append(snap["sampling_step"])
        assert snap["sampling_steps"] == 4 and snap["job_count"] == 1

    with count_unet(base, ref, tags=["base", "refiner"], on_call=look) as counter:
        xl_env.run(**{**XL, "steps": 4, "refiner_checkpoint": "tiny-xl-refiner", "refiner_switch_at": 0.5})
    assert [t for t, _ in counter.calls] == ["base", "base", "refiner", "refiner"]
    assert steps_seen == [0, 1, 2, 3]  # one count over both models
