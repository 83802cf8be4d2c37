"""Checkpoints: discovery and A1111 names, lazy cached hashes, lookup, family detection, offline loading."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # `tests.fixtures` (no root conftest yet)

from pipeline.models.builtin import BUILTIN_NAME, build_builtin_model, builtin_checkpoint_info
from pipeline.models.checkpoints import (
    CONFIGS_DIR,
    CheckpointInfo,
    CheckpointRegistry,
    detect_checkpoint,
    detect_family,
    hashing,
    load_checkpoint,
    probe_v_prediction,
)
from pipeline.runtime.errors import ModelLoadError, UnknownName
from tests.fixtures.tinymodels import (
    TinyModel,
    build_tiny_sd1,
    build_tiny_sdxl,
    write_malicious_ckpt,
)

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


# --------------------------------------------------------------------------------------------------
# fixtures: tiny models built once per session
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory) -> TinyModel:
    return build_tiny_sd1(tmp_path_factory.mktemp("tiny-sd1"))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> TinyModel:
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture()
def models(tmp_path, tiny_sd1, tiny_sdxl) -> Path:
    """A models dir laid out like A1111's, with files the registry must take and files it must skip."""
    root = tmp_path / "models"
    ckpts = root / "Stable-diffusion"
    tiny_sd1.write_safetensors(ckpts / "tiny-sd1.safetensors")
    tiny_sd1.write_ckpt(ckpts / "sub" / "tiny-sd1-old.ckpt")
    tiny_sdxl.write_safetensors(ckpts / "sub" / "deeper" / "tiny-xl.safetensors")
    tiny_sd1.write_diffusers(ckpts / "tiny-diffusers")
    (ckpts / "tiny-sd1.vae.safetensors").write_bytes(b"not a checkpoint")
    (ckpts / "notes.txt").write_text("hello")
    (ckpts / ".hidden.safetensors").write_bytes(b"x")  # listed: A1111's walk_files skips hidden folders only
    (ckpts / ".cache" / "in-hidden-folder.safetensors").parent.mkdir()
    (ckpts / ".cache" / "in-hidden-folder.safetensors").write_bytes(b"x")  # option list_hidden_files
    return root


def registry(models: Path, tmp_path: Path) -> CheckpointRegistry:
    return CheckpointRegistry(models, data_dir=tmp_path / "data")


def unet_out(unet, family: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 5, unet.config.cross_attention_dim, generator=g)
    kwargs = {}
    if family == "sdxl":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=ctx, **kwargs).sample


def assert_no_meta(model) -> None:
    for module in (model.unet, model.vae, *model.text_encoders):
        bad = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
        assert bad == []


def assert_same_weights(loaded, source) -> None:
    a, b = loaded.state_dict(), source.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k].to(b[k].dtype), b[k]), k


# --------------------------------------------------------------------------------------------------
# shipped configs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd1", "sd2", "sd2-base", "sdxl"])
def test_shipped_config_dirs_are_complete(family):
    d = CONFIGS_DIR / family
    for rel in ("model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "vae/config.json",
                "text_encoder/config.json"):
        assert (d / rel).is_file(), rel
    assert not list(d.glob("tokenizer*")), "one shared tokenizer, not a copy per family"


def test_one_shipped_tokenizer_tokenizes_like_clip_and_openclip():
    from pipeline.models.checkpoints.shipped import clip_tokenizer

    for openclip in (False, True):
        tok = clip_tokenizer(openclip=openclip)
        assert tok("a photo of a cat").input_ids == CAT_IDS
        assert len(tok) == 49408 and tok.model_max_length == 77
        assert tok.pad_token == ("!" if openclip else "<|endoftext|>")
    assert (CONFIGS_DIR / "LICENSE-clip-vocab.txt").read_text().count("Copyright (c) 2021 OpenAI") == 1


# --------------------------------------------------------------------------------------------------
# discovery and names
# --------------------------------------------------------------------------------------------------
def test_discovery_finds_files_subfolders_and_diffusers_dirs(models, tmp_path):
    reg = registry(models, tmp_path)
    by_name = {i.name: i for i in reg.list()}
    assert set(by_name) == {"tiny-sd1.safetensors", "sub/tiny-sd1-old.ckpt", "sub/deeper/tiny-xl.safetensors",
                            "tiny-diffusers", ".hidden.safetensors", ".cache/in-hidden-folder.safetensors"}
    assert by_name["sub/tiny-sd1-old.ckpt"].model_name == "sub_tiny-sd1-old"
    assert by_name["sub/deeper/tiny-xl.safetensors"].model_name == "sub_deeper_tiny-xl"
    assert by_name["tiny-diffusers"].kind == "diffusers"
    assert by_name["sub/tiny-sd1-old.ckpt"].kind == "ckpt"
    reg.list_hidden = lambda: False  # option list_hidden_files off: hidden folders are left out
    reg.refresh()
    assert {i.name for i in reg.list()} == set(by_name) - {".cache/in-hidden-folder.safetensors"}
    for info in reg.list():
        assert Path(info.filename).is_absolute() and Path(info.filename).exists()
        # Before the hash is known, the title is the bare name and the API shows null hashes (as A1111).
        assert info.title == info.name
        assert info.as_api() == {"title": info.name, "model_name": info.model_name, "hash": None,
                                 "sha256": None, "filename": info.filename, "config": None}


def test_listing_reads_no_file_content(models, tmp_path, monkeypatch):
    def no_hashing(*a, **k):
        raise AssertionError("hashed during listing")

    opened: list[str] = []
    real_open = open

    def spy_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(hashing, "file_hashes", no_hashing)
    monkeypatch.setattr("builtins.open", spy_open)
    reg = registry(models, tmp_path)
    reg.refresh()
    titles = reg.titles()
    reg.find("tiny-sd1")
    assert len(titles) == 6
    ckpt_dir = str(models / "Stable-diffusion")
    assert [p for p in opened if p.startswith(ckpt_dir)] == []


def test_hashes_match_hashlib_and_a1111_formats(models, tmp_path):
    reg = registry(models, tmp_path)
    info = reg.find("tiny-sd1.safetensors")
    data = Path(info.filename).read_bytes()
    assert info.ensure_hash() == hashlib.sha256(data).hexdigest()[:10]
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.hash == info.sha256[:10]
    assert info.legacy_hash == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert info.title == f"tiny-sd1.safetensors [{info.hash}]"
    assert info.as_api()["hash"] == info.hash and info.as_api()["sha256"] == info.sha256


def test_hash_cache_survives_restart_and_is_invalidated_by_changes(models, tmp_path, monkeypatch):
    reg = registry(models, tmp_path)
    info = reg.find("tiny-sd1.safetensors")
    first = info.ensure_hash()
    assert reg.cache.computed == 1
    info.ensure_hash()
    assert reg.cache.computed == 1  # cached in memory

    calls = []
    monkeypatch.setattr(hashing, "file_hashes", lambda p: calls.append(p) or ("0" * 64, "0" * 8))
    again = registry(models, tmp_path)  # a restart: same data dir
    assert again.find("tiny-sd1.safetensors").hash == first
    assert again.find(first).name == "tiny-sd1.safetensors"
    assert calls == []

    # mtime changes -> the cached hash is no longer trusted
    path = Path(info.filename)
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + 10))
    again.refresh()
    stale = again.find("tiny-sd1.safetensors")
    assert stale.sha256 is None and stale.title == "tiny-sd1.safetensors"
    monkeypatch.undo()
    # size changes (same mtime) -> rehash gives the new content's hash
    with open(path, "ab") as f:
        f.write(b"\0")
    os.utime(path, (st.st_atime, st.st_mtime + 10))
    again.refresh()
    changed = again.find("tiny-sd1.safetensors")
    assert changed.sha256 is None
    assert changed.ensure_hash() == hashlib.sha256(path.read_bytes()).hexdigest()[:10] != first


def test_background_hashing_fills_every_hash(models, tmp_path):
    reg = registry(models, tmp_path)
    reg.start_background_hashing().join(timeout=60)
    infos = reg.list()
    assert all(i.sha256 and len(i.sha256) == 64 for i in infos)
    folder = next(i for i in infos if i.kind == "diffusers")
    assert folder.title == f"tiny-diffusers [{folder.hash}]"


def test_find_follows_a1111_rules(models, tmp_path):
    reg = registry(models, tmp_path)
    a = reg.find("tiny-sd1.safetensors")
    a.ensure_hash()
    assert reg.find(a.title) is a
    assert reg.find(a.hash) is a
    assert reg.find(a.sha256) is a
    assert reg.find(a.legacy_hash) is a
    assert reg.find("tiny-sd1") is a  # model_name / stem
    assert reg.find(a.filename) is a
    assert reg.find("sub_tiny-sd1-old").name == "sub/tiny-sd1-old.ckpt"
    assert reg.find("tiny-sd1-old").name == "sub/tiny-sd1-old.ckpt"  # stem
    # closest match: shortest title containing the text
    assert reg.find("tiny-").name == "tiny-diffusers"
    assert reg.find("xl").name == "sub/deeper/tiny-xl.safetensors"
    # a stale or hash-less title still resolves (checksum stripped)
    assert reg.find("tiny-sd1.safetensors [0123456789]") is a
    assert reg.find("sub/deeper/tiny-xl.safetensors [ffffffffff]").model_name == "sub_deeper_tiny-xl"
    with pytest.raises(UnknownName) as err:
        reg.find("no-such-model", field="sd_model_checkpoint")
    assert err.value.valid == reg.titles()
    assert "no-such-model" in str(err.value) and a.title in str(err.value)
    with pytest.raises(UnknownName):
        reg.find("")


# --------------------------------------------------------------------------------------------------
# family detection
# --------------------------------------------------------------------------------------------------
def test_family_detection_from_keys(models, tmp_path):
    reg = registry(models, tmp_path)
    sd1 = detect_checkpoint(reg.find("tiny-sd1.safetensors"))
    assert (sd1.family, sd1.variant, sd1.unet_in_channels) == ("sd1", "v1", 4)
    xl = detect_checkpoint(reg.find("tiny-xl"))
    # diffusers' own detector calls a shallow SDXL "v1"; ours looks at the OpenCLIP keys.
    assert (xl.family, xl.variant, xl.diffusers_type) == ("sdxl", "xl_base", "v1")
    assert reg.find("tiny-xl").family == "sdxl"
    assert detect_checkpoint(reg.find("sub_tiny-sd1-old")).family == "sd1"
    assert detect_checkpoint(reg.find("tiny-diffusers")).family == "sd1"


def test_family_detection_sd2_inpainting_refiner_and_non_checkpoints():
    unet = "model.diffusion_model."
    sd2 = {unet + "input_blocks.0.0.weight": (320, 4, 3, 3),
           unet + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
           "cond_stage_model.model.token_embedding.weight": (49408, 1024)}
    assert detect_family(sd2).family == "sd2"
    inpaint = {unet + "input_blocks.0.0.weight": (320, 9, 3, 3),
               unet + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
               "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768)}
    det = detect_family(inpaint)
    assert (det.family, det.variant, det.unet_in_channels) == ("sd1", "v1-inpainting", 9)
    assert detect_family({**sd2, "v_pred": ()}).v_pred_key
    refiner = detect_family({unet + "input_blocks.0.0.weight": (384, 4, 3, 3),
                             unet + "label_emb.0.0.weight": (1536, 2560),
                             "conditioner.embedders.0.model.text_projection": (1280, 1280)}, "r.safetensors")
    assert (refiner.family, refiner.variant) == ("sdxl", "xl_refiner")
    turbo = detect_family({unet + "input_blocks.0.0.weight": (320, 4, 3, 3),
                           "conditioner.embedders.0.model.token_embedding.weight": (49408, 1024)})
    assert turbo.family == "sd2"
    for channels, what in ((5, "depth"), (8, "instruct-pix2pix"), (7, "x4 upscaler")):
        with pytest.raises(ModelLoadError, match=what):
            detect_family({**sd2, unet + "input_blocks.0.0.weight": (320, channels, 3, 3)}, "x.safetensors")
    with pytest.raises(ModelLoadError, match="Playground v2.5"):
        detect_family({**sd2, "edm_mean": (1, 4, 1, 1), "edm_std": (1, 4, 1, 1)})
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint") as err:
        detect_family({"encoder.conv_in.weight": (128, 3, 3, 3)}, "/m/vae.safetensors")
    assert err.value.path == "/m/vae.safetensors"


def test_probe_v_prediction_sign():
    class Stub(torch.nn.Module):
        def __init__(self, sign):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))
            self.sign = sign
            self.config = type("C", (), {"in_channels": 4, "cross_attention_dim": 8})()

        def forward(self, x, t, encoder_hidden_states):
            # at t=999 an epsilon model returns about its input, a v-model about its negative
            return type("O", (), {"sample": x if self.sign > 0 else -3 * x})()

    assert probe_v_prediction(Stub(-1)) is True
    assert probe_v_prediction(Stub(1)) is False


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------
def test_load_tiny_sd1_single_file_round_trips(models, tmp_path, tiny_sd1):
    reg = registry(models, tmp_path)
    info = reg.find("tiny-sd1.safetensors")
    t0 = time.perf_counter()
    model = load_checkpoint(info, "cpu", torch.float32)
    assert time.perf_counter() - t0 < 30
    assert model.family == "sd1" and model.prediction_type == "epsilon"
    assert model.title == info.title == f"tiny-sd1.safetensors [{info.hash}]"
    assert model.extra["sha256"] == hashlib.sha256(Path(info.filename).read_bytes()).hexdigest()
    assert model.latent_channels == 4 and model.vae_scale_factor == 8
    assert_no_meta(model)
    assert_same_weights(model.unet, tiny_sd1.unet)
    assert_same_weights(model.vae, tiny_sd1.vae)
    assert_same_weights(model.text_encoders[0], tiny_sd1.text_encoders[0])
    torch.testing.assert_close(unet_out(model.unet, "sd1"), unet_out(tiny_sd1.unet, "sd1"), rtol=0, atol=1e-5)
    assert model.tokenizers[0]("a photo of a cat").input_ids == CAT_IDS
    assert model.scheduler_config["beta_schedule"] == "scaled_linear"


def test_load_tiny_sdxl_single_file_round_trips(models, tmp_path, tiny_sdxl):
    reg = registry(models, tmp_path)
    model = load_checkpoint(reg.find("tiny-xl"), "cpu", torch.float32)
    assert model.family == "sdxl" and len(model.text_encoders) == 2 and len(model.tokenizers) == 2
    assert_no_meta(model)
    assert_same_weights(model.unet, tiny_sdxl.unet)
    assert_same_weights(model.vae, tiny_sdxl.vae)
    for loaded, source in zip(model.text_encoders, tiny_sdxl.text_encoders):
        assert_same_weights(loaded, source)
    torch.testing.assert_close(unet_out(model.unet, "sdxl"), unet_out(tiny_sdxl.unet, "sdxl"), rtol=0, atol=1e-5)
    ids = torch.tensor([CAT_IDS])
    with torch.no_grad():
        torch.testing.assert_close(model.text_encoders[1](ids).text_embeds,
                                   tiny_sdxl.text_encoders[1](ids).text_embeds)
    assert model.tokenizers[1].pad_token == "!"


def test_load_ckpt_and_diffusers_folder(models, tmp_path, tiny_sd1):
    reg = registry(models, tmp_path)
    ckpt = load_checkpoint(reg.find("sub/tiny-sd1-old.ckpt"))
    assert_no_meta(ckpt)
    assert_same_weights(ckpt.unet, tiny_sd1.unet)
    folder = load_checkpoint(reg.find("tiny-diffusers"))
    assert folder.family == "sd1"
    assert_no_meta(folder)
    assert_same_weights(folder.unet, tiny_sd1.unet)
    assert_same_weights(folder.text_encoders[0], tiny_sd1.text_encoders[0])


def test_fp16_file_loads_in_requested_dtype(tmp_path, tiny_sd1):
    path = tiny_sd1.write_safetensors(tmp_path / "half.safetensors", dtype=torch.float16)
    model = load_checkpoint(CheckpointInfo.from_path(path))
    assert {p.dtype for p in model.unet.parameters()} == {torch.float32}
    ref = tiny_sd1.unet.state_dict()
    for k, v in model.unet.state_dict().items():
        assert torch.equal(v, ref[k].half().float()), k


def test_v_prediction_from_sidecar_yaml_and_v_pred_key(tmp_path, tiny_sd1):
    from safetensors.torch import save_file

    path = tiny_sd1.write_safetensors(tmp_path / "vmodel.safetensors")
    (tmp_path / "vmodel.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    info = CheckpointInfo.from_path(path, tmp_path)
    assert info.config == str(tmp_path / "vmodel.yaml")
    model = load_checkpoint(info)
    assert model.prediction_type == "v_prediction"
    assert model.extra["prediction_type_source"] == "sidecar yaml"

    marked = tmp_path / "marked.safetensors"
    save_file({**tiny_sd1.state_dict, "v_pred": torch.tensor([])}, str(marked))
    model = load_checkpoint(CheckpointInfo.from_path(marked))
    assert model.prediction_type == "v_prediction" and model.extra["prediction_type_source"] == "v_pred key"


def test_malicious_ckpt_is_refused_and_never_executed(tmp_path, tiny_sd1):
    marker = tmp_path / "pwned.txt"
    evil = write_malicious_ckpt(tmp_path / "models" / "Stable-diffusion" / "evil.ckpt", marker)
    reg = CheckpointRegistry(tmp_path / "models", data_dir=tmp_path / "data")
    with pytest.raises(ModelLoadError) as err:
        load_checkpoint(reg.find("evil"))
    assert err.value.path == str(evil) and "refused" in err.value.reason
    assert not marker.exists()
    # The fixture is real: an unrestricted unpickler would have created the file.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_corrupt_and_incomplete_files_fail_alone(models, tmp_path, tiny_sd1):
    from safetensors.torch import save_file

    ckpts = models / "Stable-diffusion"
    (ckpts / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + b"\0" * 100)
    no_vae = {k: v for k, v in tiny_sd1.state_dict.items() if not k.startswith("first_stage_model.")}
    save_file(no_vae, str(ckpts / "no-vae.safetensors"))
    missing_one = dict(tiny_sd1.state_dict)
    missing_one.pop("model.diffusion_model.out.2.weight")
    save_file(missing_one, str(ckpts / "missing-one.safetensors"))

    reg = registry(models, tmp_path)
    assert {"broken.safetensors", "no-vae.safetensors", "missing-one.safetensors"} <= {i.name for i in reg.list()}
    with pytest.raises(ModelLoadError) as err:
        load_checkpoint(reg.find("broken"))
    assert err.value.path.endswith("broken.safetensors") and "broken.safetensors" in str(err.value)
    with pytest.raises(ModelLoadError, match="VAE weights missing") as err:
        load_checkpoint(reg.find("no-vae"))
    assert err.value.path.endswith("no-vae.safetensors")
    with pytest.raises(ModelLoadError, match="UNet") as err:
        load_checkpoint(reg.find("missing-one"))
    assert err.value.path.endswith("missing-one.safetensors")
    # the registry keeps serving the others
    good = load_checkpoint(reg.find("tiny-sd1.safetensors"))
    assert_no_meta(good)


def test_loading_is_offline(models, tmp_path, tiny_sd1, tiny_sdxl, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access attempted during loading")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    reg = registry(models, tmp_path)
    assert load_checkpoint(reg.find("tiny-sd1.safetensors")).family == "sd1"
    assert load_checkpoint(reg.find("tiny-xl")).family == "sdxl"
    assert load_checkpoint(reg.find("tiny-diffusers")).family == "sd1"
    assert build_builtin_model().family == "sd1"


# --------------------------------------------------------------------------------------------------
# builtin model
# --------------------------------------------------------------------------------------------------
def test_builtin_model_is_deterministic_and_listed(models, tmp_path):
    t0 = time.perf_counter()
    first = build_builtin_model("cpu", torch.float32)
    assert time.perf_counter() - t0 < 15
    second = build_builtin_model("cpu", torch.float32)
    assert first.title == second.title and first.title.startswith(f"{BUILTIN_NAME} [")
    assert_same_weights(first.unet, second.unet)
    assert_no_meta(first)
    assert first.vae_scale_factor == 8 and first.tokenizers[0]("a photo of a cat").input_ids == CAT_IDS
    assert first.text_encoders[0].config.vocab_size == 49408
    with torch.no_grad():
        out = unet_out(first.unet, "sd1")
    assert torch.isfinite(out).all() and out.std() > 0

    info = builtin_checkpoint_info()
    assert info.as_api() == {"title": first.title, "model_name": BUILTIN_NAME, "hash": first.title[-11:-1],
                             "sha256": first.extra["sha256"], "filename": "<builtin>", "config": None}
    reg = CheckpointRegistry(models, data_dir=tmp_path / "data", extra=[info])
    reg.refresh()
    assert reg.list()[-1] is info
    assert reg.find(BUILTIN_NAME) is info and reg.find(info.hash) is info
    assert load_checkpoint(info).title == first.title



# --------------------------------------------------------------------------------------------------
# architecture read from the tensors
# --------------------------------------------------------------------------------------------------
def _meta_modules(family: str) -> dict[str, torch.nn.Module]:
    """The stock modules of a family, built from its shipped configs on the meta device (no weights)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    d = CONFIGS_DIR / family
    with init_empty_weights():
        out = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d, subfolder="unet")),
               "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(d, subfolder="vae")),
               "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(d / "text_encoder"))}
        if (d / "text_encoder_2").is_dir():
            out["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(d / "text_encoder_2"))
    return out


def _structure(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_stock_shapes_derive_the_shipped_configs(family):
    """Stock SD1/SD2/SDXL files keep loading exactly as before: the architecture read from stock-shaped keys
    is the shipped config's (same modules, same head counts), so the same weights give the same images."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from pipeline.models.checkpoints import architecture as arch
    from tests.fixtures.ldm_export import _prefixed, openclip_to_ldm, unet_to_ldm, vae_to_ldm

    m = _meta_modules(family)
    shapes = {**_prefixed("model.diffusion_model.", unet_to_ldm(m["unet"].state_dict(), m["unet"].config)),
              **_prefixed("first_stage_model.", vae_to_ldm(m["vae"].state_dict(), m["vae"].config))}
    te = {k.removeprefix("text_model."): v for k, v in m["text_encoder"].state_dict().items()}
    if family == "sd1":
        shapes.update(_prefixed("cond_stage_model.transformer.text_model.", te))
    elif family == "sdxl":
        shapes.update(_prefixed("conditioner.embedders.0.transformer.text_model.", te))
        shapes.update(_prefixed("conditioner.embedders.1.model.", openclip_to_ldm(m["text_encoder_2"].state_dict())))
    else:  # SD 2.x files hold 24 OpenCLIP-H layers and a projection; the encoder uses 23
        with init_empty_weights():
            full = type(m["text_encoder"])(CLIPTextConfig.from_pretrained(
                CONFIGS_DIR / "sd2" / "text_encoder", num_hidden_layers=24))
        state = dict(full.state_dict())
        state["text_model.text_projection.weight"] = torch.empty(1024, 1024, device="meta")
        oc = openclip_to_ldm({k if k.startswith("text_model.") else "text_model." + k: v for k, v in
                              state.items() if k != "text_model.text_projection.weight"}
                             | {"text_projection.weight": state["text_model.text_projection.weight"]})
        shapes.update(_prefixed("cond_stage_model.model.", oc))
    shapes = {k: tuple(v.shape) for k, v in shapes.items()}
    det = detect_family(shapes)
    assert det.family == family
    base = json.loads((CONFIGS_DIR / family / "unet" / "config.json").read_text())
    specs = arch.text_encoders(shapes, family, False,
                               [json.loads((d / "config.json").read_text())
                                for d in sorted((CONFIGS_DIR / family).glob("text_encoder*"))])
    unet_cfg = arch.unet_config(shapes, base, pooled_dim=arch.pooled_width(specs))
    for key in ("block_out_channels", "down_block_types", "up_block_types", "cross_attention_dim",
                "use_linear_projection", "attention_head_dim", "layers_per_block", "in_channels",
                "projection_class_embeddings_input_dim", "addition_time_embed_dim", "addition_embed_type"):
        assert _norm(unet_cfg.get(key)) == _norm(base.get(key)), key
    with init_empty_weights():
        derived = UNet2DConditionModel.from_config(unet_cfg)
        vae_cfg = arch.vae_config(shapes, json.loads((CONFIGS_DIR / family / "vae" / "config.json").read_text()))
        vae = AutoencoderKL.from_config(vae_cfg)
    assert _structure(derived) == _structure(m["unet"])
    assert _heads(derived) == _heads(m["unet"])
    assert _structure(vae) == _structure(m["vae"])
    shipped_te = [m[k] for k in sorted(m) if k.startswith("text_encoder")]
    for spec, stock in zip(specs, shipped_te, strict=True):
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                    "max_position_embeddings", "vocab_size"):
            assert spec.config[key] == getattr(stock.config, key), (spec.role, key)
        if spec.projection:
            assert spec.config["projection_dim"] == stock.config.projection_dim


def _norm(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _heads(unet) -> list[int]:
    return [m.heads for _, m in unet.named_modules() if type(m).__name__ == "Attention"]


# --------------------------------------------------------------------------------------------------
# variants users keep: each loads from the file alone and generates through txt2img
# --------------------------------------------------------------------------------------------------
def _variants(work: Path) -> dict[str, TinyModel]:
    from tests.fixtures.tinymodels import BK_SDM, SSD_1B, VEGA, build_tiny_refiner, build_tiny_sd2

    return {"sd2-like": build_tiny_sd2(work),
            "ssd1b-like": build_tiny_sdxl(work, seed=40, unet=SSD_1B),
            "vega-like": build_tiny_sdxl(work, seed=45, unet=VEGA),
            "bksdm-like": build_tiny_sd1(work, seed=50, unet=BK_SDM),
            "xl-refiner-like": build_tiny_refiner(work, seed=60),
            "sd1-inpaint": build_tiny_sd1(work, seed=70, in_channels=9),
            "xl-inpaint": build_tiny_sdxl(work, seed=80, unet={"in_channels": 9})}


@pytest.fixture(scope="module")
def variant_env(tmp_path_factory):
    from pipeline.models.manager import ModelManager
    from tests.conftest import Env
    from upscalers.registry import UpscalerRegistry

    root = tmp_path_factory.mktemp("models-variants")
    variants = _variants(tmp_path_factory.mktemp("variants-build"))
    for name, tiny in variants.items():
        tiny.write_safetensors(root / "Stable-diffusion" / f"{name}.safetensors")
    mm = ModelManager(CheckpointRegistry(root, root / "data"), torch.device("cpu"), torch.float32, max_loaded=1)
    return Env(mm, UpscalerRegistry(root)), variants


@pytest.mark.parametrize("name", ["sd2-like", "ssd1b-like", "vega-like", "bksdm-like", "xl-refiner-like",
                                  "sd1-inpaint", "xl-inpaint"])
def test_variant_loads_its_own_shapes_and_generates(variant_env, name):
    env, variants = variant_env
    source = variants[name]
    model = env.model(name)
    assert_no_meta(model)
    for loaded, src in ((model.unet, source.unet), (model.vae, source.vae),
                        *zip(model.text_encoders, source.text_encoders, strict=True)):
        assert_same_weights(loaded, src)
    assert _heads(model.unet) == _heads(source.unet)
    for key in ("in_channels", "layers_per_block", "block_out_channels", "down_block_types", "up_block_types",
                "mid_block_type", "cross_attention_dim", "use_linear_projection"):
        assert _norm(getattr(model.unet.config, key)) == _norm(getattr(source.unet.config, key)), key
    torch.testing.assert_close(unet_out_any(model.unet), unet_out_any(source.unet), rtol=0, atol=1e-5)
    result = env.run(options={"sd_model_checkpoint": name}, steps=3, width=64, height=64)
    image = result.images[0]
    assert image.size == (64, 64) and len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 16  # not flat
    assert infotext_params_model(result.infotexts[0]) == name


def unet_out_any(unet) -> torch.Tensor:
    """One UNet call on fixed random inputs, whatever the input channels and vector conditioning."""
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    x = torch.randn(1, cfg.in_channels, 8, 8, generator=g)
    ctx = torch.randn(1, 5, cfg.cross_attention_dim, generator=g)
    kwargs = {}
    if cfg.addition_embed_type == "text_time":  # the tiny SDXL-likes pool 64 wide
        ids = (cfg.projection_class_embeddings_input_dim - 64) // cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 64, generator=g),
                                       "time_ids": torch.randn(1, ids, generator=g)}
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=ctx, **kwargs).sample


def infotext_params_model(text: str) -> str:
    from tests.conftest import infotext_params

    return infotext_params(text)["Model"]


def test_strict_load_names_unused_and_missing_keys(tmp_path, tiny_sd1):
    from safetensors.torch import save_file

    extra = {**tiny_sd1.state_dict, "model.diffusion_model.input_blocks.1.1.stray.weight": torch.zeros(2),
             "model_ema.decay": torch.tensor(0.999), "alphas_cumprod": torch.ones(1000)}
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ModelLoadError, match="input_blocks.1.1.stray.weight") as err:
        load_checkpoint(CheckpointInfo.from_path(tmp_path / "extra.safetensors"))
    assert err.value.path.endswith("extra.safetensors")
    stray_prefix = {**tiny_sd1.state_dict, "depth_free.weight": torch.zeros(2)}
    save_file(stray_prefix, str(tmp_path / "stray.safetensors"))
    with pytest.raises(ModelLoadError, match="depth_free.weight"):
        load_checkpoint(CheckpointInfo.from_path(tmp_path / "stray.safetensors"))
    # known-harmless extras (EMA, DDPM buffers, markers) are skipped on purpose
    harmless = {**tiny_sd1.state_dict, "model_ema.decay": torch.tensor(0.999), "alphas_cumprod": torch.ones(1000),
                "ztsnr": torch.tensor([])}
    save_file(harmless, str(tmp_path / "harmless.safetensors"))
    model = load_checkpoint(CheckpointInfo.from_path(tmp_path / "harmless.safetensors"))
    assert model.scheduler_config["rescale_betas_zero_snr"] is True


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_folder_without_configs_reads_the_weights(tmp_path, tiny_sd1, tiny_sdxl, family):
    import shutil

    tiny = tiny_sd1 if family == "sd1" else tiny_sdxl
    folder = tiny.write_diffusers(tmp_path / "Stable-diffusion" / f"bare-{family}")
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if (folder / sub).is_dir():
            (folder / sub / "config.json").unlink()
    for sub in ("tokenizer", "tokenizer_2", "scheduler"):
        shutil.rmtree(folder / sub, ignore_errors=True)
    model = load_checkpoint(CheckpointInfo.from_path(folder, tmp_path / "Stable-diffusion"))
    assert model.family == family and model.prediction_type == "epsilon"
    assert_no_meta(model)
    for loaded, src in ((model.unet, tiny.unet), (model.vae, tiny.vae),
                        *zip(model.text_encoders, tiny.text_encoders, strict=True)):
        assert_same_weights(loaded, src)
    assert _heads(model.unet) == _heads(tiny.unet)
    assert [e.config.hidden_act for e in model.text_encoders] == [e.config.hidden_act for e in tiny.text_encoders]
    torch.testing.assert_close(unet_out_any(model.unet), unet_out_any(tiny.unet), rtol=0, atol=1e-5)
    assert model.tokenizers[-1]("a photo of a cat").input_ids == CAT_IDS
