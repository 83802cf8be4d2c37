"""Textual inversion as A1111 does it: an embedding whose vectors are a real word's token embeddings gives
the image of that word (prompt, negative prompt, emphasis, SDXL's two encoders), multi-vector embeddings
are never split across a 75-token chunk, files are read safely, wrong widths are skipped with a reason."""
from __future__ import annotations

import io
import pickle

import pytest
import torch

from pipeline.conditioning import CHUNK_TOKENS
from pipeline.networks.embeddings import EmbeddingFileError, read_embedding

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
