"""External VAE files: discovery under `<models>/VAE`, loading, and swapping into a loaded model.

A1111's rules, in short: `/sdapi/v1/sd-vae` lists every `.safetensors` / `.pt` / `.ckpt` under
`<models>/VAE` (recursively) and every `*.vae.*` file next to the checkpoints, named by the file's base
name ("vae-ft-mse.safetensors"); option `sd_vae` holds one of those names, "Automatic" or "None".

Which VAE a checkpoint runs with is A1111 1.10's `resolve_vae`: the `--vae-path` file; else, when option
`sd_vae_overrides_per_model_preferences` is on and `sd_vae` is not "Automatic", `sd_vae` itself ("None": the
checkpoint's own); else the checkpoint's user metadata (`<checkpoint stem>.json`, key "vae": a VAE name, or
"None" for its own VAE); else a VAE "near the checkpoint" (the first listed VAE whose file name starts with
the checkpoint's stem, e.g. `<stem>.vae.pt`; also such a `<stem>.vae.*` file beside a checkpoint outside
the folders); else `sd_vae` ("Automatic" and "None": the checkpoint's own).

Files in the original LDM layout (`encoder.down.0.block.0...`, optionally under `first_stage_model.`)
are converted with diffusers' own converter; files already in diffusers' layout are used as they are.
`.pt` / `.ckpt` files are unpickled with `weights_only=True` only. Swapping copies the weights into the
model's existing `AutoencoderKL` (same device and dtype); the checkpoint's own weights are kept on the
CPU the first time they are replaced, so "Automatic"/"None" restore them without reading the checkpoint
again.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.models.checkpoints.hashing import HashCache
from pipeline.runtime.errors import ModelLoadError, UnknownName
from upscalers.folders import model_files

log = logging.getLogger("hiresd.vaes")

VAE_DIR = "VAE"
CHECKPOINT_DIR = "Stable-diffusion"
SUFFIXES = (".safetensors", ".pt", ".ckpt")
AUTOMATIC = "Automatic"
NONE = "None"
_DROP_PREFIXES = ("loss.", "model_ema.")


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


@dataclass(frozen=True)
class VaeFile:
    """One VAE file. `name` is the file's base name (what `sd_vae` holds); `path` is absolute."""

    name: str
    path: Path

    def as_api(self) -> dict[str, str]:
        """The `/sdapi/v1/sd-vae` entry: {model_name, filename}."""
        return {"model_name": self.name, "filename": str(self.path)}


def discover(models_dir: Path, vae_dir: Path | None = None, ckpt_dir: Path | None = None,
             extra: list[Path] | None = None) -> list[VaeFile]:
    """VAE files under `<models>/VAE` (or `vae_dir`), `*.vae.*` files under `<models>/Stable-diffusion` (or
    `ckpt_dir`) and the `extra` files, in natural order of their names. Only `stat`s; never opens a file.
    Files and folders whose names start with '.' are never listed, as A1111's glob of `**/*.safetensors`
    ... lists none (its VAE listing does not read option `list_hidden_files`)."""
    found: dict[str, VaeFile] = {}

    def add(path: Path) -> None:
        if path.name.startswith(".") or path.suffix.lower() not in SUFFIXES or not path.is_file():
            return
        found.setdefault(path.name, VaeFile(path.name, path.absolute()))  # first one wins on a name clash

    for path in extra or []:
        add(path)
    vae_dir = vae_dir or models_dir / VAE_DIR
    if vae_dir.is_dir():
        for path in sorted(model_files(vae_dir, SUFFIXES, list_hidden=False)):
            add(path)
    ckpt_dir = ckpt_dir or models_dir / CHECKPOINT_DIR
    if ckpt_dir.is_dir():
        for path in sorted(model_files(ckpt_dir, SUFFIXES, list_hidden=False)):
            if ".vae." in path.name:
                add(path)
    return sorted(found.values(), key=lambda v: _natural_key(v.name))


class VaeRegistry:
    """The VAE files of one models folder, with A1111's name lookup and cached file hashes."""

    def __init__(self, models_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 vae_dir: Path | None = None, ckpt_dir: Path | None = None,
                 extra: list[Path] | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.vae_dir, self.ckpt_dir = vae_dir, ckpt_dir  # folders moved by --vae-dir / --ckpt-dir
        self.extra = list(extra or [])  # files outside the folders (--vae-path)
        self.extra_files = {VaeFile(p.name, p.absolute()) for p in self.extra}
        # --vae-path: this file for every checkpoint, whatever the options and the per-model preferences
        self.forced: VaeFile | None = None
        self.hashes = HashCache(Path(data_dir) / "vae-hashes.json" if data_dir is not None else None)
        self._lock = threading.Lock()
        self._items: list[VaeFile] = []
        self.refresh()

    def refresh(self) -> None:
        """Rescan the folders (`/sdapi/v1/refresh-vae`)."""
        items = discover(self.models_dir, self.vae_dir, self.ckpt_dir, self.extra)
        with self._lock:
            self._items = items

    def list(self) -> list[VaeFile]:
        with self._lock:
            return list(self._items)

    def choices(self) -> list[str]:
        """Every value `sd_vae` accepts."""
        return [AUTOMATIC, NONE] + [v.name for v in self.list()]

    def find(self, name: str, field: str = "sd_vae") -> VaeFile:
        """A VAE by file name, or by name without its extension; else UnknownName listing the choices."""
        items = self.list()
        for v in items:
            if v.name == name:
                return v
        stem = [v for v in items if Path(v.name).stem == name or v.name.split(".", 1)[0] == name]
        if len(stem) == 1:
            return stem[0]
        raise UnknownName(field, name, self.choices())

    def check(self, name: str | None, field: str = "sd_vae") -> str:
        """Validate an `sd_vae` value; returns it normalised ("Automatic", "None" or a file name)."""
        if name in (None, "", AUTOMATIC, "auto"):
            return AUTOMATIC
        if name in (NONE, "none"):
            return NONE
        return self.find(name, field).name

    def select(self, name: str | None, checkpoint_file: str | None, overrides: bool = True) -> VaeFile | None:
        """The file a checkpoint runs with under `sd_vae` = `name` (None: the checkpoint's own VAE), in the
        order of A1111's `resolve_vae`. `overrides`: option `sd_vae_overrides_per_model_preferences`."""
        if self.forced is not None:  # --vae-path
            return self.forced
        choice = self.check(name)
        if overrides and choice != AUTOMATIC:
            return self._from_setting(choice)
        found, vae = self.from_user_metadata(checkpoint_file)
        if found:
            return vae
        near = self.near(checkpoint_file)
        if near is not None:
            return near
        return self._from_setting(choice)

    def _from_setting(self, choice: str) -> VaeFile | None:
        return None if choice in (AUTOMATIC, NONE) else self.find(choice)

    def from_user_metadata(self, checkpoint_file: str | None) -> tuple[bool, VaeFile | None]:
        """The checkpoint's user metadata (A1111's `<checkpoint stem>.json`, key "vae"): (True, file) for a
        listed VAE name, (True, None) for "None" (its own VAE); (False, None) when it names none, names
        "Automatic" or a VAE that is not there (A1111 then goes on down its list, silently)."""
        if not checkpoint_file or checkpoint_file.startswith("<"):
            return False, None
        path = Path(os.path.splitext(checkpoint_file)[0] + ".json")
        if not path.is_file():
            return False, None
        try:
            wanted = json.loads(path.read_text("utf-8")).get("vae")
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("user metadata %s unreadable (%s); ignored", path, exc)
            return False, None
        if not isinstance(wanted, str) or wanted in ("", AUTOMATIC):
            return False, None
        if wanted == NONE:
            return True, None
        for v in self.list():
            if v.name == wanted:
                return True, v
        return False, None

    def near(self, checkpoint_file: str | None) -> VaeFile | None:
        """A1111's VAE "near the checkpoint": the first listed VAE whose file name starts with the
        checkpoint's name without its extension; else a `<stem>.vae.{safetensors,pt,ckpt}` file beside a
        checkpoint that lies outside the scanned folders."""
        if not checkpoint_file or checkpoint_file.startswith("<"):
            return None
        stem = os.path.basename(checkpoint_file).rsplit(".", 1)[0]
        for v in self.list():
            if v.name.startswith(stem) and v not in self.extra_files:
                return v
        return self.beside(checkpoint_file)

    def beside(self, checkpoint_file: str | None) -> VaeFile | None:
        """`<checkpoint stem>.vae.{safetensors,pt,ckpt}` next to the checkpoint."""
        if not checkpoint_file or checkpoint_file.startswith("<"):
            return None
        ckpt = Path(checkpoint_file)
        stem = ckpt.name if ckpt.is_dir() else ckpt.with_suffix("").name
        for suffix in SUFFIXES:
            path = ckpt.parent / f"{stem}.vae{suffix}"
            if path.is_file():
                return VaeFile(path.name, path.absolute())
        return None

    def shorthash(self, vae: VaeFile) -> str:
        """First 10 hex digits of the file's sha256 (cached by path, mtime and size)."""
        return str(self.hashes.compute(str(vae.path))["sha256"])[:10]


# --------------------------------------------------------------------------------------------------
# loading and applying
# --------------------------------------------------------------------------------------------------
def read_vae_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a VAE file (CPU), pickles only through `weights_only=True`."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(str(path), "refused: the pickle holds more than tensors (it could run code); "
                                        "convert it to .safetensors") from exc
    except Exception as exc:
        raise ModelLoadError(str(path), f"unreadable VAE file ({type(exc).__name__}: {exc})") from exc
    while isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise ModelLoadError(str(path), f"not a state dict (found {type(raw).__name__})")
    return {k: v for k, v in raw.items() if isinstance(v, torch.Tensor) and not k.startswith(_DROP_PREFIXES)}


def to_diffusers_layout(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """A VAE state dict in diffusers' `AutoencoderKL` key layout, whatever layout the file used."""
    if any(".down_blocks." in k or ".mid_block." in k or k.startswith(("down_blocks.", "mid_block."))
           for k in state):
        for prefix in ("first_stage_model.", "vae."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
        return state
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(state, dict(config))


def load_vae_weights(path: Path, vae_module: Any) -> dict[str, torch.Tensor]:
    """The file's weights, converted and checked against `vae_module`'s keys and shapes."""
    state = to_diffusers_layout(read_vae_state(path), vae_module.config)
    expected = vae_module.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise ModelLoadError(str(path), f"not a VAE for this model: {len(missing)} weights missing "
                                        f"(e.g. {', '.join(missing[:3])})")
    wrong = [k for k, t in expected.items() if tuple(state[k].shape) != tuple(t.shape)]
    if wrong:
        k = wrong[0]
        raise ModelLoadError(str(path), f"not a VAE for this model family: {k} has shape "
                                        f"{tuple(state[k].shape)}, the model expects {tuple(expected[k].shape)}")
    return {k: state[k] for k in expected}


def apply_vae(model: Any, vae: VaeFile | None, shorthash: str | None = None) -> bool:
    """Put `vae`'s weights (None: the checkpoint's own) into `model.vae`; True when anything changed.

    Records `vae_file`, `vae_name` and `vae_hash` in `model.extra` (None for the checkpoint's own VAE)."""
    wanted = str(vae.path) if vae is not None else None
    if model.extra.get("vae_file") == wanted:
        return False
    module = model.vae
    if vae is None:
        own = model.extra.get("own_vae_state")
        if own is None:  # never replaced: already the checkpoint's own
            model.extra.update(vae_file=None, vae_name=None, vae_hash=None)
            return False
        module.load_state_dict(own, strict=True)
    else:
        weights = load_vae_weights(vae.path, module)
        if "own_vae_state" not in model.extra:
            model.extra["own_vae_state"] = {k: t.detach().to("cpu", copy=True)
                                           for k, t in module.state_dict().items()}
        module.load_state_dict(weights, strict=True)
        log.info("VAE %s applied to %s", vae.name, getattr(model, "title", "the model"))
    model.extra.update(vae_file=wanted, vae_name=vae.name if vae else None,
                       vae_hash=shorthash if vae else None)
    return True
