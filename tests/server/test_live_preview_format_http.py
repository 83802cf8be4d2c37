"""A1111's option `live_previews_image_format`: the format of the live preview POST /internal/progress
sends (modules/progress.py: `data:image/<format>;base64,...`)."""
from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import ServerConfig
from server.routes.internal import preview_data_url


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("preview-format")
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None)
    with TestClient(create_app(cfg)) as c:
        yield c


@pytest.mark.parametrize("fmt, pil", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_the_preview_data_url_has_the_option_s_format(fmt: str, pil: str) -> None:
    url = preview_data_url(Image.new("RGB", (16, 8), "red"), fmt)
    head, _, data = url.partition(",")
    assert head == f"data:image/{fmt};base64"
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == pil and image.size == (16, 8)


def test_the_option_takes_a1111_s_choices_only(client: TestClient) -> None:
    try:
        assert client.post("/sdapi/v1/options", json={"live_previews_image_format": "webp"}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["live_previews_image_format"] == "webp"
        r = client.post("/sdapi/v1/options", json={"live_previews_image_format": "gif"})
        assert r.status_code == 400 and "live_previews_image_format" in r.text
    finally:
        client.post("/sdapi/v1/options", json={"live_previews_image_format": "png"})


@pytest.fixture()
def running_with_preview(client: TestClient) -> Iterator[str]:
    """A running job (on the server's worker) whose state holds a live preview, held until the test ends:
    the state is given its preview as the sampler's step callback gives it (JobState.set_step)."""
    worker = client.app.state.services.worker
    started, release = threading.Event(), threading.Event()

    def job() -> None:
        state = worker.state  # the single slot's state: the running job's
        state.begin("txt2img", 1)
        state.set_job(0, sampling_steps=4)
        state.set_step(2, 4, preview=lambda: Image.new("RGB", (16, 8), "red"))
        started.set()
        release.wait(30)

    submitted = worker.submit("preview-test", job, task_id="with-preview")
    try:
        assert started.wait(30)
        yield "with-preview"
    finally:
        release.set()
        submitted.future.result(30)


@pytest.mark.parametrize("fmt, pil", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_internal_progress_sends_the_preview_in_the_option_s_format(
        client: TestClient, running_with_preview: str, fmt: str, pil: str) -> None:
    try:
        assert client.post("/sdapi/v1/options", json={"live_previews_image_format": fmt}).status_code == 200
        r = client.post("/internal/progress", json={"id_task": running_with_preview, "id_live_preview": -1})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["active"] is True and body["id_live_preview"] >= 0
        head, _, data = body["live_preview"].partition(",")
        assert head == f"data:image/{fmt};base64"
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.format == pil and image.size == (16, 8)
        # the client has that one: nothing new is sent
        again = client.post("/internal/progress", json={"id_task": running_with_preview,
                                                        "id_live_preview": body["id_live_preview"]}).json()
        assert again["live_preview"] is None
    finally:
        client.post("/sdapi/v1/options", json={"live_previews_image_format": "png"})
