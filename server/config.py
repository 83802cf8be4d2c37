"""Server configuration from the command line (A1111's launch flags where they exist)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    models_dir: Path = Path("models")
    ckpt: Path | None = None  # --ckpt: a checkpoint file to list (if outside the folder) and select
    data_dir: Path = Path("data")
    outputs_dir: Path = Path("outputs")
    extensions_dir: Path | None = Path("extensions")
    # extra-network folders (A1111's --lora-dir, --lyco-dir, --embeddings-dir); None: the default under
    # models_dir, see `lora_folder()` and friends
    lora_dir: Path | None = None
    lyco_dir: Path | None = None
    embeddings_dir: Path | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    api_auth: list[tuple[str, str]] = field(default_factory=list)
    cors_allow_origins: list[str] = field(default_factory=list)
    cors_allow_origins_regex: str | None = None
    api_server_stop: bool = False
    api_log: bool = True
    queue_size: int = 16
    max_pixels: int = 4096 * 4096
    allow_noncommercial_upscalers: bool = False
    builtin_model: bool = True
    shutdown_grace_s: float = 60.0
    argv_flags: dict[str, Any] = field(default_factory=dict)  # the parsed command line, as given

    def lora_folder(self) -> Path:
        """Where LoRA files are: --lora-dir, else `<models>/Lora`."""
        return self.lora_dir or self.models_dir / "Lora"

    def lyco_folder(self) -> Path:
        """Where LyCORIS files are: --lyco-dir, else `<models>/LyCORIS`."""
        return self.lyco_dir or self.models_dir / "LyCORIS"

    def embeddings_folder(self) -> Path:
        """Where textual-inversion embeddings are: --embeddings-dir, else `<models>/embeddings`."""
        return self.embeddings_dir or self.models_dir / "embeddings"

    def cmd_flags(self) -> dict[str, Any]:
        """`/sdapi/v1/cmd-flags`: every argparse value under its own name, A1111's names for the same
        settings where they exist, and `api_auth` with its passwords masked."""
        flags: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.argv_flags.items()}
        flags.update({
            "host": self.host, "port": self.port, "listen": self.host == "0.0.0.0",
            "server_name": self.host, "api": True, "nowebui": True,
            "models_dir": str(self.models_dir), "data_dir": str(self.data_dir),
            "outputs_dir": str(self.outputs_dir),
            "extensions_dir": str(self.extensions_dir) if self.extensions_dir else None,
            "ckpt_dir": str(self.models_dir / "Stable-diffusion"), "vae_dir": str(self.models_dir / "VAE"),
            "esrgan_models_path": str(self.models_dir / "ESRGAN"),
            "realesrgan_models_path": str(self.models_dir / "RealESRGAN"),
            "swinir_models_path": str(self.models_dir / "SwinIR"),
            "lora_dir": str(self.lora_folder()), "lyco_dir": str(self.lyco_folder()),
            "embeddings_dir": str(self.embeddings_folder()),
            "dat_models_path": str(self.models_dir / "DAT"), "scunet_models_path": str(self.models_dir / "ScuNET"),
            "device": self.device, "precision": self.precision, "no_half": self.precision == "fp32",
            "use_cpu": ["all"] if self.device == "cpu" else [],
            "api_auth": ",".join(f"{u}:***" for u, _ in self.api_auth) or None,
            "api_log": self.api_log, "api_server_stop": self.api_server_stop,
            "cors_allow_origins": ",".join(self.cors_allow_origins) or None,
            "cors_allow_origins_regex": self.cors_allow_origins_regex,
            "queue_size": self.queue_size, "max_pixels": self.max_pixels,
            "shutdown_grace": self.shutdown_grace_s,
            "enable_noncommercial_upscalers": self.allow_noncommercial_upscalers,
            "no_builtin_model": not self.builtin_model,
        })
        return flags


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
                                 "for hires fix and upscaling, fully offline.")
    ap.add_argument("--host", "--server-name", default=None, help="bind address (default 127.0.0.1)")
    ap.add_argument("--listen", action="store_true", help="bind 0.0.0.0 (as A1111's --listen)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--models-dir", type=Path, default=Path("models"),
                    help="holds Stable-diffusion/, VAE/, ESRGAN/, RealESRGAN/, SwinIR/, DAT/, HAT/, ScuNET/")
    ap.add_argument("--ckpt", type=Path, default=None,
                    help="checkpoint to select at start (added to the list when outside the checkpoint folder)")
    ap.add_argument("--data-dir", type=Path, default=Path("data"), help="options, hash cache, styles.csv")
    ap.add_argument("--outputs-dir", type=Path, default=Path("outputs"), help="where save_images writes")
    ap.add_argument("--extensions-dir", type=Path, default=Path("extensions"))
    ap.add_argument("--lora-dir", type=Path, default=None, help="LoRA files (default <models-dir>/Lora)")
    ap.add_argument("--lyco-dir", type=Path, default=None, help="LyCORIS files (default <models-dir>/LyCORIS)")
    ap.add_argument("--embeddings-dir", type=Path, default=None,
                    help="textual-inversion embeddings (default <models-dir>/embeddings)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                    help="auto: fp16 on CUDA (bf16 VAE where supported), fp32 on the CPU")
    ap.add_argument("--no-half", action="store_true", help="same as --precision fp32")
    ap.add_argument("--api-auth", type=_auth_pairs, default=[], help="user:pass[,user2:pass2] HTTP Basic auth")
    ap.add_argument("--cors-allow-origins", default="", help="comma-separated origins")
    ap.add_argument("--cors-allow-origins-regex", default=None)
    ap.add_argument("--api-server-stop", action="store_true", help="enable server-stop/kill/restart routes")
    ap.add_argument("--no-api-log", action="store_true", help="no per-request log line")
    ap.add_argument("--api-log", action="store_true", help="accepted for A1111 compatibility (on by default)")
    ap.add_argument("--queue-size", type=int, default=16, help="jobs allowed to wait; more get 503")
    ap.add_argument("--shutdown-grace", type=float, default=60.0,
                    help="on SIGTERM, seconds the running job may take before it is interrupted")
    ap.add_argument("--max-pixels", type=int, default=4096 * 4096,
                    help="pixel budget per batch (width x height x batch_size, hires target included)")
    ap.add_argument("--enable-noncommercial-upscalers", action="store_true",
                    help="load non-commercial spandrel architectures (spandrel_extra_arches)")
    ap.add_argument("--no-builtin-model", action="store_true", help="do not offer the built-in tiny model")
    ap.add_argument("--api", action="store_true", help="accepted for A1111 compatibility (always on)")
    ap.add_argument("--nowebui", action="store_true", help="accepted for A1111 compatibility (no UI here)")
    return ap


def from_args(argv: list[str] | None = None) -> ServerConfig:
    a = parser().parse_args(argv)
    host = a.host or ("0.0.0.0" if a.listen else "127.0.0.1")
    return ServerConfig(
        host=host, port=a.port, models_dir=a.models_dir, ckpt=a.ckpt, data_dir=a.data_dir, outputs_dir=a.outputs_dir,
        extensions_dir=a.extensions_dir, lora_dir=a.lora_dir, lyco_dir=a.lyco_dir,
        embeddings_dir=a.embeddings_dir, device=a.device, precision="fp32" if a.no_half else a.precision,
        api_auth=a.api_auth, cors_allow_origins=[o for o in a.cors_allow_origins.split(",") if o],
        cors_allow_origins_regex=a.cors_allow_origins_regex, api_server_stop=a.api_server_stop,
        api_log=not a.no_api_log, queue_size=a.queue_size, max_pixels=a.max_pixels,
        allow_noncommercial_upscalers=a.enable_noncommercial_upscalers, builtin_model=not a.no_builtin_model,
        shutdown_grace_s=a.shutdown_grace, argv_flags=vars(a),
    )
