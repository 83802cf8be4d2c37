"""Per-request work limits (in-process app): over a limit is a 400 naming the field, the limit and the flag
that raises it, answered before anything is queued; at the limit the job runs."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ServerConfig, from_args

SMALL = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "seed": 3}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("limits")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, max_steps=6, max_n_iter=3, max_batch_size=2)
    with TestClient(create_app(cfg)) as c:
        yield c


@pytest.mark.parametrize("fields, field, flag", [
    ({"steps": 7}, "steps", "--max-steps"),
    ({"enable_hr": True, "hr_second_pass_steps": 7}, "hr_second_pass_steps", "--max-steps"),
    ({"enable_hr": True, "steps": 7, "hr_second_pass_steps": 2}, "steps", "--max-steps"),
    ({"n_iter": 4}, "n_iter", "--max-n-iter"),
    ({"batch_size": 3}, "batch_size", "--max-batch-size"),
])
def test_over_a_limit_is_a_400_naming_it(client: TestClient, fields: dict, field: str, flag: str) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "TooMuchWork" and body["detail"].startswith(f"{field}: ")
    assert "limit of " in body["detail"] and flag in body["detail"]
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_hires_steps_default_to_steps_and_count_against_the_limit(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 7, "enable_hr": True})
    assert r.status_code == 400 and "steps: 7 is over" in r.json()["detail"]


def test_at_the_limits_the_job_runs(client: TestClient) -> None:
    body = {**SMALL, "steps": 6, "n_iter": 3, "batch_size": 2, "enable_hr": True, "hr_scale": 1.5,
            "hr_second_pass_steps": 6, "denoising_strength": 0.5}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 6


def test_flags_and_defaults() -> None:
    cfg = from_args([], environ={})
    assert (cfg.max_steps, cfg.max_n_iter, cfg.max_batch_size, cfg.max_body_mb) == (150, 100, 8, 200)
    cfg = from_args(["--max-steps", "300", "--max-n-iter", "5", "--max-batch-size", "16", "--max-body-mb", "20"],
                    environ={})
    assert (cfg.max_steps, cfg.max_n_iter, cfg.max_batch_size, cfg.max_body_mb) == (300, 5, 16, 20)
    assert cfg.cmd_flags()["max_steps"] == 300
    with pytest.raises(SystemExit):
        from_args(["--max-steps", "0"], environ={})
