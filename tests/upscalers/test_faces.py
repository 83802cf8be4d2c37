"""Face restoration: GFPGAN / CodeFormer files found under <models>/GFPGAN and <models>/Codeformer,
offline face detection, crop-restore-paste confined to the face, A1111's visibility blend, and the
extras stages. A random-weight GFPGAN (spandrel detects only the full-size configuration: 87M
parameters, stored in fp16) takes ~15 s per face on 2 cores, so only one test runs it for real; the
others run the same code with a cheap stand-in network."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from skimage import data as skdata
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.GFPGAN import GFPGAN

from upscalers import ExtrasParams, FaceRestorationUnavailable, UpscalerRegistry, run_extras
from upscalers.faces import FaceModel, FaceRestorers, detect_faces, restore_faces


def _half(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}


@pytest.fixture(scope="session")
def gfpgan_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return _half(GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                        fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1,
                        sft_half=True))


@pytest.fixture(scope="session")
def codeformer_state() -> dict[str, torch.Tensor]:
    arch = pytest.importorskip("spandrel_extra_arches.architectures.CodeFormer")
    torch.manual_seed(0)
    return _half(arch.CodeFormer(dim_embd=64, n_head=8, n_layers=1, codebook_size=32))


@pytest.fixture(scope="session")
def face_files(tmp_path_factory: pytest.TempPathFactory, gfpgan_state) -> Path:
    """GFPGAN as .safetensors and .pth, saved once."""
    root = tmp_path_factory.mktemp("face-files")
    safetensors.torch.save_file(gfpgan_state, str(root / "GFPGANv1.4.safetensors"))
    torch.save(gfpgan_state, root / "GFPGANv1.4.pth")
    return root


@pytest.fixture()
def models_with(tmp_path: Path, face_files: Path) -> Callable[..., Path]:
    """A models folder holding links to the named files: models_with(**{"GFPGAN/a.pth": "GFPGANv1.4.pth"})."""

    def make(**files: str) -> Path:
        root = tmp_path / "models"
        root.mkdir(exist_ok=True)
        for target, source in files.items():
            (root / target).parent.mkdir(parents=True, exist_ok=True)
            (root / target).symlink_to(face_files / source)
        return root

    return make


def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


def invert(x: torch.Tensor, weight: float) -> torch.Tensor:
    """A stand-in face network: the colour negative of its input."""
    return -x


def face_square() -> tuple[int, int, int]:
    [box] = detect_faces(astronaut())
    return box.crop_square()


def outside(a: np.ndarray, square: tuple[int, int, int]) -> np.ndarray:
    left, top, side = square
    keep = np.ones(a.shape[:2], bool)
    keep[max(0, top):top + side, max(0, left):left + side] = False
    return a[keep]


# -- discovery --------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["GFPGANv1.4.safetensors", "GFPGANv1.4.pth"])
def test_a_gfpgan_file_is_found_and_listed_as_a1111_does(models_with, source: str) -> None:
    models = models_with(**{f"GFPGAN/sub/{source}": source})
    faces = FaceRestorers(models)
    [restorer] = faces.list()
    assert restorer.name == "GFPGAN" and restorer.path == models / "GFPGAN" / "sub" / source
    assert faces.as_api_list() == [{"name": "GFPGAN", "cmd_dir": str(models / "GFPGAN" / "sub")}]
    assert faces.pick(None) is restorer and faces.pick("CodeFormer") is restorer
    assert faces.get("gfpgan") is restorer and faces.get("CodeFormer") is None


def test_no_folders_no_restorers(tmp_path: Path) -> None:
    faces = FaceRestorers(tmp_path / "nothing")
    assert faces.list() == [] and faces.pick("GFPGAN") is None
    with pytest.raises(FaceRestorationUnavailable, match=r"gfpgan_visibility.*<models>/GFPGAN"):
        faces.require("GFPGAN", "gfpgan_visibility")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_unusable_files_are_skipped_with_one_line_each(tmp_path: Path, caplog) -> None:
    models = tmp_path / "models"
    (models / "GFPGAN").mkdir(parents=True)
    (models / "GFPGAN" / "garbage.pth").write_bytes(b"not a model at all")
    torch.manual_seed(0)
    safetensors.torch.save_file(ESRGAN(num_filters=8, num_blocks=1, scale=2).state_dict(),
                                str(models / "GFPGAN" / "esrgan.safetensors"))
    marker = tmp_path / "pwned"
    torch.save({"toRGB.0.weight": _Payload(marker)}, models / "GFPGAN" / "evil.pth")
    (models / "GFPGAN" / "notes.txt").write_text("ignored: not a model file name")
    with caplog.at_level(logging.WARNING, logger="upscalers"):
        faces = FaceRestorers(models)
    assert faces.list() == []
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert any("esrgan.safetensors" in line and "ESRGAN model, not GFPGAN" in line for line in lines)
    assert any("garbage.pth" in line for line in lines) and any("evil.pth" in line for line in lines)
    assert not marker.exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="upscalers"):
        faces.refresh()  # unchanged files are not read (nor reported) again
    assert caplog.records == []


def test_codeformer_needs_the_noncommercial_opt_in(tmp_path: Path, models_with, codeformer_state, caplog) -> None:
    models = models_with(**{"GFPGAN/GFPGANv1.4.safetensors": "GFPGANv1.4.safetensors"})
    (models / "Codeformer").mkdir()
    safetensors.torch.save_file(codeformer_state, str(models / "Codeformer" / "codeformer-v0.1.0.safetensors"))
    with caplog.at_level(logging.WARNING, logger="upscalers"):
        assert [r.name for r in FaceRestorers(models).list()] == ["GFPGAN"]
    assert "--enable-noncommercial-upscalers" in caplog.text and "codeformer-v0.1.0" in caplog.text
    faces = FaceRestorers(models, allow_noncommercial=True)
    assert [r.name for r in faces.list()] == ["CodeFormer", "GFPGAN"]  # A1111's order
    assert faces.pick(None).name == "CodeFormer" and faces.pick("GFPGAN").name == "GFPGAN"
    assert faces.pick("nope").name == "CodeFormer"


def test_codeformer_receives_the_fidelity_weight(tmp_path: Path, codeformer_state, monkeypatch) -> None:
    (tmp_path / "Codeformer").mkdir()
    safetensors.torch.save_file(codeformer_state, str(tmp_path / "Codeformer" / "cf.safetensors"))
    faces = FaceRestorers(tmp_path, allow_noncommercial=True)
    [restorer] = faces.list()
    model = faces.net(restorer)
    assert type(model.model).__name__ == "CodeFormer" and next(model.model.parameters()).dtype == torch.float32
    seen: list[tuple[tuple[int, ...], float, float, float]] = []

    def forward(x: torch.Tensor, weight: float = 0.5, **kwargs) -> tuple[torch.Tensor, ...]:
        seen.append((tuple(x.shape), weight, float(x.min()), float(x.max())))
        return (x, None, None)  # the real model's (image, logits, features)

    monkeypatch.setattr(model.model, "forward", forward)  # the real forward takes ~30 s on 2 cores
    out = faces.restore(astronaut(), restorer, visibility=1.0, codeformer_weight=0.3)
    assert len(seen) == 1
    shape, weight, low, high = seen[0]
    assert shape == (1, 3, 512, 512) and weight == 0.3 and -1 <= low < -0.5 and 0.5 < high <= 1
    # an identity network gives the image back up to the resampling of the face square
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(astronaut(), np.int16))
    assert outside(diff, face_square()).max() == 0 and diff.mean() < 1.0


# -- restoration ----------------------------------------------------------------------------------

def test_the_face_is_detected_offline() -> None:
    [box] = detect_faces(astronaut())
    assert 160 < box.left < 200 and 50 < box.top < 90 and 80 < box.width < 110
    left, top, side = box.crop_square()
    assert left < box.left and top < box.top and side > box.width * 1.5
    # found at any scale the picture comes in
    [big] = detect_faces(astronaut().resize((1536, 1536), Image.Resampling.LANCZOS))
    assert abs(big.left - 3 * box.left) < 30 and abs(big.width - 3 * box.width) < 40


def test_only_the_face_square_changes() -> None:
    image = astronaut()
    out = restore_faces(image, invert, visibility=1.0)
    assert out.size == image.size and out.mode == "RGB"
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(image, np.int16)).max(axis=2)
    square = face_square()
    assert outside(diff, square).max() == 0
    left, top, side = square
    centre = diff[top + side // 4:top + 3 * side // 4, left + side // 4:left + 3 * side // 4]
    assert centre.mean() > 60  # the stand-in negates the face
    assert diff[top + side // 2, left] < diff[top + side // 2, left + side // 2]  # feathered edge


@pytest.mark.parametrize("visibility", [0.0, 0.5, 1.0, 0.25])
def test_visibility_blends_with_the_original_as_a1111(visibility: float) -> None:
    image = astronaut()
    full = restore_faces(image, invert, visibility=1.0)
    out = restore_faces(image, invert, visibility=visibility)
    if visibility == 0:
        assert np.array_equal(np.asarray(out), np.asarray(image))
    else:
        assert np.array_equal(np.asarray(out), np.asarray(Image.blend(image, full, visibility)))


def test_images_without_a_face_are_unchanged() -> None:
    def never(x: torch.Tensor, weight: float) -> torch.Tensor:
        raise AssertionError("no face, no model call")

    for name in ("chelsea", "coffee"):
        image = Image.fromarray(getattr(skdata, name)())
        out = restore_faces(image, never, visibility=1.0)
        assert np.array_equal(np.asarray(out), np.asarray(image))
    assert np.array_equal(np.asarray(restore_faces(Image.new("RGB", (3, 2)), never)), np.zeros((2, 3, 3)))


def test_alpha_survives_and_faces_at_the_border_are_mirrored() -> None:
    rgba = astronaut().crop((150, 40, 400, 300)).convert("RGBA")  # the face's square reaches outside
    alpha = Image.linear_gradient("L").resize(rgba.size)
    rgba.putalpha(alpha)
    out = restore_faces(rgba, invert, visibility=1.0)
    assert out.mode == "RGBA" and out.size == rgba.size
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha))
    assert np.abs(np.asarray(out, np.int16)[..., :3] - np.asarray(rgba, np.int16)[..., :3]).mean() > 20


def test_the_model_loads_only_when_a_face_is_found(models_with, monkeypatch) -> None:
    faces = FaceRestorers(models_with(**{"GFPGAN/g.safetensors": "GFPGANv1.4.safetensors"}))
    [restorer] = faces.list()
    calls: list[str] = []
    monkeypatch.setattr(FaceRestorers, "net", lambda self, r: calls.append(r.name) or invert)
    cat = Image.fromarray(skdata.chelsea())
    assert np.array_equal(np.asarray(faces.restore(cat, restorer)), np.asarray(cat)) and calls == []
    faces.restore(astronaut(), restorer)
    assert calls == ["GFPGAN"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["GFPGAN", "CodeFormer"])
def test_a_real_model_restores_the_face_and_nothing_else(tmp_path: Path, face_files: Path, name: str,
                                                         request: pytest.FixtureRequest) -> None:
    """The real networks (random weights), ~5-10 s each here."""
    models = tmp_path / "models"
    if name == "GFPGAN":
        (models / "GFPGAN").mkdir(parents=True)
        (models / "GFPGAN" / "GFPGANv1.4.pth").symlink_to(face_files / "GFPGANv1.4.pth")
    else:
        state = request.getfixturevalue("codeformer_state")
        (models / "Codeformer").mkdir(parents=True)
        safetensors.torch.save_file(state, str(models / "Codeformer" / "codeformer.safetensors"))
    faces = FaceRestorers(models, allow_noncommercial=True)
    [restorer] = faces.list()
    model = faces.net(restorer)
    assert isinstance(model, FaceModel) and restorer.name == name
    assert type(model.model).__name__ == {"GFPGAN": "GFPGANv1Clean", "CodeFormer": "CodeFormer"}[name]
    image = astronaut()
    out = faces.restore(image, restorer, visibility=1.0, codeformer_weight=0.5)
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(image, np.int16)).max(axis=2)
    square = face_square()
    assert outside(diff, square).max() == 0
    left, top, side = square
    assert diff[top + side // 3:top + 2 * side // 3, left + side // 3:left + 2 * side // 3].mean() > 5


# -- extras ---------------------------------------------------------------------------------------

@pytest.fixture()
def gfpgan_registry(models_with, monkeypatch) -> UpscalerRegistry:
    """A registry with a GFPGAN file whose network is the cheap stand-in."""
    monkeypatch.setattr(FaceRestorers, "net", lambda self, r: invert)
    return UpscalerRegistry(models_with(**{"GFPGAN/GFPGANv1.4.safetensors": "GFPGANv1.4.safetensors"}))


def test_extras_restore_faces_after_the_upscale(gfpgan_registry: UpscalerRegistry) -> None:
    image = astronaut().resize((256, 256), Image.Resampling.LANCZOS)
    params = ExtrasParams(upscaler_1="Lanczos", upscaling_resize=2, gfpgan_visibility=0.4)
    [out], info = run_extras([image], params, gfpgan_registry)
    assert info == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos, GFPGAN visibility: 0.4"
    assert out.info["postprocessing"] == info
    [upscaled], _ = run_extras([image], ExtrasParams(upscaler_1="Lanczos", upscaling_resize=2), gfpgan_registry)
    expected = restore_faces(upscaled, invert, visibility=0.4)
    assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_extras_without_upscaler_still_restore_faces(gfpgan_registry: UpscalerRegistry) -> None:
    [out], info = run_extras([astronaut()], ExtrasParams(gfpgan_visibility=1, codeformer_weight=0.7),
                             gfpgan_registry)
    assert info == "GFPGAN visibility: 1"
    assert np.array_equal(np.asarray(out), np.asarray(restore_faces(astronaut(), invert)))


def test_extras_missing_restorer_is_a_clear_error_before_work(gfpgan_registry: UpscalerRegistry) -> None:
    params = ExtrasParams(upscaler_1="Lanczos", gfpgan_visibility=1, codeformer_visibility=0.5)
    with pytest.raises(FaceRestorationUnavailable, match=r"codeformer_visibility.*<models>/Codeformer"):
        run_extras([astronaut()], params, gfpgan_registry)


def test_extras_codeformer_stage_writes_visibility_and_weight(tmp_path: Path, codeformer_state,
                                                              face_files: Path, monkeypatch) -> None:
    models = tmp_path / "models"
    (models / "Codeformer").mkdir(parents=True)
    (models / "GFPGAN").mkdir()
    safetensors.torch.save_file(codeformer_state, str(models / "Codeformer" / "cf.safetensors"))
    shutil.copy(face_files / "GFPGANv1.4.safetensors", models / "GFPGAN")
    weights: list[tuple[str, float]] = []
    monkeypatch.setattr(FaceRestorers, "net", lambda self, r: lambda x, w: weights.append((r.name, w)) or x)
    reg = UpscalerRegistry(models, allow_noncommercial=True)
    params = ExtrasParams(gfpgan_visibility=0.5, codeformer_visibility=0.25, codeformer_weight=0.123456)
    _, info = run_extras([astronaut()], params, reg)
    assert info == "GFPGAN visibility: 0.5, CodeFormer visibility: 0.25, CodeFormer weight: 0.123"
    assert weights == [("GFPGAN", 0.123456), ("CodeFormer", 0.123456)]  # A1111's order: GFPGAN first



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("unload", [True, False])
def test_face_restoration_unload_sends_the_model_to_cpu_memory(models_with, unload: bool) -> None:
    """Option `face_restoration_unload` (A1111: the model goes to the CPU after each use): the model waits in
    CPU memory after a restore, and is on the GPU again for its next use; the result does not change."""
    faces = FaceRestorers(models_with(**{"GFPGAN/g.safetensors": "GFPGANv1.4.safetensors"}),
                          device=torch.device("cuda"))
    [restorer] = faces.list()
    model = faces.net(restorer)

    def where() -> set[str]:
        return {p.device.type for p in model.model.parameters()}

    first = faces.restore(astronaut(), restorer, unload=unload)
    assert where() == ({"cpu"} if unload else {"cuda"})
    assert faces.net(restorer) is model and where() == {"cuda"}  # back for its next use
    second = faces.restore(astronaut(), restorer, unload=unload)
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert where() == ({"cpu"} if unload else {"cuda"})
