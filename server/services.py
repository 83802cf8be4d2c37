"""The app's one `Services` object: configuration, options, the worker and the registries it drives."""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.diffusion.preview import Previews
from pipeline.diffusion.tiled.request import register as register_tiled_diffusion
from pipeline.jobs.builtin_scripts import register as register_builtin_scripts
from pipeline.jobs.common import JobContext, JobResult
from pipeline.jobs.controlnet import register as register_controlnet
from pipeline.jobs.dispatch import run_job
from pipeline.jobs.extensions import Extensions
from pipeline.jobs.forge_scripts import register as register_forge_scripts
from pipeline.jobs.pixel_upscale import HiresUpscaler
from pipeline.jobs.processing import Processing
from pipeline.jobs.speed import register as register_speed_scripts
from pipeline.jobs.styles import StyleStore
from pipeline.models.accel import Accel, choose, resolve_device
from pipeline.models.checkpoints import CheckpointInfo, CheckpointRegistry
from pipeline.models.controlnet import ControlNetStore
from pipeline.models.manager import ModelManager
from pipeline.models.networks import Networks
from pipeline.models.taesd import TinyVAEs
from pipeline.models.vae_files import AUTOMATIC, NONE, VaeRegistry
from pipeline.runtime.errors import InvalidRequest, UnknownName
from pipeline.runtime.worker import Worker
from server.config import ServerConfig
from server.console import ConsoleProgress
from server.imagecodec import encode_image
from server.options import OptionsStore
from upscalers.registry import UpscalerRegistry

log = logging.getLogger("hiresd.services")


def pick_accel(config: ServerConfig) -> Accel:
    """The speed policy from the flags: device and dtypes (pipeline/accel/precision.py: CUDA fp16 with a
    bf16 VAE where supported; the CPU in bf16 where it computes bf16 natively, else fp32)."""
    device = resolve_device(config.device)
    memory = config.memory_mode
    if memory != "none" and device.type == "cpu":
        log.info("--%s: running on the CPU, which has no separate device memory; running normally", memory)
        memory = "none"
    if config.cuda_graphs and not (config.compile and device.type == "cuda"):
        log.info("--cuda-graphs applies to --compile on CUDA only; not used")
    return Accel(choose(device, config.precision, config.vae_precision), compile=config.compile,
                 cache_dir=config.data_dir / "compile-cache", warmup=list(config.compile_warmup),
                 memory=memory, fused_qkv=config.fused_qkv, sdpa_backend=config.sdpa_backend,
                 sdp_no_mem=config.sdp_no_mem, cuda_graphs=config.cuda_graphs)


@dataclass
class Services:
    config: ServerConfig
    options: OptionsStore
    worker: Worker
    models: ModelManager
    upscalers: UpscalerRegistry
    extensions: Extensions
    styles: StyleStore
    console: ConsoleProgress | None = None
    networks: Networks | None = None  # LoRA files and embeddings (<models>/Lora, LyCORIS, embeddings)
    previews: Previews | None = None  # live-preview decoders (<models>/VAE-approx, A1111's Approx NN files)
    tiny_vae: TinyVAEs | None = None  # TAESD for the TAESD VAE methods (<models>/VAE-taesd, A1111's files)
    controlnets: ControlNetStore | None = None  # ControlNet files (<models>/ControlNet, --controlnet-dir)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _stopped: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def create(cls, config: ServerConfig, console: bool = True, worker: Worker | None = None) -> Services:
        """Everything the app needs. `worker`: the queue to use instead of the device worker (the scaled-out
        ingress's, server/cluster/)."""
        accel = pick_accel(config)
        device, dtype, vae_dtype = accel.precision.device, accel.precision.dtype, accel.precision.vae_dtype
        log.info("%s", accel.precision.describe())
        registry = CheckpointRegistry(config.models_dir, config.data_dir, folder=config.ckpt_folder())
        vae_path = config.vae_path
        if vae_path is not None and not vae_path.is_file():
            log.warning("--vae-path %s: no such file; the sd_vae option chooses the VAE", vae_path)
            vae_path = None
        vaes = VaeRegistry(config.models_dir, config.data_dir, vae_dir=config.vae_folder(),
                           ckpt_dir=config.ckpt_folder(), extra=[vae_path] if vae_path else None)
        models = ModelManager(registry, device, dtype, vae_dtype, builtin=config.builtin_model, vaes=vaes,
                              accel=accel)
        if vae_path is not None:
            vaes.forced = vaes.find(vae_path.name)
        registry.start_background_hashing()
        # --medvram/--lowvram: the pixel upscaler too sits on the GPU only while it runs, after the
        # checkpoint's running part has left it
        offload = accel.load_device(device) if accel.memory in ("medvram", "lowvram") else None
        upscalers = UpscalerRegistry(config.models_dir, allow_noncommercial=config.allow_noncommercial_upscalers,
                                     device=device, folders=config.model_folders, offload=offload)
        upscalers.make_room = models.release_device
        fixed_vae = vae_path.name if vae_path else None

        def check_vae(value: Any, field: str = "sd_vae") -> str:
            name = models.check_vae(value, field)
            if fixed_vae is not None and name != fixed_vae:
                raise InvalidRequest(field, f"the VAE is fixed to {fixed_vae!r} by --vae-path; got {value!r}")
            return name

        options = OptionsStore(config.data_dir / "options.json", checkers={"sd_vae": check_vae})
        if fixed_vae is not None:
            options.fall_back("sd_vae", fixed_vae)
        worker = worker if worker is not None else Worker(config.queue_size)
        extensions = Extensions.load(config.extensions_dir)
        register_tiled_diffusion(extensions)  # the built-in always-on "Tiled Diffusion" entry
        register_builtin_scripts(extensions)  # A1111's own: Refiner, Seed, Sampler, Comments, ...
        register_controlnet(extensions)  # the built-in always-on "ControlNet" entry
        register_speed_scripts(extensions)  # "Hypertile", "Kohya HRFix Integrated"
        register_forge_scripts(extensions)  # Forge's integrated scripts and common UI-exported titles
        svc = cls(config, options, worker, models, upscalers, extensions, StyleStore(config.styles_path()))
        svc.networks = Networks.for_models_dir(config.models_dir, config.lora_dir, config.lyco_dir,
                                               config.embeddings_dir)
        svc.tiny_vae = TinyVAEs(config.model_folder("VAE-taesd"))
        svc.previews = Previews(config.model_folder("VAE-approx"), svc.tiny_vae)
        svc.controlnets = ControlNetStore(config.controlnet_folders())
        if config.ckpt is not None:
            svc.select_ckpt_flag(config.ckpt)
        svc.settle_saved_names()
        models.vae_choice = models.check_vae(options.get("sd_vae"))
        models.vae_overrides = bool(options.get("sd_vae_overrides_per_model_preferences"))
        models.set_weight_storage(options.get("fp8_storage"), options.get("cache_fp16_weight"))
        models.set_vae_autofix(options.get("auto_vae_precision"), options.get("auto_vae_precision_bfloat16"))
        models.set_checkpoints_limit(options.get("sd_checkpoints_limit"),
                                     options.get("sd_checkpoints_keep_in_cpu"))
        if console and config.console_progress:
            svc.console = ConsoleProgress(worker.state).start()
        return svc

    # -- shutdown -------------------------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """SIGTERM: stop taking jobs and answer every waiting one with 503 at once; the running job may
        finish for `shutdown_grace_s`, then it is interrupted so that it still returns its partial result."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("shutting down: no new jobs; %s running, %d waiting jobs answered with 503",
                 "one" if self.worker.busy else "none", self.worker.queued)
        self.worker.stop(timeout=0)

        def interrupt_late() -> None:
            if not self._stopped.wait(self.config.shutdown_grace_s):
                log.warning("the running job did not finish within %.0fs: interrupting it",
                            self.config.shutdown_grace_s)
                self.worker.interrupt_all()

        threading.Thread(target=interrupt_late, name="hiresd-shutdown", daemon=True).start()

    def shutdown(self) -> None:
        self.begin_shutdown()
        self.worker.stop(self.config.shutdown_grace_s + 5)
        self._stopped.set()
        self.models.registry.stop_background_hashing()
        if self.console is not None:
            self.console.stop()

    # -- options --------------------------------------------------------------------------------------
    def selected_checkpoint(self) -> Any:
        """The checkpoint option `sd_model_checkpoint` selects (the first one when unset or gone)."""
        name = str(self.options.get("sd_model_checkpoint") or "")
        if name:
            try:
                return self.models.find(name)
            except Exception:  # noqa: BLE001 - removed since: A1111 falls back to the first one
                pass
        return self.models.default()

    def select_ckpt_flag(self, path: Path) -> None:
        """--ckpt: the file joins the list (when it is outside the checkpoint folder) and is the selected
        checkpoint, as in A1111; a file that does not exist is one log line, and the saved choice stays."""
        if not path.exists():
            log.warning("--ckpt %s: no such file or folder; using the saved or first checkpoint", path)
            return
        try:
            info = self.models.find(str(path.absolute()))
        except UnknownName:
            info = CheckpointInfo.from_path(path, None, self.models.registry.cache)
            self.models.registry.add(info)
        self.options.fall_back("sd_model_checkpoint", info.title)

    def settle_saved_names(self) -> None:
        """A saved `sd_model_checkpoint` or `sd_vae` naming a file since removed or renamed never locks the
        server out: as A1111 does, the first checkpoint / "Automatic" is used instead, with one log line.
        The fallback is kept in memory; options.json changes only with the next real options update.
        Runs at start-up and after a rescan of the checkpoint or VAE folders."""
        name = str(self.options.get("sd_model_checkpoint") or "")
        if name:
            try:
                self.models.find(name)
            except UnknownName:
                try:
                    fallback = self.models.default().title
                except UnknownName:
                    fallback = ""
                log.warning("saved checkpoint %r not found; using %s", name, repr(fallback) if fallback else
                            "none (no checkpoint available)")
                self.options.fall_back("sd_model_checkpoint", fallback)
        vae = self.options.get("sd_vae")
        try:
            self.models.check_vae(vae)
        except UnknownName:
            log.warning("saved VAE %r not found; using Automatic", vae)
            self.options.fall_back("sd_vae", "Automatic")

    def refresh_checkpoints(self) -> None:
        """Rescan the checkpoint folder (worker thread), then settle saved names that went away."""
        self.models.refresh()
        self.settle_saved_names()

    def refresh_vaes(self) -> None:
        """Rescan the VAE folders, then settle a saved `sd_vae` that went away."""
        self.models.vaes.refresh()
        self.settle_saved_names()

    def reload_checkpoint(self) -> str:
        """A1111's reload-checkpoint (worker thread): the selected checkpoint (option `sd_model_checkpoint`)
        loaded with the `sd_vae` option's VAE, from its file when it was unloaded. Returns its title."""
        info = self.selected_checkpoint()
        self.models.select_vae(self.options.get("sd_vae"), apply_now=False,
                               overrides=self.options.get("sd_vae_overrides_per_model_preferences"))
        self.models.set_weight_storage(self.options.get("fp8_storage"), self.options.get("cache_fp16_weight"))
        self.models.set_checkpoints_limit(self.options.get("sd_checkpoints_limit"),
                                          self.options.get("sd_checkpoints_keep_in_cpu"))
        self.models.get(info.filename)
        return info.title

    def current_options(self) -> dict[str, Any]:
        values = self.options.all()
        info = self.selected_checkpoint()
        values["sd_model_checkpoint"] = info.title
        values["sd_checkpoint_hash"] = info.sha256 or ""
        return values

    # -- jobs (run on the worker thread) --------------------------------------------------------------
    def reach_checkpoint(self, p: Any) -> None:
        """Before a job loads its model: a checkpoint file removed or renamed since the last scan is not a
        failed load. The folder is rescanned; when the saved option chose the file, the job falls back as
        at start-up (one log line); when the request named it (override_settings), it is a 400."""
        key = p.checkpoint
        if not key or key.startswith("<") or self.models.is_loaded(key) or os.path.exists(key):
            return
        self.refresh_checkpoints()
        named = (p.request.override_settings or {}).get("sd_model_checkpoint")
        if named:
            raise UnknownName("override_settings.sd_model_checkpoint", named, self.models.registry.titles())
        p.checkpoint = self.models.resolve_title(str(self.options.get("sd_model_checkpoint") or ""),
                                                 "sd_model_checkpoint")

    def reach_named_checkpoints(self, p: Any) -> None:
        """The refiner and hires checkpoints a request names: a file gone since the last scan is a 400
        naming it and the checkpoints there are (after a rescan), never a failed load mid-job."""
        refiner = getattr(p, "refiner", None)
        for name, key in (("refiner_checkpoint", refiner.checkpoint if refiner else None),
                          ("hr_checkpoint_name", getattr(p, "hr_checkpoint", None))):
            if not key or key.startswith("<") or self.models.is_loaded(key) or os.path.exists(key):
                continue
            self.refresh_checkpoints()
            raise UnknownName(name, str(getattr(p.request, name, key)), self.models.registry.titles())

    def reach_vae(self, p: Any) -> None:
        """The same for the job's VAE file (`sd_vae` naming a file deleted since the last scan): rescanned;
        the saved option falls back to "Automatic" (one log line), a name the request gave is a 400."""
        choice = self.models.check_vae(p.options.get("sd_vae"))
        if choice in (AUTOMATIC, NONE) or self.models.vaes.find(choice).path.exists():
            return
        self.refresh_vaes()
        named = (p.request.override_settings or {}).get("sd_vae")
        if named:
            raise UnknownName("override_settings.sd_vae", named, self.models.vaes.choices())
        p.options["sd_vae"] = self.options.get("sd_vae")

    def run_job(self, p: Processing) -> JobResult:
        """Every job kind, on the worker thread: the job's checkpoint and VAE (with the fallbacks of
        `reach_checkpoint` and `reach_vae`), then the job itself (pipeline/jobs/dispatch.py)."""
        self.reach_checkpoint(p)
        self.reach_named_checkpoints(p)
        self.reach_vae(p)
        self.models.select_vae(p.options.get("sd_vae"), apply_now=False,
                               overrides=p.options.get("sd_vae_overrides_per_model_preferences", True))
        self.models.set_weight_storage(p.options.get("fp8_storage"), p.options.get("cache_fp16_weight"))
        self.models.set_vae_autofix(p.options.get("auto_vae_precision", True),
                                    p.options.get("auto_vae_precision_bfloat16", False))
        self.models.set_checkpoints_limit(p.options.get("sd_checkpoints_limit", 1),
                                          p.options.get("sd_checkpoints_keep_in_cpu", True))
        upscaler = HiresUpscaler(self.upscalers, p.options, on_progress=self.worker.state.set_step)
        ctx = JobContext(self.models, upscaler, self.extensions, self.worker.state,
                         faces=self.upscalers.faces, networks=self.networks, previews=self.previews,
                         tiny_vae=self.tiny_vae, controlnets=self.controlnets)
        try:
            return run_job(p, ctx)
        finally:
            # a refiner or hires checkpoint ran last: the job's own model stays the current one (the
            # selection itself is the option's, never what a job loaded)
            self.models.current_filename = p.checkpoint

    def save_images(self, images: list[Image.Image], infotexts: list[str], fmt: str,
                    opts: dict[str, Any], suffixes: list[str] | None = None) -> list[Path]:
        """A1111-style numbered files `NNNNN-<seed>.<ext>` under `<outputs>/txt2img-images/<date>/` (option
        `outdir_samples` or `outdir_txt2img_samples`, relative to --outputs-dir). Each file is written to
        a private temporary name, synced, then hard-linked to the first free number: atomic, and an
        existing file is never overwritten, also with concurrent savers. A1111's options: `save_to_dirs`
        off saves straight into the folder (no date folder); `save_txt` writes the infotext beside each
        image as `<name>.txt`."""
        root = Path(opts.get("outdir_samples") or opts.get("outdir_txt2img_samples") or "txt2img-images")
        if not root.is_absolute():
            root = self.config.outputs_dir / root
        folder = root / date.today().isoformat() if opts.get("save_to_dirs", True) else root
        folder.mkdir(parents=True, exist_ok=True)
        ext = "jpg" if fmt == "jpeg" else fmt
        written: list[Path] = []
        for i, (img, text) in enumerate(zip(images, infotexts, strict=True)):
            tail = suffixes[i] if suffixes else ""
            chunks = {"parameters": text} if opts.get("enable_pnginfo", True) else {"parameters": None}
            data = encode_image(img, fmt, text_chunks=chunks, jpeg_quality=int(opts.get("jpeg_quality", 80)),
                                compress_level=self.config.png_compress_level,
                                webp_lossless=bool(opts.get("webp_lossless", False)))
            path = write_numbered(folder, f"-{_seed_of(text)}{tail}.{ext}", data)
            if opts.get("save_txt") and text:
                path.with_suffix(".txt").write_text(f"{text}\n", encoding="utf-8")
            written.append(path)
        return written


def write_numbered(folder: Path, suffix: str, data: bytes, basename: str = "") -> Path:
    """Write `data` as `folder/NNNNN<suffix>` (with a `basename`: `<basename>-NNNN<suffix>`, A1111's grid
    names) with the next free number; atomic, never overwrites."""
    fd, tmp_name = tempfile.mkstemp(prefix=".saving-", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        number = _next_number(folder, basename)
        while True:
            path = folder / (f"{basename}-{number:04d}{suffix}" if basename else f"{number:05d}{suffix}")
            try:
                os.link(tmp, path)  # atomic, and fails rather than overwrite
                return path
            except FileExistsError:
                number += 1
    finally:
        tmp.unlink(missing_ok=True)


def _seed_of(infotext: str) -> str:
    for part in infotext.rsplit("\n", 1)[-1].split(", "):
        if part.startswith("Seed: "):
            return part[6:]
    return "0"


def _next_number(folder: Path, basename: str = "") -> int:
    """A1111's sequence number: one more than the highest `NNNNN-` prefix in the folder (with a `basename`:
    the highest number after `<basename>-`)."""
    best = -1
    for f in folder.iterdir():
        name = f.name
        if basename:
            if not name.startswith(f"{basename}-"):
                continue
            name = name[len(basename) + 1:]
        head = name.split("-", 1)[0].split(".", 1)[0]
        if head.isdigit():
            best = max(best, int(head))
    return best + 1
