"""A1111 launch flags that hiresd accepts without acting on them, and the ones it refuses.

`COMMANDLINE_ARGS` lines copied from `webui-user.sh` / `webui-user.bat` carry flags for A1111's launcher,
its Gradio UI, its attention and memory tricks. Each one listed here is parsed with A1111's arity (so a
value after it is not mistaken for another flag) and answered with one log line saying what hiresd does
instead. Flags that would weaken safety are refused: hiresd never runs code from requests or unpickles
model files unsafely. The flags hiresd honours are declared in `server/config.py`."""
from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class NotedFlag:
    """A flag accepted with a note. `nargs`: None (no value), "1" (one value), "+" (one or more) or
    "append" (one value, may repeat)."""

    note: str
    nargs: str | None = None


_SDPA = "hiresd uses PyTorch's scaled-dot-product attention (SDPA) on every device; nothing else to choose"
_MEMORY = "no separate low-RAM load path here; ignored (--medvram, --lowvram, --medvram-sdxl are honoured)"
_UI = "hiresd has no web UI; ignored"
_LAUNCHER = "a launcher/installer option of A1111; hiresd installs nothing at start, ignored"
_NOTHING = "does nothing in A1111 either; ignored"
_FILENAMES = ("saved names always use A1111's default sanitising (characters Windows forbids and # become _, "
              "parts of at most 128 characters); ignored")
_NO_EXTENSION = "an A1111 extension's flag (ControlNet, ADetailer); that extension is not served here, ignored"

NOTED: dict[str, NotedFlag] = {
    # attention implementations
    "--xformers": NotedFlag(_SDPA),
    "--force-enable-xformers": NotedFlag(_SDPA),
    "--xformers-flash-attention": NotedFlag(_SDPA),
    "--opt-split-attention": NotedFlag(_SDPA),
    "--opt-split-attention-v1": NotedFlag(_SDPA),
    "--opt-split-attention-invokeai": NotedFlag(_SDPA),
    "--opt-sub-quad-attention": NotedFlag(_SDPA),
    "--sub-quad-q-chunk-size": NotedFlag(_SDPA, "1"),
    "--sub-quad-kv-chunk-size": NotedFlag(_SDPA, "1"),
    "--sub-quad-chunk-threshold": NotedFlag(_SDPA, "1"),
    "--disable-opt-split-attention": NotedFlag(_SDPA),
    "--opt-channelslast": NotedFlag("channels-last memory format is not used; running normally"),
    # memory modes
    "--lowram": NotedFlag(_MEMORY),
    "--always-batch-cond-uncond": NotedFlag("cond and uncond are always batched together here; ignored"),
    "--disable-model-loading-ram-optimization": NotedFlag("checkpoints load through safetensors' own "
                                                          "memory mapping; ignored"),
    # precision and devices
    "--upcast-sampling": NotedFlag("sampler arithmetic already runs in fp32 whatever the UNet's precision; "
                                   "nothing to change"),
    "--use-ipex": NotedFlag("Intel XPU (IPEX) is not supported; using --device (CUDA or CPU)"),
    "--disable-nan-check": NotedFlag("hiresd does not stop on NaN latents; ignored"),
    # model files hiresd does not use
    "--config": NotedFlag("model configs are read from the checkpoint file itself; ignored", "1"),
    "--hypernetwork-dir": NotedFlag("hypernetworks are not supported; /hypernetworks lists none", "1"),
    "--textual-inversion-templates-dir": NotedFlag("training is not served; ignored", "1"),
    "--clip-models-path": NotedFlag("interrogate is not served; ignored", "1"),
    "--bsrgan-models-path": NotedFlag("BSRGAN files go under the ESRGAN folder (spandrel detects them); "
                                      "ignored", "1"),
    "--gfpgan-dir": NotedFlag("GFPGAN model files are found under --gfpgan-models-path; ignored", "1"),
    "--gfpgan-model": NotedFlag("the first GFPGAN file under --gfpgan-models-path is used; ignored", "1"),
    "--no-hashing": NotedFlag("hashes are computed in the background and cached; ignored"),
    "--skip-load-model-at-start": NotedFlag("hiresd always loads the checkpoint on first use"),
    "--ui-settings-file": NotedFlag("options live in <data-dir>/options.json; ignored", "1"),
    "--unix-filenames-sanitization": NotedFlag(_FILENAMES),
    "--filenames-max-length": NotedFlag(_FILENAMES, "1"),
    "--no-prompt-history": NotedFlag("hiresd keeps no prompt history; ignored"),
    "--enable-console-prompts": NotedFlag("prompts are not printed to the console; ignored"),
    "--administrator": NotedFlag(_NOTHING),
    "--unload-gfpgan": NotedFlag(_NOTHING),
    "--deepdanbooru": NotedFlag(_NOTHING),
    "--show-negative-prompt": NotedFlag(_NOTHING),
    "--gradio-img2img-tool": NotedFlag(_NOTHING, "1"),
    "--gradio-inpaint-tool": NotedFlag(_NOTHING, "1"),
    "--gradio-queue": NotedFlag(_NOTHING),
    # the web UI
    "--share": NotedFlag(_UI),
    "--ngrok": NotedFlag(_UI, "1"),
    "--ngrok-region": NotedFlag(_UI, "1"),
    "--ngrok-options": NotedFlag(_UI, "1"),
    "--autolaunch": NotedFlag(_UI),
    "--theme": NotedFlag(_UI, "1"),
    "--gradio-debug": NotedFlag(_UI),
    "--gradio-auth": NotedFlag("hiresd has no web UI; use --api-auth to protect the API", "1"),
    "--gradio-auth-path": NotedFlag("hiresd has no web UI; use --api-auth to protect the API", "1"),
    "--gradio-allowed-path": NotedFlag(_UI, "append"),
    "--no-gradio-queue": NotedFlag(_UI),
    "--no-progressbar-hiding": NotedFlag(_UI),
    "--ui-config-file": NotedFlag(_UI, "1"),
    "--ui-debug-mode": NotedFlag(_UI),
    "--hide-ui-dir-config": NotedFlag(_UI),
    "--freeze-settings": NotedFlag(_UI),
    "--use-textbox-seed": NotedFlag(_UI),
    "--localizations-dir": NotedFlag(_UI, "1"),
    "--max-batch-count": NotedFlag("a UI slider limit in A1111; the API limit here is --max-n-iter", "1"),
    "--subpath": NotedFlag("serve behind a reverse proxy that strips the prefix instead; ignored", "1"),
    "--add-stop-route": NotedFlag("use --api-server-stop (POST /sdapi/v1/server-stop); ignored"),
    "--tls-keyfile": NotedFlag("hiresd serves plain HTTP; put a TLS proxy in front; ignored", "1"),
    "--tls-certfile": NotedFlag("hiresd serves plain HTTP; put a TLS proxy in front; ignored", "1"),
    "--disable-tls-verify": NotedFlag("hiresd serves plain HTTP; ignored"),
    # the launcher and installer
    "-f": NotedFlag(_LAUNCHER),
    "--skip-torch-cuda-test": NotedFlag("hiresd runs no CUDA test at start; without CUDA it runs on the CPU"),
    "--skip-python-version-check": NotedFlag(_LAUNCHER),
    "--skip-version-check": NotedFlag(_LAUNCHER),
    "--skip-install": NotedFlag(_LAUNCHER),
    "--skip-prepare-environment": NotedFlag(_LAUNCHER),
    "--reinstall-xformers": NotedFlag(_LAUNCHER),
    "--reinstall-torch": NotedFlag(_LAUNCHER),
    "--update-check": NotedFlag(_LAUNCHER),
    "--update-all-extensions": NotedFlag(_LAUNCHER),
    "--tests": NotedFlag(_LAUNCHER, "1"),
    "--no-tests": NotedFlag(_LAUNCHER),
    "--dump-sysinfo": NotedFlag(_LAUNCHER),
    "--do-not-download-clip": NotedFlag("hiresd never downloads anything; nothing to change"),
    "--no-download-sd-model": NotedFlag("hiresd never downloads anything; nothing to change"),
    "--log-startup": NotedFlag(_LAUNCHER),
    # flags that popular A1111 extensions add (their preload.py); hiresd serves no such extension
    "--controlnet-annotator-models-path": NotedFlag(_NO_EXTENSION, "1"),
    "--no-half-controlnet": NotedFlag(_NO_EXTENSION),
    "--controlnet-preprocessor-cache-size": NotedFlag(_NO_EXTENSION, "1"),
    "--controlnet-loglevel": NotedFlag(_NO_EXTENSION, "1"),
    "--controlnet-tracemalloc": NotedFlag(_NO_EXTENSION),
    "--ad-no-huggingface": NotedFlag(_NO_EXTENSION),
}

REFUSED: dict[str, str] = {
    "--disable-safe-unpickle": "hiresd loads model files only with safetensors or "
                               "torch.load(weights_only=True) and will not load them unsafely; convert the "
                               "file to .safetensors instead",
    "--enable-insecure-extension-access": "hiresd does not install extensions over the network; copy an "
                                          "extension into --extensions-dir instead",
    "--allow-code": "hiresd does not run code sent in requests (A1111's 'Custom code' script)",
}


def dest(flag: str) -> str:
    return "a1111_" + flag.lstrip("-").replace("-", "_")


def add_to(ap: argparse.ArgumentParser) -> None:
    """Declare every NOTED and REFUSED flag on `ap` (hidden from --help, with A1111's arity)."""
    group = ap.add_argument_group("A1111 flags accepted with a note (see docs/operating.md 'Launch lines')")
    for flag, spec in NOTED.items():
        if spec.nargs is None:
            group.add_argument(flag, dest=dest(flag), action="store_true", help=argparse.SUPPRESS)
        elif spec.nargs == "append":
            group.add_argument(flag, dest=dest(flag), action="append", help=argparse.SUPPRESS)
        else:
            group.add_argument(flag, dest=dest(flag), nargs=None if spec.nargs == "1" else spec.nargs,
                               help=argparse.SUPPRESS)
    for flag in REFUSED:
        group.add_argument(flag, dest=dest(flag), action="store_true", help=argparse.SUPPRESS)


def given(args: argparse.Namespace, flag: str) -> bool:
    value = getattr(args, dest(flag), None)
    return value not in (None, False, [])


def notes(args: argparse.Namespace) -> list[str]:
    """One line per accepted-with-a-note flag that was given."""
    return [f"{flag}: {spec.note}" for flag, spec in NOTED.items() if given(args, flag)]


def refusals(args: argparse.Namespace) -> list[str]:
    """One line per refused flag that was given."""
    return [f"{flag} is refused: {reason}" for flag, reason in REFUSED.items() if given(args, flag)]


def strip(values: dict[str, object]) -> dict[str, object]:
    """The parsed values without the noted/refused flags' entries, plus A1111's names for the noted
    flags that were given (what /cmd-flags shows)."""
    out = {k: v for k, v in values.items() if not k.startswith("a1111_")}
    for k, v in values.items():
        if k.startswith("a1111_") and v not in (None, False, []):
            out[k[len("a1111_"):]] = v
    return out
