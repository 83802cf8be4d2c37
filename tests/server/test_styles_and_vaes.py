"""Unit tests of the two small stores behind /prompt-styles and /sd-vae: styles.csv with A1111's merge
rules, and VAE discovery, selection and swapping (both key layouts, restore of the model's own VAE)."""
from __future__ import annotations

import types
from pathlib import Path

import pytest
import safetensors.torch
import torch

from pipeline.jobs.styles import StyleStore, merge
from pipeline.models.vae_files import VaeRegistry, apply_vae
from pipeline.runtime.errors import ModelLoadError, UnknownName


def test_merge_follows_a1111() -> None:
    assert merge("{prompt}, masterpiece", "a cat") == "a cat, masterpiece"
    assert merge("oil painting", "a cat") == "a cat, oil painting"
    assert merge("oil painting", "") == "oil painting"
    assert merge("", "a cat") == "a cat"


def test_style_store_reads_a1111_csv_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    store = StyleStore(path)
    assert store.list() == []
    path.write_text('\ufeffname,prompt,negative_prompt\n"comma, style","{prompt}, x, y","a, b"\nempty,,\n',
                    encoding="utf-8")
    assert [s.name for s in store.list()] == ["comma, style", "empty"]
    assert store.apply("cat", "dog", ["comma, style", "empty"]) == ("cat, x, y", "dog, a, b")
    with pytest.raises(UnknownName, match="'comma, style'"):
        store.apply("cat", "", ["nope"])
    path.write_text("name,prompt\nonly,just this\n", encoding="utf-8")  # no negative column
    assert store.apply("cat", "", ["only"]) == ("cat, just this", "")


@pytest.fixture()
def tiny_vae():
    from diffusers import AutoencoderKL

    from pipeline.models.builtin import tiny_sd1_configs

    torch.manual_seed(0)
    return AutoencoderKL(**tiny_sd1_configs()["vae"]).eval()


def test_vae_files_are_found_selected_and_swapped(tmp_path: Path, tiny_vae) -> None:
    from tests.fixtures.ldm_export import vae_to_ldm

    models = tmp_path / "models"
    (models / "VAE" / "sub").mkdir(parents=True)
    (models / "Stable-diffusion").mkdir()
    torch.manual_seed(1)
    other = {k: torch.randn_like(v) if v.ndim > 1 else v.clone() for k, v in tiny_vae.state_dict().items()}
    ldm = {f"first_stage_model.{k}": v.contiguous() for k, v in vae_to_ldm(other, tiny_vae.config).items()}
    safetensors.torch.save_file(ldm, str(models / "VAE" / "sub" / "b-ldm.safetensors"))
    torch.save(other, models / "VAE" / "a-diffusers.pt")
    (models / "Stable-diffusion" / "m.safetensors").write_bytes(b"")
    torch.save(other, models / "Stable-diffusion" / "m.vae.pt")
    (models / "VAE" / "notes.txt").write_text("not a VAE")

    reg = VaeRegistry(models, tmp_path / "data")
    assert [v.name for v in reg.list()] == ["a-diffusers.pt", "b-ldm.safetensors", "m.vae.pt"]
    assert reg.check("b-ldm") == "b-ldm.safetensors" and reg.check("None") == "None"
    with pytest.raises(UnknownName, match="'Automatic', 'None', 'a-diffusers.pt'"):
        reg.check("zzz.pt")
    ckpt = str(models / "Stable-diffusion" / "m.safetensors")
    assert reg.select("Automatic", ckpt).name == "m.vae.pt"  # A1111's VAE-beside-the-checkpoint rule
    assert reg.select("Automatic", str(models / "elsewhere.safetensors")) is None
    assert reg.select("None", ckpt) is None

    own = {k: v.clone() for k, v in tiny_vae.state_dict().items()}
    model = types.SimpleNamespace(vae=tiny_vae, extra={}, title="m")
    for name in ("b-ldm.safetensors", "a-diffusers.pt"):
        vae = reg.find(name)
        assert apply_vae(model, vae, reg.shorthash(vae))
        assert all(torch.equal(tiny_vae.state_dict()[k], other[k]) for k in other)
        assert model.extra["vae_name"] == name and len(model.extra["vae_hash"]) == 10
    assert not apply_vae(model, reg.find("a-diffusers.pt"))  # already in place: nothing to do
    assert apply_vae(model, None)
    assert all(torch.equal(tiny_vae.state_dict()[k], own[k]) for k in own)
    assert model.extra["vae_name"] is None and model.extra["vae_hash"] is None


def test_a_vae_of_another_shape_is_refused_with_the_file_named(tmp_path: Path, tiny_vae) -> None:
    (tmp_path / "VAE").mkdir()
    bad = {k: torch.zeros(3) for k in tiny_vae.state_dict()}
    torch.save(bad, tmp_path / "VAE" / "wrong.pt")
    reg = VaeRegistry(tmp_path)
    model = types.SimpleNamespace(vae=tiny_vae, extra={}, title="m")
    with pytest.raises(ModelLoadError, match="wrong.pt.*shape"):
        apply_vae(model, reg.find("wrong.pt"))
    assert model.extra == {}  # the model keeps its own VAE
