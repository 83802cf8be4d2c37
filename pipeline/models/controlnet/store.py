"""The ControlNet files a server offers (`models/ControlNet/` and `--controlnet-dir`), their A1111 titles,
name matching as the extension does it, and loading into a `ControlNetModel` with a small LRU cache.

A title is `<name> [<8-hex hash>]`, the hash being A1111's old one (sha256 of the 64 KiB at offset 1 MiB)
as the extension writes it. A request may name the title, the bare name, or a part of it (the shortest
name containing it wins, as the extension's closest-name match). Files: `.safetensors`, `.pth`/`.pt`/
`.ckpt` (through `torch.load(weights_only=True)`), and diffusers folders (`config.json` beside
`diffusion_pytorch_model.safetensors`; the config is not needed: the architecture is read from the
tensors)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.models.checkpoints import header_shapes, read_state_dict
from pipeline.models.controlnet import adapter, architecture, control_lora
from pipeline.runtime.errors import ModelLoadError, UnknownName

log = logging.getLogger("hiresd.controlnet")

SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
DEFAULT_CACHE_SIZE = 2  # the extension's control_net_model_cache_size default


def legacy_hash(path: Path) -> str:
    """A1111's old model hash: sha256 of the 64 KiB at offset 1 MiB, 8 hex digits."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


@dataclass
class ControlNetFile:
    name: str  # file stem, or the folder's name
    path: Path  # the weights file
    _arch: architecture.ControlNetArch | None = field(default=None, repr=False)
    _title: str | None = field(default=None, repr=False)

    @property
    def title(self) -> str:
        if self._title is None:
            self._title = f"{self.name} [{legacy_hash(self.path)}]"
        return self._title

    def arch(self) -> architecture.ControlNetArch:
        """The architecture, from the header (safetensors) or the tensors; raises ModelLoadError."""
        if self._arch is None:
            self._arch = architecture.read(header_shapes(self.path), str(self.path))
        return self._arch


def _discover(folder: Path) -> list[ControlNetFile]:
    found: list[ControlNetFile] = []
    if not folder.is_dir():
        return found
    for entry in sorted(folder.rglob("*")):
        if (
            entry.is_file()
            and entry.suffix.lower() in SUFFIXES
            and not any((entry.parent / w).exists() for w in ("config.json",))
        ):
            found.append(ControlNetFile(entry.stem, entry))
        elif entry.is_dir() and (entry / "config.json").is_file():
            weights = next((entry / w for w in FOLDER_WEIGHTS if (entry / w).is_file()), None)
            if weights is not None:
                found.append(ControlNetFile(entry.name, weights))
    return found


class ControlNetStore:
    """The ControlNet files of `folders` and the loaded ones (LRU, `cache_size` entries)."""

    def __init__(self, folders: list[Path], cache_size: int = DEFAULT_CACHE_SIZE):
        self.folders = [Path(f) for f in folders]
        self.cache_size = max(1, int(cache_size))
        self._files: list[ControlNetFile] = []
        self._loaded: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        files: list[ControlNetFile] = []
        seen: set[Path] = set()
        for folder in self.folders:
            for f in _discover(folder):
                if f.path.resolve() not in seen:
                    seen.add(f.path.resolve())
                    files.append(f)
        old = {f.path: f for f in self._files}
        self._files = [old.get(f.path, f) for f in files]

    def files(self) -> list[ControlNetFile]:
        return list(self._files)

    def titles(self) -> list[str]:
        return [f.title for f in self._files]

    def find(self, name: str, field: str) -> ControlNetFile:
        """The file a unit's `model` names: title, bare name, or the shortest name containing it."""
        wanted = str(name).strip()
        low = wanted.lower()
        base = low.rsplit(" [", 1)[0] if low.endswith("]") else low
        for f in self._files:
            if f.title.lower() == low or f.name.lower() == base:
                return f
        matches = sorted(
            (f for f in self._files if base and base in f.name.lower()), key=lambda f: len(f.name)
        )
        if matches:
            return matches[0]
        raise UnknownName(field, name, self.titles())

    def load(
        self,
        f: ControlNetFile,
        base_unet_config: dict[str, Any],
        device: torch.device,
        dtype: torch.dtype,
        base_unet: Any = None,
        base_version: Any = None,
    ) -> Any:
        """The `ControlNetModel` of `f` for a checkpoint with this UNet config, on device in dtype.
        `base_unet`: the checkpoint's UNet module, which a ControlLoRA file takes its tensors from, as they
        are now (`base_version` tells the weights' states apart: the prompt's LoRA set patched in; the
        extension's ControlLoRA reads the UNet's live weights, so a prompt LoRA reaches it too)."""
        st = os.stat(f.path)
        key = (
            str(f.path),
            st.st_mtime,
            st.st_size,
            str(device),
            dtype,
            tuple(sorted((k, str(v)) for k, v in base_unet_config.items() if not k.startswith("_"))),
            (id(base_unet), base_version) if f.arch().layout == "control_lora" else None,
        )
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        arch = f.arch()
        if arch.layout == "control_lora":
            if base_unet is None:
                raise ModelLoadError(str(f.path), "a ControlLoRA file needs the checkpoint's UNet")
            width = int(base_unet_config.get("cross_attention_dim") or 0)
            if arch.context_dim is not None and width != arch.context_dim:
                raise ModelLoadError(
                    str(f.path), f"the ControlLoRA reads a {arch.context_dim}-wide prompt, the checkpoint {width}"
                )
            tensors = architecture.to_diffusers(read_state_dict(f.path), str(f.path))
            net = control_lora.build(tensors, base_unet, arch.config["hint"], str(f.path))
        elif arch.is_adapter:
            adapter.check_base(arch.config["adapter"], base_unet_config, str(f.path))
            net = adapter.build(arch.config["adapter"], read_state_dict(f.path), str(f.path))
        else:
            net = _controlnet(arch, base_unet_config, f)
        # nn.Module.to: diffusers' own `to` warns about fp32-kept modules this architecture does not have
        net = torch.nn.Module.to(net, device=device, dtype=dtype).eval().requires_grad_(False)
        log.info("ControlNet %s loaded (%s layout, %s)", f.title, arch.layout, arch.family)
        with self._lock:
            self._loaded[key] = net
            while len(self._loaded) > self.cache_size:
                self._loaded.popitem(last=False)
        return net

    def unload_all(self) -> None:
        with self._lock:
            self._loaded.clear()


def _controlnet(arch: architecture.ControlNetArch, base_unet_config: dict[str, Any], f: ControlNetFile) -> Any:
    from diffusers import ControlNetModel

    cfg = architecture.full_config(arch, base_unet_config, str(f.path))
    tensors = architecture.to_diffusers(read_state_dict(f.path), str(f.path))
    with torch.device("meta"):
        net = ControlNetModel(**cfg)
    try:
        net.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            str(f.path),
            f"the tensors do not fit the architecture read from them: {str(exc).splitlines()[0]}",
        ) from exc
    return net
