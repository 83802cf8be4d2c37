"""LoRA-family files applied through `<lora:...>` tags: each network type matches the image of a model
holding the merged weights computed independently (tests/fixtures/networks.py), the weights are restored
exactly, the te/unet split, hires prompts, and every bad input is a clear error before any work."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from pipeline.runtime.errors import InvalidRequest
from tests.fixtures.networks import make_network
from tests.pipeline.models.networks.conftest import arr

PLAIN: dict[str, object] = {}  # the no-network image of "a cat", made once
KINDS = ["lora", "locon_cp", "loha", "lokr", "ia3", "full", "glora", "oft", "boft", "dora"]


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _close(a, b, tol: float = 1.0) -> None:
    diff = np.abs(arr(a) - arr(b))
    assert diff.max() <= tol, f"max pixel difference {diff.max()}"


def _reference(net_env, nets, which: str = "sd1", mults=None, extensions=None, **fields):
    """The image of the same job on a model holding the merged weights of `nets` (networks not applied
    by the server; its pristine weights restored first, its prompt cache cleared around the job)."""
    model = net_env.model(which)
    net_env.networks.activate(model, None)  # what a job without tags does first: the server's patch undone
    mults = mults or [(1.0, 1.0)] * len(nets)
    stack = contextlib.ExitStack()
    with stack:
        for net, (te, unet) in zip(nets, mults):
            stack.enter_context(net.merged(te, unet))
        model.extra["prompt_encoder"].clear_cache()
        image = net_env.run(which, networks=False, extensions=extensions, **fields).images[0]
    model.extra["prompt_encoder"].clear_cache()
    return image


def _write(net_env, model, kind: str, name: str, seed: int = 0, **kw):
    net = make_network(model, kind, seed=seed, **kw)
    net.save(net_env.lora_dir / f"{name}.safetensors")
    net_env.networks.loras.refresh()
    return net


@pytest.mark.parametrize("kind", KINDS)
def test_each_type_matches_the_merged_weights_reference(net_env, kind):
    model = net_env.model("sd1")
    net = _write(net_env, model, kind, f"t-{kind}", seed=KINDS.index(kind))
    got = net_env.run(prompt=f"a cat <lora:t-{kind}:0.8>").images[0]
    want = _reference(net_env, [net], mults=[(0.8, 0.8)], prompt="a cat")
    _close(got, want)
    if "plain" not in PLAIN:
        PLAIN["plain"] = net_env.run(prompt="a cat").images[0]
    assert np.abs(arr(got) - arr(PLAIN["plain"])).mean() > 1.0  # the network does change the picture


def test_a_job_without_loras_after_a_lora_job_is_byte_identical_to_a_fresh_model(net_env, tiny_checkpoints):
    from pipeline.models.checkpoints import CheckpointRegistry
    from pipeline.models.manager import ModelManager

    model = net_env.model("sd1")
    _write(net_env, model, "lora", "restore-a", seed=11)
    _write(net_env, model, "ia3", "restore-b", seed=12)
    _write(net_env, model, "boft", "restore-c", seed=13)
    net_env.run(prompt="a cat <lora:restore-a:1> <lora:restore-b:0.5>")
    net_env.run(prompt="a cat <lora:restore-b:1> <lora:restore-c:0.7>", enable_hr=True, hr_scale=1.5)
    after = net_env.run(prompt="a cat").images[0]
    root = tiny_checkpoints["root"]
    fresh = ModelManager(CheckpointRegistry(root, root / "data"), torch.device("cpu"), torch.float32)
    fresh_model = fresh.get(fresh.resolve_title(tiny_checkpoints["sd1"], "sd_model_checkpoint"))
    for (name, a), b in zip(model.unet.state_dict().items(), fresh_model.unet.state_dict().values()):
        assert torch.equal(a, b), name
    net_env.models, saved = fresh, net_env.models
    try:
        reference = net_env.run(prompt="a cat", networks=False).images[0]
    finally:
        net_env.models = saved
    assert _png(after) == _png(reference)


def test_te_and_unet_multipliers_apply_to_their_own_parts(net_env):
    model = net_env.model("sd1")
    net = _write(net_env, model, "lora", "split", seed=21)
    for tag, te, unet in (("<lora:split:0:1>", 0.0, 1.0), ("<lora:split:te=1.5:unet=0>", 1.5, 0.0)):
        got = net_env.run(prompt=f"a cat {tag}").images[0]
        want = _reference(net_env, [net], mults=[(te, unet)], prompt="a cat")
        _close(got, want)


def test_two_tags_add_their_deltas(net_env):
    model = net_env.model("sd1")
    a = _write(net_env, model, "lora", "two-a", seed=31)
    b = _write(net_env, model, "loha", "two-b", seed=32)
    got = net_env.run(prompt="a cat <lora:two-a:0.5>, <lora:two-b:0.7>").images[0]
    # b's delta does not depend on the weight: order-free. Without networks the tags are only stripped.
    want = _reference(net_env, [a, b], mults=[(0.5, 0.5), (0.7, 0.7)],
                      prompt="a cat <lora:two-a:0.5>, <lora:two-b:0.7>")
    _close(got, want)


def test_a_lora_tagged_twice_is_applied_twice_with_its_last_multipliers_as_a1111(net_env):
    """A1111 v1.10 keeps every tag (extra_networks.parse_prompt) and loads the same network object for
    both, so its last multipliers win and its delta is added twice; `Lora hashes` lists it once."""
    model = net_env.model("sd1")
    net = _write(net_env, model, "lora", "dup", seed=35)
    got = net_env.run(prompt="a cat <lora:dup:0.2> <lora:dup:0.45>")
    want = _reference(net_env, [net, net], mults=[(0.45, 0.45), (0.45, 0.45)], prompt="a cat")
    _close(got.images[0], want)
    assert got.infotexts[0].count("dup: ") == 1


def test_dyn_keeps_the_first_rank_components(net_env):
    model = net_env.model("sd1")
    _write(net_env, model, "lora", "dyn", seed=41, rank=4)
    cut = make_network(model, "lora", seed=41, rank=4)
    for _, _, _, t in cut.parts:  # the first 2 components, scale still alpha / 4
        t["lora_up.weight"][:, 2:] = 0
    got = net_env.run(prompt="a cat <lora:dyn:1:1:2>").images[0]
    want = _reference(net_env, [cut], prompt="a cat")  # the closures share the zeroed factors
    _close(got, want)
    assert np.abs(arr(got) - arr(net_env.run(prompt="a cat <lora:dyn:1>").images[0])).mean() > 0.5


def test_hires_prompt_without_tags_turns_the_lora_off_for_pass_two(net_env):
    from pipeline.jobs.extensions import Extension, Extensions

    model = net_env.model("sd1")
    net = _write(net_env, model, "lora", "hr", seed=51)
    hires = {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.6}
    got = net_env.run(prompt="a cat <lora:hr:1>", hr_prompt="a cat", **hires).images[0]
    pristine = {m: m.weight.detach().clone() for m in net.expected()}

    def before_hr(p):  # pass two on the pristine weights, its prompt re-encoded
        with torch.no_grad():
            for m, w in pristine.items():
                m.weight.copy_(w)
        model.extra["prompt_encoder"].clear_cache()

    ext = Extensions([Extension("unmerge", "test", {"before_hr": before_hr})])
    want = _reference(net_env, [net], extensions=ext, prompt="a cat", hr_prompt="a cat", **hires)
    _close(got, want)
    both = net_env.run(prompt="a cat <lora:hr:1>", **hires).images[0]  # hr_prompt "" copies the tags
    _close(both, _reference(net_env, [net], prompt="a cat", **hires))


def test_infotext_keeps_the_tags_and_lists_lora_hashes(net_env):
    from pipeline.models.networks.files import addnet_hash

    model = net_env.model("sd1")
    _write(net_env, model, "lora", "hashme", seed=61)
    result = net_env.run(prompt="a cat <lora:hashme:0.4>")
    text = result.infotexts[0]
    assert text.startswith("a cat <lora:hashme:0.4>\n")
    short = addnet_hash(net_env.lora_dir / "hashme.safetensors")[:12]
    assert f'Lora hashes: "hashme: {short}"' in text


def test_disable_extra_networks_strips_the_tags_and_applies_nothing(net_env):
    model = net_env.model("sd1")
    _write(net_env, model, "lora", "off", seed=71)
    plain = net_env.run(prompt="a cat").images[0]
    net_env.run(prompt="a cat <lora:off:1>")
    got = net_env.run(prompt="a cat <lora:off:1>", disable_extra_networks=True).images[0]
    assert _png(got) == _png(plain)


def test_negative_prompt_tags_are_literal_text_as_in_a1111(net_env):
    model = net_env.model("sd1")
    _write(net_env, model, "lora", "neg", seed=81)
    a = net_env.run(prompt="a cat", negative_prompt="<lora:neg:1> ugly").images[0]
    b = net_env.run(prompt="a cat", negative_prompt="ugly").images[0]
    assert _png(a) != _png(b)  # not stripped, not applied
    c = net_env.run(prompt="a cat", negative_prompt="<lora:neg:1> ugly", networks=False).images[0]
    assert _png(a) == _png(c)


# -- bad input ----------------------------------------------------------------------------------------

def test_unknown_name_is_an_error_listing_the_closest_names(net_env):
    model = net_env.model("sd1")
    _write(net_env, model, "lora", "add_detail", seed=91)
    with pytest.raises(InvalidRequest) as e:
        net_env.run(prompt="a cat <lora:add_detail_v2:0.6>")
    assert "<lora:add_detail_v2:0.6>" in str(e.value) and "'add_detail'" in str(e.value)


def test_non_numeric_multiplier_is_an_error(net_env):
    with pytest.raises(InvalidRequest, match="not a number"):
        net_env.run(prompt="a cat <lora:add_detail:strong>")


def test_sdxl_lora_on_sd1_is_an_error(net_env):
    xl = net_env.model("sdxl")
    _write(net_env, xl, "lora", "xl-only", seed=101)
    with pytest.raises(InvalidRequest, match="SDXL"):
        net_env.run(prompt="a cat <lora:xl-only:1>")


def test_a_pickled_payload_lora_is_refused_and_never_executed(net_env, tmp_path):
    from tests.fixtures.tinymodels import write_malicious_ckpt

    marker = tmp_path / "pwned"
    write_malicious_ckpt(net_env.lora_dir / "evil.pt", marker)
    net_env.networks.loras.refresh()
    with pytest.raises(InvalidRequest, match="refused"):
        net_env.run(prompt="a cat <lora:evil:1>")
    assert not marker.exists()
    (net_env.lora_dir / "evil.pt").unlink()


# -- SDXL ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "ldm"), [("lora", True), ("lokr", False)])
def test_sdxl_both_text_encoders_and_unet_layouts(net_env, kind, ldm):
    model = net_env.model("sdxl")
    net = _write(net_env, model, kind, f"xl-{kind}", seed=111, ldm=ldm)
    assert {k.split("_")[1] for k in net.tensors} == {"te1", "te2", "unet"}
    got = net_env.run("sdxl", prompt=f"a cat <lora:xl-{kind}:0.9>").images[0]
    want = _reference(net_env, [net], "sdxl", mults=[(0.9, 0.9)], prompt="a cat")
    _close(got, want)


def test_peft_and_ldm_layouts_patch_what_the_kohya_layout_patches(net_env):
    """The same LoRA written as diffusers/peft keys (`unet.<path>.lora_A.weight`) and with LDM UNet names
    (`lora_unet_input_blocks_1_1_...`, A1111 exports) changes exactly the weights the kohya file changes."""
    model = net_env.model("sd1")
    net = _write(net_env, model, "lora", "layout-kohya", seed=121)
    ldm = make_network(model, "lora", seed=121, ldm=True)
    assert set(ldm.tensors) != set(net.tensors)
    ldm.save(net_env.lora_dir / "layout-ldm.safetensors")
    peft = {}
    for key, value in net.tensors.items():
        stem, _, factor = key.partition(".")
        for site, *_ in net.parts:
            if site.stem == stem:
                break
        component = "unet" if stem.startswith("lora_unet_") else "text_encoder"
        owner = model.unet if component == "unet" else model.text_encoders[0]
        path = next(n for n, m in owner.named_modules() if m is site.module)
        name = {"lora_up.weight": "lora_B.weight", "lora_down.weight": "lora_A.weight"}.get(factor, factor)
        peft[f"{component}.{path}.{name}"] = value
    from safetensors.torch import save_file

    save_file(peft, str(net_env.lora_dir / "layout-peft.safetensors"))
    net_env.networks.loras.refresh()
    results = []
    for name in ("layout-kohya", "layout-ldm", "layout-peft"):
        net_env.networks.activate(model, f"<lora:{name}:0.7>")
        results.append({m: m.weight.detach().clone() for m in net.expected()})
    net_env.networks.activate(model, None)
    for other in results[1:]:
        assert all(torch.equal(results[0][m], other[m]) for m in results[0])
    assert any(not torch.equal(results[0][m], m.weight) for m in results[0])


@pytest.mark.parametrize("shape", [(32, 16), (64, 8, 3, 3)])
def test_boft_delta_is_the_butterfly_product_of_its_stages(shape):
    """BOFT's delta for a linear and a conv weight equals the explicit-permutation-matrix reference."""
    from pipeline.models.networks.types import classify
    from tests.fixtures.networks import _boft

    g = torch.Generator().manual_seed(7)
    w = torch.randn(*shape, generator=g)
    tensors, reference = _boft(w, g)
    dw, db = classify(tensors).delta(w, 0.6)
    assert db is None
    assert torch.allclose(dw, 0.6 * reference(w), atol=1e-5)
    assert dw.abs().max() > 0.05


@pytest.mark.parametrize("kind", ["loha", "lokr"])
@pytest.mark.parametrize("shape", [(64, 48), (64, 32, 3, 3)])
def test_loha_and_lokr_patch_a_bf16_weight_with_one_rounding(kind, shape):
    """LoHa / LoKr are added in one float32 multiply-add pass: a bf16 weight ends up as the float32 merged
    weight rounded once (within half a bf16 step of it)."""
    from pipeline.models.networks.keys import SUFFIXES
    from pipeline.models.networks.types import classify
    from tests.fixtures.networks import _factors

    g = torch.Generator().manual_seed(9)
    w = (torch.randn(*shape, generator=g) * 0.1).bfloat16()
    tensors, delta = _factors(kind, w.float(), g, 4)
    tensors = {SUFFIXES[k]: v for k, v in tensors.items()}
    expected = w.float() + 0.7 * float(tensors["alpha"]) / 4 * delta(w.float())
    patched = w.clone()
    assert classify(tensors).add_to(patched, 0.7) is None
    assert ((patched.float() - expected).abs() <= expected.abs() * 2**-8 + 1e-6).all()
    assert (patched.float() - w.float()).abs().max() > 0.01


def test_boft_blocks_that_do_not_fit_the_rows_are_an_error_naming_the_tag(net_env):
    from safetensors.torch import save_file

    model = net_env.model("sd1")
    path = next(n for n, _ in model.unet.named_modules() if n.endswith("attn1.to_q"))
    stem = "lora_unet_" + path.replace(".", "_")
    save_file({f"{stem}.oft_blocks": torch.zeros(2, 3, 4, 4)}, str(net_env.lora_dir / "boft-bad.safetensors"))
    net_env.networks.loras.refresh()
    with pytest.raises(InvalidRequest, match="<lora:boft-bad:1>.*BOFT blocks 3x4 do not cover"):
        net_env.run(prompt="a cat <lora:boft-bad:1>")
    assert net_env.networks.activate(model, None) == []


def test_a_4_channel_conv_in_delta_on_an_inpainting_unet_leaves_the_extra_channels(net_env):
    from safetensors.torch import save_file

    net_env.ckpts.setdefault("sd1_inpaint", "tiny-sd1-inpaint.safetensors")
    model = net_env.model("sd1_inpaint")
    conv = model.unet.conv_in
    assert conv.weight.shape[1] == 9
    g = torch.Generator().manual_seed(5)
    up, down = torch.randn(conv.weight.shape[0], 2, 1, 1, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    save_file({"lora_unet_conv_in.lora_up.weight": up, "lora_unet_conv_in.lora_down.weight": down,
               "lora_unet_conv_in.alpha": torch.tensor(1.0)},
              str(net_env.lora_dir / "inpaint-in.safetensors"))
    net_env.networks.loras.refresh()
    before = conv.weight.detach().clone()
    net_env.networks.activate(model, "<lora:inpaint-in:0.6>")
    delta = (up.flatten(1) @ down.flatten(1)).reshape(-1, 4, 3, 3) * 0.5 * 0.6
    try:
        assert torch.allclose(conv.weight[:, :4], before[:, :4] + delta, atol=1e-6)
        assert torch.equal(conv.weight[:, 4:], before[:, 4:])
    finally:
        net_env.networks.activate(model, None)
    assert torch.equal(conv.weight, before)


def test_backups_leave_an_accelerator_they_would_crowd():
    """`lora_backup_device`: auto keeps the pristine copies beside the weights only while half of the
    device's memory stays free after them (an 80 GB card, yes; a 24 GB card with SDXL loaded, no)."""
    from pipeline.models.networks.patch import backup_device

    cpu, cuda, gib = torch.device("cpu"), torch.device("cuda", 0), 2**30
    assert backup_device("auto", cuda, 5 * gib, 70 * gib, 80 * gib) == cuda
    assert backup_device("auto", cuda, 5 * gib, 16 * gib, 24 * gib) == cpu
    assert backup_device("device", cuda, 5 * gib, 6 * gib, 12 * gib) == cuda
    assert backup_device("cpu", cuda, 1, 80 * gib, 80 * gib) == cpu
    assert backup_device("device", cpu, 1, 0, 0) == cpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_backups_on_the_cpu_restore_exactly():
    from pipeline.models.networks.keys import Target
    from pipeline.models.networks.patch import Patcher, Step
    from pipeline.models.networks.types import classify

    layer = torch.nn.Linear(64, 48).cuda().half().requires_grad_(False)
    before = layer.weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    network = classify({"lora_up": torch.randn(48, 4, generator=g),
                        "lora_down": torch.randn(4, 64, generator=g)})
    patcher = Patcher(backups="cpu")
    patcher.apply(("x",), [Step(Target("unet", "site", layer), network, 0.5, None)])
    assert not torch.equal(layer.weight, before)
    assert all(t.device.type == "cpu" for _, t in patcher._weights.values())
    patcher.restore()
    assert torch.equal(layer.weight, before)


def test_backups_in_shared_buffers_restore_every_weight_exactly(monkeypatch):
    """The backups are packed into a few buffers (patch.BACKUP_BUFFER elements each; small here so that
    layers split across buffers, of two dtypes, one bigger than a buffer): every bit comes back."""
    from pipeline.models.networks import patch
    from pipeline.models.networks.keys import Target
    from pipeline.models.networks.types import classify

    monkeypatch.setattr(patch, "BACKUP_BUFFER", 3000)
    g = torch.Generator().manual_seed(1)
    layers = [torch.nn.Linear(i, o).to(dtype).requires_grad_(False)
              for i, o, dtype in [(64, 48, torch.bfloat16), (32, 32, torch.float32), (16, 8, torch.bfloat16),
                                  (40, 24, torch.float32), (8, 8, torch.bfloat16)]]
    before = [layer.weight.detach().clone() for layer in layers]
    plan = [patch.Step(Target("unet", f"l{k}", layer),
                       classify({"lora_up": torch.randn(layer.out_features, 2, generator=g),
                                 "lora_down": torch.randn(2, layer.in_features, generator=g)}), 1.0, None)
            for k, layer in enumerate(layers)]
    patcher = patch.Patcher()
    patcher.apply(("a",), plan + plan[:1])  # the first layer twice: backed up once
    assert all(not torch.equal(layer.weight, b) for layer, b in zip(layers, before))
    buffers = {t.untyped_storage().data_ptr() for _, t in patcher._weights.values()}
    assert 2 < len(buffers) < len(layers)
    assert patcher.backup_bytes == sum(b.numel() * b.element_size() for b in before)
    patcher.restore()
    assert all(torch.equal(layer.weight, b) for layer, b in zip(layers, before))
