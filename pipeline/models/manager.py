"""Which checkpoint is loaded: resolves names to titles, loads on demand, keeps a small LRU of models.

Runs its loads on the worker thread (callers make sure of it); listing and name resolution read only
the registry and are safe from the event loop."""
from __future__ import annotations

import collections
import gc
import logging
import threading
from typing import Any

import torch

from pipeline.models import checkpoints
from pipeline.models.accel import Accel
from pipeline.models.accel.fp8 import store_fp8
from pipeline.models.accel.fp8 import wanted as fp8_wanted
from pipeline.models.builtin import build_builtin_model, builtin_checkpoint_info
from pipeline.models.checkpoints import CheckpointInfo, CheckpointRegistry
from pipeline.models.sd_model import SDModel
from pipeline.models.vae_files import VaeRegistry, apply_vae

log = logging.getLogger("hiresd.models")


class ModelManager:
    def __init__(self, registry: CheckpointRegistry, device: torch.device, dtype: torch.dtype,
                 vae_dtype: torch.dtype | None = None, builtin: bool = True, max_loaded: int = 1,
                 vaes: VaeRegistry | None = None, accel: Accel | None = None) -> None:
        self.registry = registry
        self.accel = accel  # layout (and later compile / memory placement) applied after each load
        self.vaes = vaes if vaes is not None else VaeRegistry(registry.models_dir, None)
        self.vae_choice = "Automatic"  # option `sd_vae` for the models `get()` hands out
        # option `sd_vae_overrides_per_model_preferences`: a chosen `sd_vae` beats the checkpoint's own
        # preference (its user metadata, a VAE named after it)
        self.vae_overrides = True
        # options `fp8_storage` and `cache_fp16_weight` for the models `get()` hands out
        self.fp8_storage = "Disable"
        self.cache_fp16_weight = False
        # options auto_vae_precision(_bfloat16): the dtype an all-NaN VAE decode is run again in (None: none)
        self.vae_nan_fallback: torch.dtype | None = torch.float32
        # option sd_checkpoints_keep_in_cpu: with several loaded (max_loaded, option sd_checkpoints_limit),
        # the ones not in use wait in CPU memory, not the device's
        self.keep_in_cpu = True
        self.device = device
        self.dtype = dtype
        self.vae_dtype = vae_dtype
        self.max_loaded = max(1, max_loaded)
        self._loaded: collections.OrderedDict[str, SDModel] = collections.OrderedDict()
        self._lock = threading.RLock()
        if builtin:
            registry.add(builtin_checkpoint_info())
        self.current_filename: str = ""

    @property
    def current_title(self) -> str:
        return self._by_filename(self.current_filename).title if self.current_filename else ""

    # -- names (cheap, any thread) -----------------------------------------------------------------
    def default(self) -> CheckpointInfo:
        """A1111 picks the first checkpoint: real files first, the builtin model when there are none. Never
        the model loaded last: what a job (a refiner, a hires checkpoint, an override) loaded does not
        become the server's selection."""
        items = self.registry.list()
        if not items:
            raise checkpoints.UnknownName("sd_model_checkpoint", "", [])
        return items[0]

    def find(self, name: str, field: str = "sd_model_checkpoint") -> CheckpointInfo:
        return self.registry.find(name, field) if name else self.default()

    def resolve_title(self, name: str, field: str) -> str:
        """Validate a checkpoint name ("" means the current one) and return its filename key."""
        return self.find(name, field).filename

    def info(self, key: str) -> dict[str, Any]:
        """Names and hashes of a checkpoint; `vae_name`/`vae_hash` name the external VAE in use on its
        loaded model (None when it runs its own VAE), for the infotext's `VAE` and `VAE hash`."""
        info = self._by_filename(key)
        loaded = self._loaded.get(info.filename)
        extra = loaded.extra if loaded is not None else {}
        return {"title": info.title, "short_title": info.title, "model_name": info.model_name,
                "hash": info.hash, "sha256": info.sha256, "filename": info.filename,
                "vae_name": extra.get("vae_name"), "vae_hash": extra.get("vae_hash"),
                "fp8": extra.get("fp8", (False, False))[0]}

    def api_list(self) -> list[dict[str, Any]]:
        return [i.as_api() for i in self.registry.list()]

    def refresh(self) -> None:
        self.registry.refresh()

    # -- VAEs (option sd_vae) ----------------------------------------------------------------------
    def check_vae(self, name: str | None, field: str = "sd_vae") -> str:
        """Validate an `sd_vae` value (UnknownName lists the choices); returns it normalised."""
        return self.vaes.check(name, field)

    def select_vae(self, name: str | None, apply_now: bool = True, overrides: bool | None = None) -> None:
        """Use `sd_vae` = `name` for the models `get()` returns from now on (worker thread); `overrides`
        (unless None) is option `sd_vae_overrides_per_model_preferences`. With `apply_now`, applies it to the
        current model at once, so that a file that does not fit fails here (ModelLoadError) and the previous
        choice stays."""
        choice = self.vaes.check(name)
        with self._lock:
            previous = self.vae_choice
            self.vae_choice = choice
            if overrides is not None:
                self.vae_overrides = bool(overrides)
            model = self._loaded.get(self.current_filename) if apply_now else None
            if model is not None:
                try:
                    self._apply_vae(model, self.current_filename)
                except Exception:
                    self.vae_choice = previous
                    self._apply_vae(model, self.current_filename)
                    raise

    def _apply_vae(self, model: SDModel, filename: str) -> None:
        vae = self.vaes.select(self.vae_choice, filename, self.vae_overrides)
        apply_vae(model, vae, self.vaes.shorthash(vae) if vae is not None else None)

    def set_weight_storage(self, fp8_storage: Any, cache_fp16_weight: Any) -> None:
        """Options `fp8_storage` and `cache_fp16_weight` for the models `get()` returns from now on (worker
        thread); a loaded model stored otherwise is converted (to float8) or read again (back from it)."""
        with self._lock:
            self.fp8_storage = str(fp8_storage or "Disable")
            self.cache_fp16_weight = bool(cache_fp16_weight)

    def set_vae_autofix(self, auto_vae_precision: Any, bfloat16: Any) -> None:
        """Options `auto_vae_precision` and `auto_vae_precision_bfloat16` (the latter wins) for the models
        `get()` returns from now on: the dtype a decode that came out all NaN is run again in."""
        with self._lock:
            self.vae_nan_fallback = (torch.bfloat16 if bfloat16 else torch.float32 if auto_vae_precision
                                     else None)

    def set_checkpoints_limit(self, limit: Any, keep_in_cpu: Any = True) -> None:
        """Options `sd_checkpoints_limit` (how many checkpoints stay loaded; the least recently used goes
        at the next load past it) and `sd_checkpoints_keep_in_cpu` (those not in use wait in CPU memory)."""
        with self._lock:
            self.max_loaded = max(1, int(limit or 1))
            self.keep_in_cpu = bool(keep_in_cpu)

    def _park_others(self, key: str) -> None:
        """`sd_checkpoints_keep_in_cpu`: every loaded model but `key`'s leaves the accelerator (under a
        memory mode its placement sends it to its offload device)."""
        for other, model in self._loaded.items():
            if other == key or model.extra.get("parked"):
                continue
            placement = model.extra.get("placement")
            if placement is not None:
                placement.release()
            elif model.device.type != "cpu":
                for part in (model.unet, model.vae, *model.text_encoders):
                    part.to("cpu")
                model.extra["parked"] = True
                log.info("%s waits in CPU memory", model.title)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _unpark(self, model: SDModel) -> None:
        if model.extra.pop("parked", False):
            for part in (model.unet, model.vae, *model.text_encoders):
                part.to(model.device)

    def _fp8_for(self, family: str | None) -> tuple[bool, bool]:
        on = fp8_wanted(self.fp8_storage, family or "")
        return on, on and self.cache_fp16_weight

    def _store_weights(self, model: SDModel) -> None:
        """Float8 weights (option `fp8_storage`) on a model stored in its own dtype so far."""
        want = self._fp8_for(model.family)
        if want[0]:
            patcher = model.extra.get("networks.patcher")
            if patcher is not None:  # float8 (and its float16 copies) from the pristine weights
                patcher.restore()
            store_fp8(model, want[1])
        model.extra["fp8"] = want

    def _by_filename(self, key: str) -> CheckpointInfo:
        for info in self.registry.list():
            if info.filename == key:
                return info
        return self.find(key)

    def release_device(self) -> None:
        """Under a memory mode, every loaded model's running part back to the offload device (the pixel
        upscaler runs next and should find the GPU free); nothing otherwise."""
        with self._lock:
            for model in self._loaded.values():
                placement = model.extra.get("placement")
                if placement is not None:
                    placement.release()

    def unload(self) -> list[str]:
        """Drop every loaded model (A1111's unload-checkpoint, made real: its RAM and device memory are
        freed, not only moved off the GPU); the next job or `get` loads from the file again. Returns the
        titles dropped (worker thread)."""
        with self._lock:
            dropped = [m.title for m in self._loaded.values()]
            self._loaded.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if dropped:
            log.info("unloaded %s", ", ".join(dropped))
        return dropped

    def is_loaded(self, key: str) -> bool:
        """Whether the checkpoint with filename key `key` is in memory (then its file is not read again)."""
        with self._lock:
            return key in self._loaded

    # -- loading (worker thread) -------------------------------------------------------------------
    def get(self, key: str) -> SDModel:
        """The loaded model for a filename key (or any name); loads it, evicting the least recently used."""
        info = self._by_filename(key) if key else self.default()
        with self._lock:
            model = self._loaded.get(info.filename)
            if model is not None and model.extra.get("fp8", (False, False)) != self._fp8_for(model.family):
                if model.extra.get("fp8", (False, False))[0]:  # float8 weights back: read the file again
                    log.info("fp8_storage changed: reloading %s", info.filename)
                    del self._loaded[info.filename]
                    model = None
                else:
                    self._store_weights(model)
            if self.keep_in_cpu and self.max_loaded > 1:
                self._park_others(info.filename)  # before a load, so that it finds the device free
            if model is None:
                while len(self._loaded) >= self.max_loaded:
                    _, old = self._loaded.popitem(last=False)
                    del old
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                log.info("loading checkpoint %s", info.filename)
                load_device = self.accel.load_device(self.device) if self.accel is not None else self.device
                if info.kind == "builtin":
                    model = build_builtin_model(load_device, self.dtype)
                else:
                    model = checkpoints.load_checkpoint(info, load_device, self.dtype)
                    info.ensure_hash()
                if self.vae_dtype is not None and self.vae_dtype != model.dtype:
                    model.vae.to(self.vae_dtype)
                    model.vae_dtype = self.vae_dtype
                if self.accel is not None:
                    self.accel.prepare(model, self.device)
                self._store_weights(model)
                self._loaded[info.filename] = model
            else:
                self._loaded.move_to_end(info.filename)
                self._unpark(model)
            self._apply_vae(model, info.filename)
            model.extra["vae_nan_fallback"] = self.vae_nan_fallback
            self.current_filename = info.filename
            return model
