"""A1111 launch lines: every common flag parses with A1111's arity, the honoured ones change the config
(and the folders the server reads), the others are noted once, the unsafe ones are refused."""
from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient

from server import a1111_flags
from server.app import create_app
from server.config import from_args
from tests.fixtures.alwayson import BUILTIN_ALWAYSON

# a webui-user.sh line as users write it, with flags of every kind (values, repeats, quoting)
TYPICAL = ("--xformers --medvram --no-half-vae --api --listen --port 7861 --theme dark --autolaunch "
           "--enable-console-prompts --opt-sdp-attention --opt-split-attention --precision full --no-half "
           "--api-auth 'alice:pa ss' --cors-allow-origins http://ui.example --skip-torch-cuda-test "
           "--gradio-allowed-path /a --gradio-allowed-path /b --sub-quad-q-chunk-size 512 "
           "--device-id 1 --lora-dir '/my models/Lora' --embeddings-dir /emb --hypernetwork-dir /hn")


def test_typical_launch_line_from_commandline_args() -> None:
    cfg = from_args([], environ={"COMMANDLINE_ARGS": TYPICAL})
    assert cfg.host == "0.0.0.0" and cfg.port == 7861
    assert cfg.precision == "fp32" and cfg.vae_precision == "fp32"
    assert cfg.api_auth == [("alice", "pa ss")] and cfg.cors_allow_origins == ["http://ui.example"]
    assert cfg.device == "cuda:1"
    assert cfg.lora_folder() == Path("/my models/Lora") and cfg.embeddings_folder() == Path("/emb")
    noted = [n.split(":", 1)[0] for n in cfg.launch_notes]
    assert noted == ["--xformers", "--opt-split-attention", "--sub-quad-q-chunk-size",
                     "--hypernetwork-dir", "--enable-console-prompts", "--autolaunch", "--theme",
                     "--gradio-allowed-path", "--skip-torch-cuda-test"]
    assert "PyTorch's scaled-dot-product attention" in cfg.launch_notes[0]
    assert cfg.memory_mode == "medvram"  # honoured (pipeline/accel/memory.py)
    flags = cfg.cmd_flags()
    assert flags["xformers"] is True and flags["medvram"] is True and flags["theme"] == "dark"
    assert flags["gradio_allowed_path"] == ["/a", "/b"] and flags["sub_quad_q_chunk_size"] == "512"
    assert flags["api_auth"] == "alice:***" and flags["no_half"] is True and flags["listen"] is True
    assert "a1111_xformers" not in flags


def test_commandline_args_come_after_the_real_arguments_as_in_a1111() -> None:
    cfg = from_args(["--port", "8000", "--precision", "fp16"], environ={"COMMANDLINE_ARGS": "--port 9000"})
    assert cfg.port == 9000 and cfg.precision == "fp16"
    cfg = from_args(["--server-name", "127.0.0.1"], environ={"COMMANDLINE_ARGS": "--listen"})
    assert cfg.host == "127.0.0.1"


def test_unknown_flags_are_an_error_unless_ignore_cmd_args_errors_is_set(capsys) -> None:
    with pytest.raises(SystemExit):
        from_args(["--no-such-flag"], environ={})
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    cfg = from_args(["--port", "7001", "--no-such-flag"], environ={"IGNORE_CMD_ARGS_ERRORS": "1"})
    assert cfg.port == 7001 and cfg.launch_notes == [
        "IGNORE_CMD_ARGS_ERRORS is set: ignoring unknown arguments --no-such-flag"]


@pytest.mark.parametrize("line, device, precision", [
    ("--use-cpu all", "cpu", "auto"), ("--use-cpu sd interrogate", "cpu", "auto"),
    ("--precision half", "auto", "fp16"), ("--precision autocast", "auto", "auto"),
])
def test_device_and_precision_flags(line: str, device: str, precision: str) -> None:
    cfg = from_args(line.split(), environ={})
    assert (cfg.device, cfg.precision) == (device, precision)


def test_use_cpu_for_one_module_is_noted() -> None:
    cfg = from_args(["--use-cpu", "interrogate", "gfpgan"], environ={})
    assert cfg.device == "auto"
    assert [n for n in cfg.launch_notes if n.startswith("--use-cpu gfpgan interrogate: ")]


@pytest.mark.parametrize("flag", sorted(a1111_flags.REFUSED))
def test_unsafe_flags_are_refused_with_a_reason(flag: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        from_args(["--api", "--listen"], environ={"COMMANDLINE_ARGS": f"--xformers {flag}"})
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag} is refused: " in err and a1111_flags.REFUSED[flag] in err


def test_every_noted_flag_parses_with_its_arity() -> None:
    argv: list[str] = []
    for flag, spec in a1111_flags.NOTED.items():
        argv += [flag] if spec.nargs is None else [flag, "v"]
    cfg = from_args(argv + ["--port", "7000"], environ={})
    assert cfg.port == 7000 and len(cfg.launch_notes) == len(a1111_flags.NOTED)


def _compact_x4(path: Path) -> None:
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(5)
    path.parent.mkdir(parents=True)
    model = Compact(num_feat=8, num_conv=2, upscale=4)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def test_folder_flags_move_where_files_are_found(tmp_path: Path) -> None:
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "elsewhere.safetensors").write_bytes(b"listed, never loaded")
    (tmp_path / "vaes").mkdir()
    (tmp_path / "vaes" / "other.safetensors").write_bytes(b"listed, never loaded")
    (tmp_path / "fixed.vae.safetensors").write_bytes(b"listed, never loaded")
    _compact_x4(tmp_path / "upscalers" / "Compact-moved.safetensors")
    line = (f"--ckpt-dir {tmp_path / 'ckpts'} --vae-dir {tmp_path / 'vaes'} "
            f"--vae-path {tmp_path / 'fixed.vae.safetensors'} --realesrgan-models-path {tmp_path / 'upscalers'} --disable-all-extensions --no-builtin-model")
    cfg = from_args(["--models-dir", str(tmp_path / "models"), "--data-dir", str(tmp_path / "data"),
                     "--outputs-dir", str(tmp_path / "out")], environ={"COMMANDLINE_ARGS": line})
    with TestClient(create_app(cfg)) as client:
        api = "/sdapi/v1"
        assert [m["model_name"] for m in client.get(f"{api}/sd-models").json()] == ["elsewhere"]
        assert {v["model_name"] for v in client.get(f"{api}/sd-vae").json()} == {"other.safetensors",
                                                                               "fixed.vae.safetensors"}
        assert "Compact-moved" in [u["name"] for u in client.get(f"{api}/upscalers").json()]
        assert client.get(f"{api}/scripts").json()["txt2img"] == BUILTIN_ALWAYSON  # built in
        opts = client.get(f"{api}/options").json()
        assert opts["sd_vae"] == "fixed.vae.safetensors"
        r = client.post(f"{api}/options", json={"sd_vae": "other.safetensors"})
        assert r.status_code == 400 and "--vae-path" in r.json()["detail"]
        assert client.post(f"{api}/options", json=opts | {"jpeg_quality": 70}).status_code == 200
        flags = client.get(f"{api}/cmd-flags").json()
        assert flags["realesrgan_models_path"] == str(tmp_path / "upscalers")
        assert flags["ckpt_dir"] == str(tmp_path / "ckpts")
