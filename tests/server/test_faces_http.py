"""Face restoration over HTTP with a GFPGAN model file in <models>/GFPGAN: /face-restorers lists it,
extras' gfpgan_visibility and txt2img's restore_faces use it (the network itself is replaced by a cheap
stand-in; tests/upscalers/test_faces.py runs the real one), and what is missing stays a clear 400."""
from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as skdata
from spandrel.architectures.GFPGAN import GFPGAN

from server.app import create_app
from server.config import ServerConfig
from upscalers.faces import FaceRestorers, restore_faces

SMALL = {"prompt": "a face", "steps": 2, "width": 64, "height": 64, "seed": 1234}


def invert(x: torch.Tensor, weight: float) -> torch.Tensor:
    return -x


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("faces")
    (root / "models" / "GFPGAN").mkdir(parents=True)
    torch.manual_seed(0)
    net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                 fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in net.state_dict().items()},
                                str(root / "models" / "GFPGAN" / "GFPGANv1.4.safetensors"))
    del net
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "out",
                       extensions_dir=None, max_pixels=1024 * 1024)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FaceRestorers, "net", lambda self, restorer: invert)
        with TestClient(create_app(cfg)) as c:
            yield c


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_face_restorers_lists_the_gfpgan_file(client: TestClient) -> None:
    items = client.get("/sdapi/v1/face-restorers").json()
    assert [i["name"] for i in items] == ["GFPGAN"]
    assert items[0]["cmd_dir"].endswith("GFPGAN")


def test_extras_restore_the_face_and_say_so(client: TestClient) -> None:
    face = Image.fromarray(skdata.astronaut())
    r = client.post("/sdapi/v1/extra-single-image", json={
        "image": png_b64(face), "upscaler_1": "None", "gfpgan_visibility": 0.5, "codeformer_visibility": 0,
        "codeformer_weight": 0})
    assert r.status_code == 200, r.text
    out = decode(r.json()["image"])
    assert out.info["postprocessing"] == "GFPGAN visibility: 0.5"
    assert r.json()["html_info"] == "<p>GFPGAN visibility: 0.5</p>"
    assert np.array_equal(np.asarray(out), np.asarray(restore_faces(face, invert, 0.5)))


def test_extras_batch_with_upscale_then_faces(client: TestClient) -> None:
    face = Image.fromarray(skdata.astronaut()).resize((200, 200), Image.Resampling.LANCZOS)
    r = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": png_b64(face), "name": "a.png"}], "upscaler_1": "Lanczos", "upscaling_resize": 2,
        "gfpgan_visibility": 1})
    assert r.status_code == 200, r.text
    [b64] = r.json()["images"]
    out = decode(b64)
    assert out.size == (400, 400)
    assert out.info["postprocessing"] == ("Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos, "
                                          "GFPGAN visibility: 1.0")  # a float, as A1111 writes it


def test_extras_codeformer_without_a_file_is_400(client: TestClient) -> None:
    r = client.post("/sdapi/v1/extra-single-image", json={
        "image": png_b64(Image.new("RGB", (32, 32))), "codeformer_visibility": 1})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "codeformer_visibility" in detail and "<models>/Codeformer" in detail


def test_txt2img_restore_faces_uses_the_restorer(client: TestClient, monkeypatch) -> None:
    calls: list[tuple[str, float, float]] = []
    real = FaceRestorers.restore

    def spy(self, image, restorer, visibility=1.0, codeformer_weight=0.5, should_stop=None, unload=False):
        calls.append((restorer.name, visibility, codeformer_weight))
        return real(self, image, restorer, visibility, codeformer_weight, should_stop, unload=unload)

    monkeypatch.setattr(FaceRestorers, "restore", spy)
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "restore_faces": True, "batch_size": 2})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert calls == [("GFPGAN", 1.0, 0.5)] * 2
    assert info["restore_faces"] is True and info["face_restoration_model"] == "GFPGAN"
    for text in info["infotexts"]:
        assert "Seed: 1234, Face restoration: GFPGAN, Size: 64x64" in text or \
            "Seed: 1235, Face restoration: GFPGAN, Size: 64x64" in text
    # the option picks the restorer (an unavailable one falls back to what there is) and sets the weight
    calls.clear()
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {
        "face_restoration": True, "face_restoration_model": "CodeFormer", "code_former_weight": 0.8}})
    assert r.status_code == 200, r.text
    assert calls == [("GFPGAN", 1.0, 0.8)]
    assert "Face restoration: GFPGAN" in json.loads(r.json()["info"])["infotexts"][0]
    # off: no key, nothing run
    calls.clear()
    info = json.loads(client.post("/sdapi/v1/txt2img", json=SMALL).json()["info"])
    assert calls == [] and "Face restoration" not in info["infotexts"][0]
    assert info["restore_faces"] is False and info["face_restoration_model"] is None


def test_save_images_before_face_restoration_saves_the_unrestored_images_too(client: TestClient,
                                                                             monkeypatch) -> None:
    """A1111's option: with save_images, each image is also saved as it was before restore_faces
    (`-before-face-restoration`, the same infotext); off (A1111's default) only the restored one. (The
    generated 64x64 pictures hold no face to find: the restorer is a stand-in that inverts.)"""
    from PIL import ImageOps

    monkeypatch.setattr(FaceRestorers, "restore", lambda self, image, *a, **k: ImageOps.invert(image))
    out = client.app.state.services.config.outputs_dir

    def files() -> set:
        return set(out.rglob("*.png")) if out.exists() else set()

    body = {**SMALL, "restore_faces": True, "save_images": True, "batch_size": 2,
            "override_settings": {"grid_save": False, "save_images_before_face_restoration": True}}
    before = files()
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    new = sorted(files() - before)
    raw = [f for f in new if f.stem.endswith("-before-face-restoration")]
    final = [f for f in new if f not in raw]
    assert len(raw) == 2 and len(final) == 2, new
    for seed in (1234, 1235):
        (unrestored,) = [f for f in raw if f.stem.endswith(f"-{seed}-before-face-restoration")]
        (restored,) = [f for f in final if f.stem.endswith(f"-{seed}")]
        a, b = np.asarray(Image.open(unrestored)), np.asarray(Image.open(restored))
        assert np.array_equal(255 - a, b)
        assert Image.open(unrestored).info["parameters"] == Image.open(restored).info["parameters"]
    before = files()
    body["override_settings"]["save_images_before_face_restoration"] = False
    assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
    assert len(files() - before) == 2


def test_extras_follow_postprocessing_operation_order_and_disable(client: TestClient) -> None:
    """A1111's extras run its postprocessing scripts in `scripts_in_preferred_order`: those named in
    `postprocessing_operation_order` first, without those of `postprocessing_disable_in_extras`. Restoring
    the face before the upscale gives other pixels (and the infotext in that order); a disabled GFPGAN is
    not run at all."""
    face = Image.fromarray(skdata.astronaut()).resize((200, 200), Image.Resampling.LANCZOS)
    body = {"image": png_b64(face), "upscaler_1": "Lanczos", "upscaling_resize": 2, "gfpgan_visibility": 1}

    def run(**opts: object) -> Image.Image:
        assert client.post("/sdapi/v1/options", json=opts).status_code == 200
        r = client.post("/sdapi/v1/extra-single-image", json=body)
        assert r.status_code == 200, r.text
        return decode(r.json()["image"])

    lanczos = face.resize((400, 400), Image.Resampling.LANCZOS)
    try:
        default = run(postprocessing_operation_order=[], postprocessing_disable_in_extras=[])
        assert np.array_equal(np.asarray(default), np.asarray(restore_faces(lanczos, invert, 1.0)))
        faces_first = run(postprocessing_operation_order=["GFPGAN", "Upscale"])
        assert faces_first.info["postprocessing"] == ("GFPGAN visibility: 1.0, Postprocess upscale by: 2.0, "
                                                      "Postprocess upscaler: Lanczos")
        expected = restore_faces(face, invert, 1.0).resize((400, 400), Image.Resampling.LANCZOS)
        assert np.array_equal(np.asarray(faces_first), np.asarray(expected))
        assert not np.array_equal(np.asarray(faces_first), np.asarray(default))
        disabled = run(postprocessing_operation_order=[], postprocessing_disable_in_extras=["GFPGAN"])
        assert disabled.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
        assert np.array_equal(np.asarray(disabled), np.asarray(lanczos))
        # a disabled restorer is not needed: CodeFormer (no file here) asked for is no 400 then
        body["codeformer_visibility"] = 1
        assert client.post("/sdapi/v1/options", json={
            "postprocessing_disable_in_extras": ["GFPGAN", "CodeFormer"]}).status_code == 200
        assert client.post("/sdapi/v1/extra-single-image", json=body).status_code == 200
        r = client.post("/sdapi/v1/options", json={"postprocessing_operation_order": "GFPGAN"})
        assert r.status_code == 400 and "postprocessing_operation_order" in r.text
    finally:
        client.post("/sdapi/v1/options", json={"postprocessing_operation_order": [],
                                               "postprocessing_disable_in_extras": []})
