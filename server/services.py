"""The app's one `Services` object: configuration, options, the worker and the registries it drives."""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.diffusion.preview import Previews
from pipeline.diffusion.tiled.request import register as register_tiled_diffusion
from pipeline.infotext.codec import parse_infotext
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
from server.filenames import FilenameGenerator, JobFacts
from server.imagecodec import encode_image
from server.options import OPTIONS, OptionsStore
from server.saving import save_image
from upscalers.extras import UpscaleCache
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
    # A1111's extras upscale cache (option upscaling_max_images_in_cache), per server process
    extras_cache: UpscaleCache = field(default_factory=UpscaleCache)
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
        svc.follow_list_hidden_files()
        if config.ckpt is not None:
            svc.select_ckpt_flag(config.ckpt)
        svc.settle_saved_names()
        svc.use_model_options(options.all())
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

    def follow_list_hidden_files(self) -> None:
        """Make the model listings that A1111 walks with `walk_files` (checkpoints, LoRA, upscalers, face
        restorers) read option `list_hidden_files` at each scan, and rescan those made before the options
        were read when it is off (the upscalers are scanned at start-up only, as A1111's)."""
        def read() -> bool:
            return bool(self.options.get("list_hidden_files"))

        listings = [self.models.registry, self.networks.loras, self.upscalers, self.upscalers.faces]
        for listing in listings:
            listing.list_hidden = read
        if not read():
            self.models.registry.refresh()
            self.upscalers.refresh()  # the face restorers too

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
        self.use_model_options(self.options.all())
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

    def use_model_options(self, opts: dict[str, Any]) -> None:
        """The model manager set from a job's (or the stored) options, before a model is reached: the VAE
        choice and its order, float8 storage, the VAE's NaN fallback and how many checkpoints stay loaded.
        An option missing from `opts` takes its default."""
        def get(name: str) -> Any:
            return opts.get(name, OPTIONS[name].default)

        self.models.select_vae(get("sd_vae"), apply_now=False,
                               overrides=get("sd_vae_overrides_per_model_preferences"))
        self.models.set_weight_storage(get("fp8_storage"), get("cache_fp16_weight"))
        self.models.set_vae_autofix(get("auto_vae_precision"), get("auto_vae_precision_bfloat16"))
        self.models.set_checkpoints_limit(get("sd_checkpoints_limit"), get("sd_checkpoints_keep_in_cpu"))

    def run_job(self, p: Processing) -> JobResult:
        """Every job kind, on the worker thread: the job's checkpoint and VAE (with the fallbacks of
        `reach_checkpoint` and `reach_vae`), then the job itself (pipeline/jobs/dispatch.py)."""
        self.reach_checkpoint(p)
        self.reach_named_checkpoints(p)
        self.reach_vae(p)
        self.use_model_options(p.options)
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

    def job_facts(self, info: dict[str, Any], opts: dict[str, Any], n_iter: int = 1) -> JobFacts:
        """What file-name patterns read from a finished job (its response `info`): the style prompts of its
        styles (those still in styles.csv) and the `Schedule type` of its first infotext."""
        style_prompts = [s.prompt for s in self.styles.list() if s.name in (info.get("styles") or [])]
        infotexts = info.get("infotexts") or []
        scheduler = None
        if infotexts:
            scheduler = parse_infotext(infotexts[0]).get("Schedule type")
        return JobFacts.from_info(info, opts, n_iter, style_prompts,
                                  None if scheduler is None else str(scheduler))

    def save_images(self, images: list[Image.Image], infotexts: list[str], fmt: str,
                    opts: dict[str, Any], suffixes: list[str] | None = None, job: JobFacts | None = None,
                    indices: list[int] | None = None) -> list[Path]:
        """Save a job's images as A1111's API does (server/saving.py: folders, names from the patterns of
        server/filenames.py, numbering, atomic writes, JPEG export, `save_txt`) under option
        `outdir_samples` or `outdir_txt2img_samples` (relative: under --outputs-dir). `job`: what the name
        patterns read (default: the seeds of the infotexts); `indices`: each image's position in the job
        (default: its position here); `suffixes`: a file-name suffix per image (`-before-highres-fix`)."""
        root = Path(opts.get("outdir_samples") or opts.get("outdir_txt2img_samples") or "txt2img-images")
        if not root.is_absolute():
            root = self.config.outputs_dir / root
        if job is None:
            job = JobFacts(all_seeds=[_seed_of(t) for t in infotexts], batch_size=len(infotexts) or 1,
                           max_prompt_words=int(opts.get("directories_max_prompt_words", 8)))
        written: list[Path] = []
        for i, (img, text) in enumerate(zip(images, infotexts, strict=True)):
            index = indices[i] if indices is not None else i
            namegen = FilenameGenerator.for_image(job, index, img)
            written.append(save_image(root, img, fmt, opts, namegen, self.encoder(opts, text),
                                      suffix=suffixes[i] if suffixes else "", infotext=text))
        return written

    def encoder(self, opts: dict[str, Any], infotext: str | None) -> Callable[[Image.Image, str], bytes]:
        """How a saved file's bytes are made: the infotext in it when `enable_pnginfo` is on."""
        keep = opts.get("enable_pnginfo", True) and infotext
        chunks = {"parameters": infotext if keep else None}

        def encode(img: Image.Image, fmt: str) -> bytes:
            return encode_image(img, fmt, text_chunks=chunks, jpeg_quality=int(opts.get("jpeg_quality", 80)),
                                compress_level=self.config.png_compress_level,
                                webp_lossless=bool(opts.get("webp_lossless", False)))

        return encode


def _seed_of(infotext: str) -> int | None:
    for part in infotext.rsplit("\n", 1)[-1].split(", "):
        if part.startswith("Seed: "):
            try:
                return int(part[6:])
            except ValueError:
                return None
    return None
