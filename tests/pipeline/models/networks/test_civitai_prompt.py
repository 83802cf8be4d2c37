"""Issue 9's 'done when', as a user meets it: a prompt copied from Civitai with two LoRAs and an embedding
(plus an embedding in the negative prompt), through hires fix, gives the image of the merged-weights
reference with the embeddings' words; the next job without tags is untouched by it."""
from __future__ import annotations

from tests.pipeline.models.networks.test_embeddings import WORD, _png, _save_word_embedding
from tests.pipeline.models.networks.test_lora import _close, _reference, _write

HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6,
         "hr_second_pass_steps": 2}


def test_two_loras_and_an_embedding_across_hires_fix_match_the_merged_reference(net_env):
    model = net_env.model("sd1")
    detail = _write(net_env, model, "lora", "add_detail", seed=41)
    style = _write(net_env, model, "lokr", "film-style", seed=42)
    _save_word_embedding(net_env, "sd1", "civkitty")
    _save_word_embedding(net_env, "sd1", "badcat", text="blurry")
    before = net_env.run(prompt="a cat", **HIRES).images[0]

    got = net_env.run(prompt="masterpiece, civkitty on a sofa, <lora:add_detail:0.6> <lora:film-style:0.8>",
                      negative_prompt="badcat, lowres", **HIRES)
    want = _reference(net_env, [detail, style], mults=[(0.6, 0.6), (0.8, 0.8)],
                      prompt=f"masterpiece, {WORD} on a sofa, ", negative_prompt="blurry, lowres", **HIRES)
    _close(got.images[0], want)
    info = got.infotexts[0]
    assert "<lora:add_detail:0.6>" in info.splitlines()[0]  # the prompt line keeps the tags as sent
    assert "Lora hashes" in info and "add_detail: " in info and "film-style: " in info
    assert "TI hashes" in info and "civkitty: " in info and "badcat: " in info
    assert "Hires upscale: 1.5" in info

    after = net_env.run(prompt="a cat", **HIRES).images[0]  # nothing of the earlier request leaks
    assert _png(after) == _png(before)
