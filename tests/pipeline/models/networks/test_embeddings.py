"""Textual inversion as A1111 does it: an embedding whose vectors are a real word's token embeddings gives
the image of that word (prompt, negative prompt, emphasis, SDXL's two encoders), multi-vector embeddings
are never split across a 75-token chunk, files are read safely, wrong widths are skipped with a reason."""
from __future__ import annotations

import base64
import io
import json
import pickle
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipeline.diffusion.conditioning import CHUNK_TOKENS
from pipeline.models.networks.embeddings import EmbeddingFileError, read_embedding

WORD = "tabby kitten"


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _word_vectors(model, encoder: int, text: str = WORD) -> torch.Tensor:
    tok, enc = model.tokenizers[encoder], model.text_encoders[encoder]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return enc.get_input_embeddings().weight[ids].detach().clone()


def _save_word_embedding(net_env, which: str, name: str, text: str = WORD) -> None:
    model = net_env.model(which)
    if which == "sdxl":
        data = {"clip_l": _word_vectors(model, 0, text), "clip_g": _word_vectors(model, 1, text)}
        from safetensors.torch import save_file

        save_file(data, str(net_env.emb_dir / f"{name}.safetensors"))
    else:
        torch.save({"string_to_param": {"*": _word_vectors(model, 0, text)}, "name": name, "step": 500,
                    "sd_checkpoint": "abc123", "sd_checkpoint_name": "tiny"}, net_env.emb_dir / f"{name}.pt")
    net_env.networks.embeddings.refresh()


@pytest.mark.parametrize("which", ["sd1", "sdxl"])
def test_an_embedding_of_a_words_vectors_gives_that_words_image(net_env, which):
    _save_word_embedding(net_env, which, f"kitty-{which}")
    got = net_env.run(which, prompt=f"a photo of Kitty-{which}, outdoors").images[0]
    want = net_env.run(which, prompt=f"a photo of {WORD}, outdoors").images[0]
    other = net_env.run(which, prompt="a photo of a house, outdoors").images[0]
    assert _png(got) == _png(want) and _png(got) != _png(other)


def test_embeddings_work_in_negative_prompts_and_with_emphasis(net_env):
    _save_word_embedding(net_env, "sd1", "negkitty")
    got = net_env.run(prompt="(a cat:1.1)", negative_prompt="ugly, (negkitty:1.3)").images[0]
    want = net_env.run(prompt="(a cat:1.1)", negative_prompt=f"ugly, ({WORD}:1.3)").images[0]
    assert _png(got) == _png(want)


def test_hires_prompt_embeddings(net_env):
    _save_word_embedding(net_env, "sd1", "hrkitty")
    hires = {"enable_hr": True, "hr_scale": 1.5}
    got = net_env.run(prompt="a cat", hr_prompt="a hrkitty", **hires)
    want = net_env.run(prompt="a cat", hr_prompt=f"a {WORD}", **hires)
    assert _png(got.images[0]) == _png(want.images[0])
    assert "TI hashes" in got.infotexts[0] and "hrkitty: " in got.infotexts[0]


def test_a_multi_vector_embedding_is_never_split_across_chunks(net_env):
    _save_word_embedding(net_env, "sd1", "edgekitty", text="tabby kitten sitting")
    model = net_env.model("sd1")
    net_env.run(prompt="warm up")  # the model's matcher is set for its encoder
    encoder = model.extra["prompt_encoder"]
    filler = " ".join(["cat"] * (CHUNK_TOKENS - 2))  # 73 tokens: 2 positions left in chunk one
    enc = encoder.encoders[0]
    chunks = encoder._chunks(enc, f"{filler} edgekitty")
    assert len(chunks) == 2
    assert chunks[0].tokens[1 + CHUNK_TOKENS - 2:] == [enc.eos_id] * 3  # padded, not split
    assert [o for o, _ in chunks[1].fixes] == [0] and chunks[1].fixes[0][1].shape[0] == 3
    got = net_env.run(prompt=f"{filler} edgekitty").images[0]
    want = net_env.run(prompt=f"{filler} BREAK tabby kitten sitting").images[0]
    assert _png(got) == _png(want)


def test_the_comma_backtrack_moves_an_embeddings_placeholders_but_not_its_vectors_as_a1111(net_env):
    """A1111 v1.10 moves the words after the last comma into the next chunk when a chunk overflows; the
    embedding fixes recorded before stay at their offsets in the first chunk (over its padding) and the
    moved placeholders are token id 0 in the second."""
    _save_word_embedding(net_env, "sd1", "backkitty")  # 2 vectors
    model = net_env.model("sd1")
    net_env.run(prompt="warm up")
    encoder = model.extra["prompt_encoder"]
    enc = encoder.encoders[0]
    dog = enc.tokenizer("dog", add_special_tokens=False)["input_ids"]
    filler = " ".join(["cat"] * 70)  # 70 tokens, a comma at 70, the embedding at 71-72, dogs to 75 and over
    chunks = encoder._chunks(enc, f"{filler}, backkitty dog dog dog")
    assert len(chunks) == 2
    assert chunks[0].tokens[72:] == [enc.eos_id] * 5  # 70 cats and the comma after BOS, then padding
    assert [(o, v.shape[0]) for o, v in chunks[0].fixes] == [(71, 2)]  # the vectors stayed
    assert chunks[1].tokens[1:6] == [0, 0] + dog * 3 and chunks[1].fixes == []
    # chunk one is the text up to the comma, with the vectors written over its padding (positions 72-73)
    cond = encoder.encode([f"{filler}, backkitty dog dog dog"]).context[0, :77]
    alone = encoder.encode([f"{filler},"]).context[0]
    assert torch.allclose(cond[:72], alone[:72], atol=1e-5)  # CLIP is causal: the positions before agree
    assert (cond[72:74] - alone[72:74]).abs().max() > 1e-2


def test_formats_and_a_wrong_width_is_skipped_with_its_reason(net_env, tmp_path):
    from safetensors.torch import save_file

    model = net_env.model("sd1")
    width = model.text_encoders[0].get_input_embeddings().weight.shape[1]
    torch.save({"<my-token>": torch.randn(width)}, net_env.emb_dir / "diffusers-style.bin")
    save_file({"emb_params": torch.randn(2, width)}, str(net_env.emb_dir / "kohya-style.safetensors"))
    save_file({"emb_params": torch.randn(2, width + 3)}, str(net_env.emb_dir / "too-wide.safetensors"))
    net_env.networks.embeddings.refresh()
    net_env.run(prompt="warm up")
    listing = net_env.networks.embeddings_api(net_env.networks.last_widths)
    assert listing["loaded"]["diffusers-style"]["vectors"] == 1
    assert listing["loaded"]["kohya-style"] == {"step": None, "sd_checkpoint": None,
                                                "sd_checkpoint_name": None, "shape": width, "vectors": 2}
    assert "does not fit" in listing["skipped"]["too-wide"]["reason"]
    for name in ("diffusers-style.bin", "kohya-style.safetensors", "too-wide.safetensors"):
        (net_env.emb_dir / name).unlink()
    net_env.networks.embeddings.refresh()


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"string_to_param": {"*": _Payload()}}, f)
    with pytest.raises(EmbeddingFileError, match="not plain data"):
        read_embedding(path)
    good = tmp_path / "pd.pt"
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.ones(2, 8))})}, good)
    assert read_embedding(good).vectors[0].shape == (2, 8)


# -- embeddings stored in images (A1111's `.png` embeddings) ------------------------------------------------

def _tensor_json(data: dict) -> str:
    return json.dumps({k: ({t: {"TORCHTENSOR": v.tolist()} for t, v in val.items()} if isinstance(val, dict)
                           else val) for k, val in data.items()})


def _mask_stream(n: int) -> np.ndarray:
    """The writer's mask: x <- 1664525 x + 1013904223 (mod 2^32) from 0, (x mod 255) & 15."""
    out, x = [], 0
    for _ in range(n):
        x = (1664525 * x + 1013904223) & 0xFFFFFFFF
        out.append((x % 255) & 0x0F)
    return np.array(out, dtype=np.uint8)


def _hide_in_pixels(data: dict, picture: np.ndarray) -> Image.Image:
    """A1111's layout: [low-nibble panel | black column | picture | black column | high-nibble panel], each
    panel's nibbles XORed with the mask stream, lit by a high nibble of their own."""
    raw = np.frombuffer(zlib.compress(_tensor_json(data).encode(), 9), dtype=np.uint8)
    h = picture.shape[0]
    size = -(-raw.size // (h * 3)) * (h * 3)
    mask = _mask_stream(size).reshape(h, -1, 3)
    low = np.resize(raw & 0x0F, size).reshape(h, -1, 3) ^ mask | 0x30
    high = np.resize(raw >> 4, size).reshape(h, -1, 3) ^ mask | 0x50
    black = np.zeros((h, 1, 3), dtype=np.uint8)
    return Image.fromarray(np.concatenate([low, black, picture, black, high], axis=1).astype(np.uint8))


def test_image_embeddings_in_a_text_chunk_and_in_the_pixels_are_read_as_a1111_writes_them(net_env):
    model = net_env.model("sd1")
    vectors = _word_vectors(model, 0, WORD)
    data = {"string_to_param": {"*": vectors}, "name": "pngkitty", "step": 700}
    info = PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(_tensor_json(data).encode()).decode())
    Image.new("RGB", (32, 32), (200, 100, 50)).save(net_env.emb_dir / "card.png", pnginfo=info)
    g = np.random.default_rng(3)
    picture = (g.integers(1, 16, (24, 20, 3)) * 16 + g.integers(1, 16, (24, 20, 3))).astype(np.uint8)
    hidden = _hide_in_pixels({**data, "name": "stegokitty"}, picture)
    hidden.save(net_env.emb_dir / "stego.png")
    hidden.save(net_env.emb_dir / "stego.preview.png")  # a preview: never read as an embedding
    Image.fromarray(picture).save(net_env.emb_dir / "just-a-picture.webp", lossless=True)
    net_env.networks.embeddings.refresh()
    try:
        everything = net_env.networks.embeddings.all()
        assert set(everything) >= {"pngkitty", "stegokitty"} and "card" not in everything
        assert not {"stego", "just-a-picture"} & set(everything)
        assert not net_env.networks.embeddings.errors
        for name in ("pngkitty", "stegokitty"):
            assert torch.equal(everything[name].vectors[0], vectors) and everything[name].step == 700
        got = net_env.run(prompt="a photo of pngkitty, outdoors").images[0]
        want = net_env.run(prompt=f"a photo of {WORD}, outdoors").images[0]
        assert _png(got) == _png(want)
        assert _png(net_env.run(prompt="a photo of stegokitty, outdoors").images[0]) == _png(want)
    finally:
        for name in ("card.png", "stego.png", "stego.preview.png", "just-a-picture.webp"):
            (net_env.emb_dir / name).unlink()
        net_env.networks.embeddings.refresh()


def test_a_broken_image_embedding_is_skipped_with_its_reason(net_env):
    info = PngInfo()
    info.add_text("sd-ti-embedding", "not base64 json")
    Image.new("RGB", (8, 8)).save(net_env.emb_dir / "broken.png", pnginfo=info)
    net_env.networks.embeddings.refresh()
    try:
        errors = net_env.networks.embeddings.errors
        assert any(path.endswith("broken.png") and "unreadable image embedding" in why
                   for path, why in errors.items())
    finally:
        (net_env.emb_dir / "broken.png").unlink()
        net_env.networks.embeddings.refresh()
