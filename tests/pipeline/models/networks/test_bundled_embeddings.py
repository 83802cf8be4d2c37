"""Embeddings bundled in LoRA files (`bundle_emb.<name>.string_to_param.<token>`, or `.clip_l` + `.clip_g`),
as A1111 v1.10 loads them: active while their LoRA is applied (prompt and negative prompt), gone with it,
a folder embedding of the same name wins, and `TI hashes` names the LoRA where a hash would be."""
from __future__ import annotations

import io

import pytest
import torch
from safetensors.torch import save_file

from pipeline.models.networks import encoder_widths
from pipeline.runtime.errors import InvalidRequest
from tests.fixtures.networks import make_network

WORD = "tabby kitten"


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _word_vectors(model, encoder: int, text: str) -> torch.Tensor:
    tok, enc = model.tokenizers[encoder], model.text_encoders[encoder]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return enc.get_input_embeddings().weight[ids].detach().clone()


def _bundle(net_env, which: str, lora: str, emb: str, text: str = WORD, seed: int = 0) -> None:
    """A kohya LoRA over the test sites with an embedding of `text`'s token vectors bundled in it."""
    model = net_env.model(which)
    tensors = dict(make_network(model, "lora", seed=seed).tensors)
    if which == "sdxl":
        tensors[f"bundle_emb.{emb}.clip_l"] = _word_vectors(model, 0, text)
        tensors[f"bundle_emb.{emb}.clip_g"] = _word_vectors(model, 1, text)
    else:
        tensors[f"bundle_emb.{emb}.string_to_param.*"] = _word_vectors(model, 0, text)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(net_env.lora_dir / f"{lora}.safetensors"))
    net_env.networks.loras.refresh()


@pytest.mark.parametrize("which", ["sd1", "sdxl"])
def test_a_bundled_embedding_works_while_its_lora_is_applied(net_env, which):
    _bundle(net_env, which, f"bund-{which}", f"bkitty-{which}", seed=3)
    plain = net_env.run(which, prompt=f"a photo of bkitty-{which}, outdoors").images[0]
    got = net_env.run(which, prompt=f"a photo of bkitty-{which}, outdoors <lora:bund-{which}:0.7>")
    want = net_env.run(which, prompt=f"a photo of {WORD}, outdoors <lora:bund-{which}:0.7>").images[0]
    assert _png(got.images[0]) == _png(want)
    assert f'TI hashes: "bkitty-{which}: bund-{which}"' in got.infotexts[0]
    if which == "sd1":  # A1111's option: the name's value left empty
        quiet = net_env.run(which, prompt=f"a photo of bkitty-{which}, outdoors <lora:bund-{which}:0.7>",
                            options={"lora_bundled_ti_to_infotext": False})
        assert f'TI hashes: "bkitty-{which}: "' in quiet.infotexts[0]
    # without its LoRA the name is plain text again: the same image as before the LoRA job
    after = net_env.run(which, prompt=f"a photo of bkitty-{which}, outdoors")
    assert _png(after.images[0]) == _png(plain)
    assert "TI hashes" not in after.infotexts[0]
    word = net_env.run(which, prompt=f"a photo of {WORD}, outdoors").images[0]
    assert _png(plain) != _png(word)


def test_a_bundled_embedding_works_in_the_negative_prompt(net_env):
    _bundle(net_env, "sd1", "bund-neg", "negbundle", seed=4)
    got = net_env.run(prompt="a cat <lora:bund-neg:1>", negative_prompt="ugly, (negbundle:1.2)").images[0]
    want = net_env.run(prompt="a cat <lora:bund-neg:1>", negative_prompt=f"ugly, ({WORD}:1.2)").images[0]
    assert _png(got) == _png(want)


def test_a_folder_embedding_of_the_same_name_wins_over_the_bundled_one(net_env):
    model = net_env.model("sd1")
    torch.save({"string_to_param": {"*": _word_vectors(model, 0, "a red house")}},
               net_env.emb_dir / "twinname.pt")
    net_env.networks.embeddings.refresh()
    _bundle(net_env, "sd1", "bund-twin", "twinname", seed=5)
    try:
        got = net_env.run(prompt="twinname <lora:bund-twin:1>")
        want = net_env.run(prompt="a red house <lora:bund-twin:1>").images[0]
        assert _png(got.images[0]) == _png(want)
        assert 'TI hashes: "twinname: ' in got.infotexts[0] and "twinname: bund-twin" not in got.infotexts[0]
    finally:
        (net_env.emb_dir / "twinname.pt").unlink()
        net_env.networks.embeddings.refresh()


def test_a_bundled_embedding_of_no_known_structure_is_an_error_naming_it(net_env):
    model = net_env.model("sd1")
    tensors = dict(make_network(model, "lora", seed=6).tensors)
    tensors["bundle_emb.twovec.first"] = torch.zeros(1, 32)
    tensors["bundle_emb.twovec.second"] = torch.zeros(1, 32)
    save_file(tensors, str(net_env.lora_dir / "bund-bad.safetensors"))
    net_env.networks.loras.refresh()
    with pytest.raises(InvalidRequest, match="bundled embedding 'twovec'"):
        net_env.run(prompt="a cat <lora:bund-bad:1>")



def test_get_embeddings_lists_a_bundled_embedding_while_its_lora_is_applied(net_env):
    model = net_env.model("sd1")
    widths = encoder_widths(model)
    _bundle(net_env, "sd1", "bund-list", "listedbundle", seed=7)
    assert "listedbundle" not in net_env.networks.embeddings_api(widths)["loaded"]
    net_env.run(prompt="a cat <lora:bund-list:1>")
    vectors = _word_vectors(model, 0, WORD)
    assert net_env.networks.embeddings_api(widths)["loaded"]["listedbundle"] == {
        "step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
        "shape": int(vectors.shape[1]), "vectors": int(vectors.shape[0])}
    net_env.run(prompt="a cat")
    assert "listedbundle" not in net_env.networks.embeddings_api(widths)["loaded"]
