"""Server configuration from the command line: hiresd's flags and A1111's launch flags.

`from_args` reads the `COMMANDLINE_ARGS` environment variable as A1111's launcher does (split like a
shell line, appended after the real arguments), so a `webui-user.sh` line starts hiresd unchanged. A1111
flags hiresd honours are declared here; those it accepts with a note or refuses are in `a1111_flags`."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server import a1111_flags

# the accel flags' choices, written here so that parsing flags needs no torch (pipeline/accel/sdpa.py maps
# the backend names onto PyTorch's kernels)
FUSED_QKV_CHOICES = ("auto", "on", "off")
SDPA_BACKEND_CHOICES = ("auto", "flash", "efficient", "cudnn", "math")

# the model-file folders a flag can move: A1111's flag -> the folder's name under --models-dir
FOLDER_FLAGS: dict[str, str] = {
    "--esrgan-models-path": "ESRGAN", "--realesrgan-models-path": "RealESRGAN",
    "--swinir-models-path": "SwinIR", "--dat-models-path": "DAT", "--scunet-models-path": "ScuNET",
    "--hat-models-path": "HAT", "--gfpgan-models-path": "GFPGAN", "--codeformer-models-path": "Codeformer",
    "--ldsr-models-path": "LDSR",
}


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    models_dir: Path = Path("models")
    ckpt: Path | None = None  # --ckpt: a checkpoint file to list (if outside the folder) and select
    ckpt_dir: Path | None = None  # None: <models>/Stable-diffusion
    vae_dir: Path | None = None  # None: <models>/VAE
    vae_path: Path | None = None  # --vae-path: the one VAE used for every checkpoint
    # upscaler and face-restorer folders moved by a flag: the folder's name under models_dir -> path
    model_folders: dict[str, Path] = field(default_factory=dict)
    data_dir: Path = Path("data")
    outputs_dir: Path = Path("outputs")
    extensions_dir: Path | None = Path("extensions")
    # extra-network folders (A1111's --lora-dir, --lyco-dir, --embeddings-dir); None: the default under
    # models_dir, see `lora_folder()` and friends
    lora_dir: Path | None = None
    lyco_dir: Path | None = None
    embeddings_dir: Path | None = None
    controlnet_dir: Path | None = None  # --controlnet-dir: ControlNet files besides <models>/ControlNet
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    vae_precision: str = "auto"  # auto | fp32 (--no-half-vae)
    sdp_no_mem: bool = False  # --opt-sdp-no-mem-attention: no memory-efficient SDPA kernel (deterministic)
    compile: bool = False  # --compile: torch.compile UNet and VAE (pipeline/accel/compiling.py)
    compile_warmup: list[tuple[int, int]] = field(default_factory=list)  # --compile-warmup WxH,...
    cuda_graphs: bool = False  # --cuda-graphs: with --compile on CUDA, "reduce-overhead" (CUDA graphs)
    fused_qkv: str = "auto"  # --fused-qkv auto|on|off (pipeline/accel/fused_qkv.py)
    sdpa_backend: str = "auto"  # --sdpa-backend auto|flash|efficient|cudnn|math (pipeline/accel/sdpa.py)
    memory_mode: str = "none"  # none | medvram | lowvram | medvram-sdxl (pipeline/accel/memory.py)
    png_compress_level: int = 1  # zlib level of PNGs sent and saved (A1111 writes Pillow's 6; docs/speed.md)
    api_auth: list[tuple[str, str]] = field(default_factory=list)
    cors_allow_origins: list[str] = field(default_factory=list)
    cors_allow_origins_regex: str | None = None
    api_server_stop: bool = False
    api_log: bool = True
    queue_size: int = 16
    # async tasks (issue #23): results kept in <data dir>/tasks.db, the oldest dropped beyond these bounds
    task_results_max: int = 100
    task_results_max_mb: int = 512
    max_pixels: int = 4096 * 4096
    # a request body's limit in MiB: a batch of six 4K images as base64 PNG (up to ~33 MB each) fits
    max_body_mb: int = 200
    # per-request work limits (A1111's UI maximum for steps); see server/limits.py
    max_steps: int = 150
    max_n_iter: int = 100
    max_batch_size: int = 8
    allow_noncommercial_upscalers: bool = False
    builtin_model: bool = True
    shutdown_grace_s: float = 60.0
    styles_file: Path | None = None  # None: <data>/styles.csv
    console_progress: bool = True
    log_level: str = "INFO"
    timeout_keep_alive: int = 5
    # scale-out on Ray Serve (server/cluster/, docs/operating.md): worker replicas on a local Ray cluster
    # (--workers N) or on the cluster at --ray-address; 0 and None: one process without Ray
    workers: int = 0
    ray_address: str | None = None
    launch_notes: list[str] = field(default_factory=list)  # one log line per A1111 flag accepted with a note
    argv_flags: dict[str, Any] = field(default_factory=dict)  # the parsed command line, as given

    def ckpt_folder(self) -> Path:
        """Where checkpoints are: --ckpt-dir, else `<models>/Stable-diffusion`."""
        return self.ckpt_dir or self.models_dir / "Stable-diffusion"

    def vae_folder(self) -> Path:
        """Where VAE files are: --vae-dir, else `<models>/VAE`."""
        return self.vae_dir or self.models_dir / "VAE"

    def model_folder(self, name: str) -> Path:
        """An upscaler or face-restorer folder (`ESRGAN`, `GFPGAN`, ...): its flag, else `<models>/<name>`."""
        return self.model_folders.get(name) or self.models_dir / name

    def styles_path(self) -> Path:
        return self.styles_file or self.data_dir / "styles.csv"

    def lora_folder(self) -> Path:
        """Where LoRA files are: --lora-dir, else `<models>/Lora`."""
        return self.lora_dir or self.models_dir / "Lora"

    def lyco_folder(self) -> Path:
        """Where LyCORIS files are: --lyco-dir, else `<models>/LyCORIS`."""
        return self.lyco_dir or self.models_dir / "LyCORIS"

    def embeddings_folder(self) -> Path:
        """Where textual-inversion embeddings are: --embeddings-dir, else `<models>/embeddings`."""
        return self.embeddings_dir or self.models_dir / "embeddings"

    def controlnet_folders(self) -> list[Path]:
        """Where ControlNet files are: `<models>/ControlNet`, and --controlnet-dir (as the extension)."""
        return [self.models_dir / "ControlNet"] + ([self.controlnet_dir] if self.controlnet_dir else [])

    def cmd_flags(self) -> dict[str, Any]:
        """`/sdapi/v1/cmd-flags`: every argparse value under its own name, A1111's names for the same
        settings where they exist, and `api_auth` with its passwords masked."""
        flags: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.argv_flags.items()}
        flags.update({
            "host": self.host, "port": self.port,
            "listen": bool(self.argv_flags.get("listen")) or self.host == "0.0.0.0",
            "server_name": self.host, "api": True, "nowebui": True,
            "models_dir": str(self.models_dir), "data_dir": str(self.data_dir),
            "outputs_dir": str(self.outputs_dir),
            "extensions_dir": str(self.extensions_dir) if self.extensions_dir else None,
            "ckpt": str(self.ckpt) if self.ckpt else None,
            "ckpt_dir": str(self.ckpt_folder()), "vae_dir": str(self.vae_folder()),
            "vae_path": str(self.vae_path) if self.vae_path else None,
            **{_dest(flag): str(self.model_folder(name)) for flag, name in FOLDER_FLAGS.items()},
            "lora_dir": str(self.lora_folder()), "lyco_dir": str(self.lyco_folder()),
            "embeddings_dir": str(self.embeddings_folder()), "styles_file": [str(self.styles_path())],
            "no_half_vae": self.vae_precision == "fp32", "opt_sdp_attention": True,
            "opt_sdp_no_mem_attention": self.sdp_no_mem,
            "disable_console_progressbars": not self.console_progress, "loglevel": self.log_level,
            "timeout_keep_alive": self.timeout_keep_alive,
            "device": self.device, "precision": self.precision, "no_half": self.precision == "fp32",
            "use_cpu": ["all"] if self.device == "cpu" else [],
            "api_auth": ",".join(f"{u}:***" for u, _ in self.api_auth) or None,
            "api_log": self.api_log, "api_server_stop": self.api_server_stop,
            "cors_allow_origins": ",".join(self.cors_allow_origins) or None,
            "cors_allow_origins_regex": self.cors_allow_origins_regex,
            "queue_size": self.queue_size, "max_pixels": self.max_pixels, "max_body_mb": self.max_body_mb,
            "max_steps": self.max_steps, "max_n_iter": self.max_n_iter, "max_batch_size": self.max_batch_size,
            "shutdown_grace": self.shutdown_grace_s,
            "task_results_max": self.task_results_max, "task_results_max_mb": self.task_results_max_mb,
            "enable_noncommercial_upscalers": self.allow_noncommercial_upscalers,
            "no_builtin_model": not self.builtin_model,
        })
        return flags


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        w, sep, h = item.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) % 8 or int(h) % 8 or not int(w) or not int(h):
            raise argparse.ArgumentTypeError(f"{item!r}: sizes are WIDTHxHEIGHT, multiples of 8 (e.g. 512x512)")
        sizes.append((int(w), int(h)))
    return sizes


def _auth_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if ":" not in item:
            raise argparse.ArgumentTypeError(f"--api-auth entry {item!r} must be user:password")
        user, pw = item.split(":", 1)
        pairs.append((user, pw))
    return pairs


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m server", description="hiresd: an A1111 /sdapi/v1 server "
                                 "for hires fix and upscaling, fully offline. COMMANDLINE_ARGS is read as "
                                 "A1111's launcher reads it (appended to the command line).",
                                 epilog="A1111's other launch flags (--xformers, --lowram, --theme, --share, "
                                 "...) are accepted with one log line each saying what hiresd does instead; "
                                 "--disable-safe-unpickle, --enable-insecure-extension-access and --allow-code "
                                 "are refused. See docs/operating.md, 'Launch lines'.")
    ap.add_argument("--host", "--server-name", default=None, help="bind address (default 127.0.0.1)")
    ap.add_argument("--listen", action="store_true", help="bind 0.0.0.0 (as A1111's --listen)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--timeout-keep-alive", type=int, default=5, help="seconds an idle connection stays open")
    ap.add_argument("--loglevel", default="INFO", type=str.upper,
                    choices=["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"], help="log level (INFO)")
    ap.add_argument("--models-dir", type=Path, default=None,
                    help="holds Stable-diffusion/, VAE/, Lora/, embeddings/, ESRGAN/, RealESRGAN/, SwinIR/, "
                         "DAT/, HAT/, ScuNET/, LDSR/ (default <data-dir>/models with --data-dir, else ./models)")
    ap.add_argument("--ckpt", type=Path, default=None,
                    help="checkpoint to select at start (listed too when outside the checkpoint folder)")
    ap.add_argument("--ckpt-dir", type=Path, default=None,
                    help="checkpoints (default <models-dir>/Stable-diffusion)")
    ap.add_argument("--vae-dir", type=Path, default=None, help="VAE files (default <models-dir>/VAE)")
    ap.add_argument("--vae-path", type=Path, default=None,
                    help="the one VAE file for every checkpoint; option sd_vae is then fixed to it")
    for flag, name in FOLDER_FLAGS.items():
        ap.add_argument(flag, type=Path, default=None, help=f"{name} models (default <models-dir>/{name})")
    ap.add_argument("--lora-dir", type=Path, default=None, help="LoRA files (default <models-dir>/Lora)")
    ap.add_argument("--lyco-dir", "--lyco-dir-backcompat", type=Path, default=None,
                    help="LyCORIS files (default <models-dir>/LyCORIS)")
    ap.add_argument("--controlnet-dir", type=Path, default=None,
                    help="ControlNet files, besides <models-dir>/ControlNet")
    ap.add_argument("--embeddings-dir", type=Path, default=None,
                    help="textual-inversion embeddings (default <models-dir>/embeddings)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="as A1111's: the root of models/, outputs/, extensions/ and embeddings/ (each unless "
                         "its own flag is given) and of options.json, the hash cache, styles.csv and tasks.db "
                         "(default ./data for those, with ./models, ./outputs, ./extensions beside it)")
    ap.add_argument("--styles-file", type=Path, action="append", default=None,
                    help="styles CSV (default <data-dir>/styles.csv)")
    ap.add_argument("--outputs-dir", type=Path, default=None,
                    help="where save_images writes (default <data-dir>/outputs with --data-dir, else ./outputs)")
    ap.add_argument("--extensions-dir", type=Path, default=None,
                    help="extension files (default <data-dir>/extensions with --data-dir, else ./extensions)")
    ap.add_argument("--disable-all-extensions", "--disable-extra-extensions", action="store_true",
                    help="load no extension")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    ap.add_argument("--device-id", default=None, help="CUDA device number (same as --device cuda:N)")
    ap.add_argument("--use-cpu", nargs="+", type=str.lower, default=[],
                    help="'all' or 'sd': run on the CPU (hiresd has one device for everything)")
    ap.add_argument("--precision", default="auto",
                    choices=["auto", "fp32", "fp16", "bf16", "full", "half", "autocast"],
                    help="auto: fp16 on CUDA (bf16 VAE where supported), fp32 on the CPU; A1111's "
                         "full = fp32, half = fp16, autocast = auto")
    ap.add_argument("--no-half", action="store_true", help="same as --precision fp32")
    ap.add_argument("--no-half-vae", action="store_true", help="run the VAE in fp32")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the UNet and VAE (first job at a new size compiles; generated code is "
                         "cached under <data-dir>/compile-cache for restarts)")
    ap.add_argument("--compile-warmup", type=_sizes, default=[], metavar="WxH[,WxH]",
                    help="with --compile: run these image sizes once at model load (e.g. 512x512,1024x1024)")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="with --compile on CUDA: record the compiled forwards as CUDA graphs per image size "
                         "(torch.compile mode reduce-overhead)")
    ap.add_argument("--fused-qkv", choices=FUSED_QKV_CHOICES, default="auto",
                    help="one matrix product for attention's query/key/value projections (auto: off until "
                         "measured faster: see docs/speed.md; never with --compile)")
    ap.add_argument("--sdpa-backend", choices=SDPA_BACKEND_CHOICES, default="auto",
                    help="CUDA attention kernel tried first (auto: PyTorch's own order); the others stay "
                         "as fallbacks")
    ap.add_argument("--medvram", action="store_true",
                    help="GPU: only the running component (text encoder, UNet, VAE) sits on the GPU")
    ap.add_argument("--lowvram", action="store_true",
                    help="GPU: as --medvram, and the UNet moves block by block (slow, least memory)")
    ap.add_argument("--medvram-sdxl", action="store_true", help="--medvram for SDXL checkpoints only")
    ap.add_argument("--png-compress-level", type=int, choices=range(10), default=1, metavar="0-9",
                    help="PNG zlib level for responses and saved files (default 1; 6 is A1111's: a few "
                         "percent fewer bytes, 2-7x the encoding time)")
    ap.add_argument("--opt-sdp-attention", action="store_true", help="PyTorch SDPA attention (always on)")
    ap.add_argument("--opt-sdp-no-mem-attention", action="store_true",
                    help="SDPA without the memory-efficient kernel (deterministic on CUDA, more memory)")
    ap.add_argument("--api-auth", type=_auth_pairs, default=[], help="user:pass[,user2:pass2] HTTP Basic auth")
    ap.add_argument("--cors-allow-origins", default="", help="comma-separated origins")
    ap.add_argument("--cors-allow-origins-regex", default=None)
    ap.add_argument("--api-server-stop", action="store_true", help="enable server-stop/kill/restart routes")
    ap.add_argument("--no-api-log", action="store_true", help="no per-request log line")
    ap.add_argument("--api-log", action="store_true", help="accepted for A1111 compatibility (on by default)")
    ap.add_argument("--disable-console-progressbars", action="store_true",
                    help="no progress bar on the console")
    ap.add_argument("--queue-size", type=int, default=16, help="jobs allowed to wait; more get 503")
    ap.add_argument("--task-results-max", type=_positive_int, default=100,
                    help="async tasks: results kept (the oldest are dropped first)")
    ap.add_argument("--task-results-max-mb", type=_positive_int, default=512,
                    help="async tasks: MiB of result images kept (the oldest are dropped first)")
    ap.add_argument("--shutdown-grace", type=float, default=60.0,
                    help="on SIGTERM, seconds the running job may take before it is interrupted")
    ap.add_argument("--max-pixels", type=int, default=4096 * 4096,
                    help="pixel budget per batch (width x height x batch_size, hires target included)")
    ap.add_argument("--max-body-mb", type=_positive_int, default=200,
                    help="largest request body in MiB (200: a batch of six 4K PNGs as base64); larger is a 413")
    ap.add_argument("--max-steps", type=_positive_int, default=150,
                    help="most sampling steps per pass a request may ask for, hires pass included (150)")
    ap.add_argument("--max-n-iter", type=_positive_int, default=100, help="most batches per request (100)")
    ap.add_argument("--max-batch-size", type=_positive_int, default=8, help="most images per batch (8)")
    ap.add_argument("--enable-noncommercial-upscalers", action="store_true",
                    help="load non-commercial spandrel architectures (spandrel_extra_arches)")
    ap.add_argument("--no-builtin-model", action="store_true", help="do not offer the built-in tiny model")
    ap.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                    help="scale out: N worker replicas (one per GPU; one torch thread each on the CPU) on a "
                         "local Ray cluster started here (needs the 'cluster' extra; docs/operating.md)")
    ap.add_argument("--ray-address", default=None, metavar="ADDR",
                    help="scale out on the running Ray cluster at ADDR ('auto': the one on this machine); "
                         "one replica per GPU there unless --workers says how many")
    ap.add_argument("--api", action="store_true", help="accepted for A1111 compatibility (always on)")
    ap.add_argument("--nowebui", action="store_true", help="accepted for A1111 compatibility (no UI here)")
    a1111_flags.add_to(ap)
    return ap


def launch_argv(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> list[str]:
    """The command line as A1111's launcher builds it: `COMMANDLINE_ARGS`, split like a shell line, after
    the real arguments (so a value there wins over the same flag given directly, as in A1111)."""
    env = os.environ if environ is None else environ
    return list(sys.argv[1:] if argv is None else argv) + shlex.split(env.get("COMMANDLINE_ARGS", ""))


_PRECISION = {"full": "fp32", "half": "fp16", "autocast": "auto"}


def data_folders(data_dir: Path | None, models_dir: Path | None, outputs_dir: Path | None,
                 extensions_dir: Path | None, embeddings_dir: Path | None) -> dict[str, Any]:
    """The folders the flags set, as A1111's `--data-dir` lays them out: with `--data-dir D`, D is the root
    of `D/models`, `D/outputs`, `D/extensions` and (A1111 keeps them beside models/, not in it)
    `D/embeddings` when that folder exists, and holds the config files itself; a more specific flag wins.
    Without `--data-dir`: ./data for the config files, ./models, ./outputs, ./extensions, and embeddings in
    <models>/embeddings."""
    root = data_dir if data_dir is not None else Path(".")
    embeddings = embeddings_dir
    if embeddings is None and data_dir is not None and (data_dir / "embeddings").is_dir():
        embeddings = data_dir / "embeddings"
    return {"data": data_dir if data_dir is not None else Path("data"),
            "models": models_dir if models_dir is not None else root / "models",
            "outputs": outputs_dir if outputs_dir is not None else root / "outputs",
            "extensions": extensions_dir if extensions_dir is not None else root / "extensions",
            "embeddings": embeddings}


def from_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> ServerConfig:
    """Parse the command line (with `COMMANDLINE_ARGS`); a refused flag ends the program with status 2
    and a message saying why, before anything starts."""
    ap = parser()
    env = os.environ if environ is None else environ
    if env.get("IGNORE_CMD_ARGS_ERRORS") is None:
        a, unknown = ap.parse_args(launch_argv(argv, env)), []
    else:  # A1111's escape hatch: flags it does not know are ignored
        a, unknown = ap.parse_known_args(launch_argv(argv, env))
    refused = a1111_flags.refusals(a)
    if refused:
        ap.error("; ".join(refused))
    notes = a1111_flags.notes(a)
    if unknown:
        notes.append(f"IGNORE_CMD_ARGS_ERRORS is set: ignoring unknown arguments {' '.join(unknown)}")
    host = a.host or ("0.0.0.0" if a.listen else "127.0.0.1")
    device = a.device
    if device == "auto" and a.device_id is not None:
        device = f"cuda:{a.device_id}"
    cpu_for = set(a.use_cpu)
    if cpu_for & {"all", "sd"}:
        device = "cpu"
    elif cpu_for:
        notes.append(f"--use-cpu {' '.join(sorted(cpu_for))}: hiresd runs every model on one device; ignored "
                     "(use --use-cpu all for the CPU)")
    folders = data_folders(a.data_dir, a.models_dir, a.outputs_dir, a.extensions_dir, a.embeddings_dir)
    styles = a.styles_file or []
    if len(styles) > 1:
        notes.append(f"--styles-file: only the first file is read ({styles[0]})")
    return ServerConfig(
        host=host, port=a.port, models_dir=folders["models"], ckpt=a.ckpt, ckpt_dir=a.ckpt_dir, vae_dir=a.vae_dir,
        vae_path=a.vae_path,
        model_folders={name: getattr(a, _dest(flag)) for flag, name in FOLDER_FLAGS.items()
                       if getattr(a, _dest(flag)) is not None},
        data_dir=folders["data"], outputs_dir=folders["outputs"],
        extensions_dir=None if a.disable_all_extensions else folders["extensions"],
        lora_dir=a.lora_dir, lyco_dir=a.lyco_dir, embeddings_dir=folders["embeddings"], device=device,
        controlnet_dir=a.controlnet_dir,
        precision="fp32" if a.no_half else _PRECISION.get(a.precision, a.precision),
        vae_precision="fp32" if a.no_half_vae else "auto", sdp_no_mem=a.opt_sdp_no_mem_attention,
        compile=a.compile, compile_warmup=a.compile_warmup, png_compress_level=a.png_compress_level,
        cuda_graphs=a.cuda_graphs, fused_qkv=a.fused_qkv, sdpa_backend=a.sdpa_backend,
        memory_mode="lowvram" if a.lowvram else "medvram" if a.medvram else
        "medvram-sdxl" if a.medvram_sdxl else "none",
        api_auth=a.api_auth, cors_allow_origins=[o for o in a.cors_allow_origins.split(",") if o],
        cors_allow_origins_regex=a.cors_allow_origins_regex, api_server_stop=a.api_server_stop,
        api_log=not a.no_api_log, queue_size=a.queue_size,
        task_results_max=a.task_results_max, task_results_max_mb=a.task_results_max_mb,
        max_pixels=a.max_pixels,
        max_body_mb=a.max_body_mb, max_steps=a.max_steps, max_n_iter=a.max_n_iter,
        max_batch_size=a.max_batch_size,
        allow_noncommercial_upscalers=a.enable_noncommercial_upscalers, builtin_model=not a.no_builtin_model,
        shutdown_grace_s=a.shutdown_grace, styles_file=styles[0] if styles else None,
        console_progress=not a.disable_console_progressbars, log_level=a.loglevel,
        timeout_keep_alive=a.timeout_keep_alive, launch_notes=notes,
        workers=a.workers or 0, ray_address=a.ray_address,
        argv_flags=a1111_flags.strip(vars(a)),
    )
