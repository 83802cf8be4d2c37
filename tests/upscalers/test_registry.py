from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch

from upscalers import (
    AmbiguousUpscaler,
    UnknownUpscaler,
    UnsafeModelFile,
    UpscalerError,
    UpscalerRegistry,
    interpolate_args,
    is_latent,
    resolve_latent,
)
from upscalers.loading import read_state_dict

from .conftest import EXPECTED


def test_every_family_is_detected_with_its_real_scale(registry: UpscalerRegistry) -> None:
    entries = {e.name: e for e in registry.entries()}
    for stem, (arch, scale) in EXPECTED.items():
        for name, suffix in ((stem, ".pth"), (stem + "-sf", ".safetensors")):
            entry = entries[name]
            assert entry.kind == "model"
            assert entry.architecture == arch, name
            assert entry.scale == scale, name
            assert entry.path is not None and entry.path.suffix == suffix


def test_capabilities_are_stated(registry: UpscalerRegistry) -> None:
    swinir = registry.resolve("SwinIR 4x")
    assert swinir.tiling == "discouraged" and not swinir.supports_half and swinir.supports_bfloat16
    assert swinir.size_requirements.minimum == 16
    x2plus = registry.resolve("RealESRGAN-x2plus")
    assert x2plus.size_requirements.multiple_of == 4
    assert registry.resolve("ESRGAN-x4-old").supports_half


def test_a1111_order(registry: UpscalerRegistry) -> None:
    names = registry.names()
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert names[3:] == sorted(names[3:], key=str.casefold)
    assert len(names) == 3 + 2 * len(EXPECTED)  # readme.txt is not listed


def test_api_list_shape(registry: UpscalerRegistry) -> None:
    items = registry.as_api_list()
    assert [i["name"] for i in items] == registry.names()
    builtin = {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}
    assert items[0] == builtin
    swinir = next(i for i in items if i["name"] == "SwinIR 4x")
    assert swinir["model_name"] == "SwinIR" and swinir["scale"] == 4.0 and swinir["model_url"] is None
    assert swinir["model_path"].endswith("SwinIR 4x.pth")
    assert next(i for i in items if i["name"] == "ESRGAN-x2-old")["scale"] == 2.0


def test_loose_names(registry: UpscalerRegistry) -> None:
    assert registry.resolve("SwinIR_4x").name == "SwinIR 4x"
    assert registry.resolve("swinir 4X").name == "SwinIR 4x"
    assert registry.resolve("esrgan_x4_old").name == "ESRGAN-x4-old"
    assert registry.resolve("lanczos").kind == "lanczos"
    assert registry.resolve("None").kind == "none"


def test_unknown_name_lists_valid_names(registry: UpscalerRegistry) -> None:
    with pytest.raises(UnknownUpscaler) as info:
        registry.resolve("R-ESRGAN 4x+")
    message = str(info.value)
    assert "R-ESRGAN 4x+" in message
    for name in ("None", "Lanczos", "SwinIR 4x", "DAT-x2"):
        assert name in message
    assert info.value.valid == registry.names()


def test_ambiguous_loose_name(copy_models) -> None:
    compact = "RealESRGAN/Compact-x4.pth"
    root = copy_models(**{"ESRGAN/Foo Bar.pth": compact, "ESRGAN/foo_bar.pth": compact})
    reg = UpscalerRegistry(root)
    assert reg.resolve("Foo Bar").name == "Foo Bar"  # exact wins
    with pytest.raises(AmbiguousUpscaler) as info:
        reg.resolve("FOO-BAR")
    assert "Foo Bar" in str(info.value) and "foo_bar" in str(info.value)


def test_latent_modes_are_not_pixel_upscalers(registry: UpscalerRegistry) -> None:
    assert registry.latent_modes() == [
        "Latent",
        "Latent (antialiased)",
        "Latent (bicubic)",
        "Latent (bicubic antialiased)",
        "Latent (nearest)",
        "Latent (nearest-exact)",
    ]
    assert is_latent("Latent (bicubic antialiased)") and not is_latent("Lanczos")
    assert interpolate_args("Latent (bicubic antialiased)") == ("bicubic", True)
    assert interpolate_args("Latent (nearest-exact)") == ("nearest-exact", False)
    assert resolve_latent(None).name == "Latent"
    with pytest.raises(UnknownUpscaler, match="latent upscale mode"):
        registry.resolve("Latent (bicubic)")


def test_same_name_twice_keeps_one_and_logs(copy_models, caplog: pytest.LogCaptureFixture) -> None:
    root = copy_models(
        **{"ESRGAN/twin.pth": "ESRGAN/ESRGAN-x2-old.pth", "DAT/twin.safetensors": "DAT/DAT-x2-sf.safetensors"}
    )
    with caplog.at_level(logging.WARNING, logger="upscalers"):
        reg = UpscalerRegistry(root)
    assert reg.names().count("twin") == 1
    assert reg.resolve("twin").path.suffix == ".safetensors"
    assert sum("twin" in r.getMessage() for r in caplog.records) == 1


def test_bad_files_are_skipped_with_one_log_line_each(copy_models, caplog: pytest.LogCaptureFixture) -> None:
    root = copy_models(**{"ESRGAN/good.pth": "ESRGAN/ESRGAN-x2-old.pth"})
    (root / "ESRGAN" / "garbage.pth").write_bytes(b"\x00not a torch file" * 10)
    (root / "ESRGAN" / "alien.safetensors").write_bytes(b"")
    import safetensors.torch

    (root / "DAT").mkdir()
    unknown = root / "DAT" / "unknown-arch.safetensors"
    safetensors.torch.save_file({"weird.weight": torch.zeros(2, 2)}, str(unknown))
    with caplog.at_level(logging.WARNING, logger="upscalers"):
        reg = UpscalerRegistry(root)
        reg.refresh()  # unchanged files are not read (nor logged) again
    assert reg.names() == ["None", "Lanczos", "Nearest", "good"]
    messages = [r.getMessage() for r in caplog.records]
    for name in ("garbage.pth", "alien.safetensors", "unknown-arch.safetensors"):
        assert sum(name in m for m in messages) == 1, messages
    assert any("does not recognise" in m for m in messages)


def test_refresh_finds_new_and_forgets_removed_files(copy_models, models_dir: Path) -> None:
    root = copy_models(**{"ESRGAN/a.pth": "ESRGAN/ESRGAN-x2-old.pth"})
    reg = UpscalerRegistry(root)
    assert "a" in reg.names()
    (root / "SwinIR").mkdir()
    dat = (models_dir / "DAT" / "DAT-x2-sf.safetensors").read_bytes()
    (root / "SwinIR" / "b.safetensors").write_bytes(dat)
    (root / "ESRGAN" / "a.pth").unlink()
    reg.refresh()
    assert reg.names()[3:] == ["b"]
    assert reg.resolve("b").architecture == "DAT"


class _Payload:
    """Unpickling this creates a file: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_malicious_pth_is_refused_and_never_executed(tmp_path: Path, container: str, caplog) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "models" / "ESRGAN" / "evil.pth"
    evil.parent.mkdir(parents=True)
    payload = {"model.0.weight": _Payload(marker)}
    if container == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))

    with pytest.raises(UnsafeModelFile):
        read_state_dict(evil)
    with caplog.at_level(logging.WARNING, logger="upscalers"):
        reg = UpscalerRegistry(tmp_path / "models")
    assert "evil" not in reg.names()
    assert any("evil.pth" in r.getMessage() for r in caplog.records)
    assert not marker.exists()

    # The payload is live: an unrestricted load would have run it.
    try:
        if container == "torch.save":
            torch.load(evil, weights_only=False)
        else:
            pickle.loads(evil.read_bytes())
    except Exception:
        pass
    assert marker.exists()


def test_models_load_lazily_into_a_bounded_lru(copy_models) -> None:
    root = copy_models(
        **{
            "ESRGAN/a.pth": "ESRGAN/ESRGAN-x2-old.pth",
            "ESRGAN/b.pth": "ESRGAN/ESRGAN-x4-old.pth",
            "RealESRGAN/c.pth": "RealESRGAN/Compact-x4.pth",
        }
    )
    reg = UpscalerRegistry(root, max_cached_models=2)
    assert reg.cached_names() == []
    a = reg.load(reg.resolve("a"))
    assert reg.load(reg.resolve("a")) is a
    assert a.dtype == torch.float32 and a.device.type == "cpu"
    reg.load(reg.resolve("b"))
    reg.load(reg.resolve("a"))
    reg.load(reg.resolve("c"))
    assert reg.cached_names() == ["a", "c"]


def test_noncommercial_without_the_package_is_a_clear_error(tmp_path: Path) -> None:
    try:
        import spandrel_extra_arches  # noqa: F401
    except ImportError:
        with pytest.raises(UpscalerError, match="spandrel_extra_arches"):
            UpscalerRegistry(tmp_path, allow_noncommercial=True)
    else:
        assert UpscalerRegistry(tmp_path, allow_noncommercial=True).names() == ["None", "Lanczos", "Nearest"]


def test_missing_models_dir_lists_builtins(tmp_path: Path) -> None:
    assert UpscalerRegistry(tmp_path / "nope").names() == ["None", "Lanczos", "Nearest"]
