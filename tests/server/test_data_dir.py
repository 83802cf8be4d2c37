"""`--data-dir` as A1111's: the root of models/, outputs/, extensions/ and embeddings/ and of the config files,
unless a more specific flag is given (launch line parsed by the real parser, in-process app)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from server.app import create_app
from server.config import from_args

SMALL = {"prompt": "a red fox", "steps": 2, "width": 64, "height": 64, "seed": 5}


def _a1111_install(root: Path) -> Path:
    """The folders of an A1111 install: a checkpoint, a LoRA-free models tree, an extension, an embedding
    beside models/ (where A1111 keeps them) and a styles.csv."""
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    (root / "models" / "Stable-diffusion" / "x.safetensors").write_bytes(b"listed, never loaded")
    (root / "extensions").mkdir()
    (root / "extensions" / "hello.py").write_text('NAME = "hello ext"\n\ndef before_hr(p):\n    pass\n')
    (root / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(2, 32)}, str(root / "embeddings" / "rootemb.safetensors"))
    (root / "styles.csv").write_text("name,prompt,negative_prompt\nfoxy,{prompt} in a forest,\n")
    return root


def test_data_dir_is_the_root_of_models_outputs_extensions_and_config(tmp_path: Path) -> None:
    root = _a1111_install(tmp_path / "webui")
    cfg = from_args(["--data-dir", str(root), "--port", "7861"], environ={})
    assert (cfg.models_dir, cfg.outputs_dir, cfg.extensions_dir) == (root / "models", root / "outputs",
                                                                     root / "extensions")
    with TestClient(create_app(cfg)) as client:
        api = "/sdapi/v1"
        assert "x" in [m["model_name"] for m in client.get(f"{api}/sd-models").json()]
        assert "hello ext" in client.get(f"{api}/scripts").json()["txt2img"]
        embeddings = client.get(f"{api}/embeddings").json()
        assert "rootemb" in {**embeddings["loaded"], **embeddings["skipped"]}
        assert "foxy" in [s["name"] for s in client.get(f"{api}/prompt-styles").json()]
        overrides = {"sd_model_checkpoint": "hiresd-builtin-tiny"}
        r = client.post(f"{api}/txt2img", json={**SMALL, "save_images": True, "override_settings": overrides})
        assert r.status_code == 200, r.text
        assert client.post(f"{api}/options", json={"jpeg_quality": 71}).status_code == 200
        flags = client.get(f"{api}/cmd-flags").json()
    assert list((root / "outputs" / "txt2img-images").rglob("*.png"))
    assert json.loads((root / "options.json").read_text())["jpeg_quality"] == 71
    assert flags["models_dir"] == str(root / "models") and flags["data_dir"] == str(root)


def test_a_more_specific_flag_wins(tmp_path: Path) -> None:
    root = _a1111_install(tmp_path / "webui")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "Stable-diffusion").mkdir(parents=True)
    (elsewhere / "Stable-diffusion" / "y.safetensors").write_bytes(b"listed, never loaded")
    cfg = from_args(["--data-dir", str(root), "--models-dir", str(elsewhere), "--outputs-dir",
                     str(tmp_path / "out"), "--embeddings-dir", str(tmp_path / "emb")], environ={})
    assert (cfg.models_dir, cfg.outputs_dir, cfg.extensions_dir) == (elsewhere, tmp_path / "out",
                                                                     root / "extensions")
    assert cfg.embeddings_folder() == tmp_path / "emb"
    with TestClient(create_app(cfg)) as client:
        names = [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()]
    assert "y" in names and "x" not in names


def test_without_data_dir_the_folders_stay_where_they_were() -> None:
    cfg = from_args([], environ={})
    assert (cfg.data_dir, cfg.models_dir, cfg.outputs_dir, cfg.extensions_dir) == (
        Path("data"), Path("models"), Path("outputs"), Path("extensions"))
    assert cfg.embeddings_folder() == Path("models") / "embeddings"
