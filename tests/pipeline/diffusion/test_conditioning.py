"""Prompt encoding with A1111 v1.10 semantics on tiny real-architecture CLIP text encoders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from pipeline.diffusion.conditioning import (
    Cond,
    PromptEncoder,
    pad_to_same_length,
    stack_conds,
)
from pipeline.diffusion.scheduled_conditioning import ScheduledConditioning
from pipeline.runtime.errors import InvalidRequest
from scripts.make_configs import byte_alphabet

SHIPPED_TOKENIZER = Path(__file__).resolve().parents[3] / "pipeline" / "configs" / "clip-tokenizer"


def _tiny_vocab_tokenizer(folder: Path) -> CLIPTokenizer:
    """A character-level CLIP tokenizer (no merges): every single letter or comma is one token."""
    symbols = byte_alphabet()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77
    )


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> CLIPTokenizer:
    if (SHIPPED_TOKENIZER / "vocab.json").exists() and (SHIPPED_TOKENIZER / "merges.txt").exists():
        return CLIPTokenizer(
            vocab=str(SHIPPED_TOKENIZER / "vocab.json"),
            merges=str(SHIPPED_TOKENIZER / "merges.txt"),
            model_max_length=77,
        )
    return _tiny_vocab_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def _text_config(tokenizer, hidden: int, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def _trained_looking_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Fresh LayerNorms (weight 1, bias 0) make every final hidden state average exactly 0, which real
    checkpoints never do; give them seeded non-trivial affine parameters."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.1, 0.2)
    return model.eval()


@pytest.fixture(scope="session")
def encoders(tokenizer):
    torch.manual_seed(0)
    clip_l = _trained_looking_norms(CLIPTextModel(_text_config(tokenizer, 32)))
    torch.manual_seed(1)
    big_g = _trained_looking_norms(
        CLIPTextModelWithProjection(_text_config(tokenizer, 64, projection_dim=64))
    )
    return clip_l, big_g


@pytest.fixture
def sd1(tokenizer, encoders) -> PromptEncoder:
    return PromptEncoder([tokenizer], [encoders[0]], "sd1")


@pytest.fixture
def sdxl(tokenizer, encoders) -> PromptEncoder:
    return PromptEncoder([tokenizer, tokenizer], list(encoders), "sdxl")


def words(n: int, letter: str = "a") -> str:
    return " ".join([letter] * n)


def count_forwards(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# -- chunking ---


def test_empty_prompt_is_one_chunk(sd1, tokenizer):
    cond = sd1.encode([""])
    assert cond.context.shape == (1, 77, 32)
    assert cond.pooled is None
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert sd1.chunk_texts("") == [[bos] + [eos] * 76]


def test_long_prompt_gets_a_second_chunk(sd1, tokenizer):
    text = words(100)
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 100
    assert sd1.encode([text]).context.shape == (1, 154, 32)
    first, second = sd1.chunk_texts(text)
    a = tokenizer("a", add_special_tokens=False)["input_ids"][0]
    assert len(first) == len(second) == 77
    assert first == [tokenizer.bos_token_id] + [a] * 75 + [tokenizer.eos_token_id]
    assert second[:26] == [tokenizer.bos_token_id] + [a] * 25
    assert sd1.encode([words(75)]).chunks == 1 and sd1.encode([words(76)]).chunks == 2


def test_break_starts_a_new_chunk(sd1, tokenizer):
    a, b = (tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in "ab")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert sd1.chunk_texts("a BREAK b") == [[bos, a] + [eos] * 75, [bos, b] + [eos] * 75]
    assert sd1.encode(["a BREAK b"]).context.shape == (1, 154, 32)
    assert sd1.encode(["a break b"]).chunks == 1
    assert len(sd1.chunk_texts("BREAK a")) == 2  # a leading BREAK leaves an empty first chunk
    assert len(sd1.chunk_texts("a BREAK")) == 1


def test_overflow_moves_words_after_a_near_comma_to_the_next_chunk(tokenizer, encoders):
    a, b, comma = (tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in "ab,")
    text = words(70) + ", " + words(10, "b")  # the comma is token 71, 5 tokens before the chunk is full
    enc = PromptEncoder([tokenizer], [encoders[0]], "sd1")
    first, second = enc.chunk_texts(text)
    assert first[1:73] == [a] * 70 + [comma, tokenizer.eos_token_id]
    assert second[1:12] == [b] * 10 + [tokenizer.eos_token_id]

    no_backtrack = PromptEncoder([tokenizer], [encoders[0]], "sd1", comma_padding_backtrack=0)
    first, second = no_backtrack.chunk_texts(text)
    assert first[71:76] == [comma, b, b, b, b]
    assert second[1:8] == [b] * 6 + [tokenizer.eos_token_id]

    far = words(40) + ", " + words(40, "b")  # comma 35 tokens back: more than 20, cut at 75
    first, _ = enc.chunk_texts(far)
    assert first[41] == comma and first[75] == b


def test_sd2_pads_with_zero_after_the_end_token(tokenizer, encoders):
    enc = PromptEncoder([tokenizer], [encoders[0]], "sd2")
    a = tokenizer("a", add_special_tokens=False)["input_ids"][0]
    assert enc.chunk_texts("a") == [[tokenizer.bos_token_id, a, tokenizer.eos_token_id] + [0] * 74]


# -- emphasis ---


def test_weights_change_the_output_and_original_keeps_the_mean(sd1):
    plain = sd1.encode(["a b c"]).context
    weighted = sd1.encode(["a (b:1.5) c"]).context
    assert not torch.allclose(plain, weighted)
    assert torch.allclose(plain.mean(), weighted.mean(), rtol=1e-5, atol=1e-6)


def test_no_norm_multiplies_each_token_by_its_weight(tokenizer, encoders):
    enc = PromptEncoder([tokenizer], [encoders[0]], "sd1", emphasis="No norm")
    plain = enc.encode(["a b c"]).context
    weighted = enc.encode(["a (b:1.5) c"]).context
    assert torch.allclose(weighted[:, 2], plain[:, 2] * 1.5)
    assert torch.equal(weighted[:, :2], plain[:, :2]) and torch.equal(weighted[:, 3:], plain[:, 3:])


def test_ignore_and_none_modes(tokenizer, encoders):
    ignore = PromptEncoder([tokenizer], [encoders[0]], "sd1", emphasis="Ignore")
    assert torch.equal(ignore.encode(["a (b:1.5) c"]).context, ignore.encode(["a b c"]).context)
    none = PromptEncoder([tokenizer], [encoders[0]], "sd1", emphasis="None")
    assert none.encode(["a BREAK b"]).chunks == 1  # no parsing at all: BREAK is a word
    with pytest.raises(InvalidRequest):
        PromptEncoder([tokenizer], [encoders[0]], "sd1", emphasis="Loud")


def test_scheduled_variants_share_one_emphasis_mean(sd1):
    """A1111 encodes the texts of one prompt's schedule together; 'Original' rescales over all of them."""
    together = sd1.encode_group(["(a:1.5) b", "c d"])
    assert not torch.allclose(together[0].context, sd1.encode(["(a:1.5) b"]).context)
    # the unweighted variant is scaled by the group's common factor too
    ratio = together[1].context / sd1.encode(["c d"]).context
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), atol=1e-4)
    assert not torch.isclose(ratio.flatten()[0], torch.tensor(1.0))


# -- clip skip ---


def test_clip_skip_takes_an_earlier_layer_with_the_final_norm(sd1, encoders, tokenizer):
    skip1 = sd1.encode(["a b c"], clip_skip=1).context
    skip2 = sd1.encode(["a b c"], clip_skip=2).context
    assert not torch.allclose(skip1, skip2)
    ids = torch.tensor([sd1.chunk_texts("a b c")[0]])
    with torch.no_grad():
        out = encoders[0](input_ids=ids, output_hidden_states=True)
        expected = encoders[0].final_layer_norm(out.hidden_states[-2])
    assert torch.allclose(skip2, expected, atol=1e-6)
    with pytest.raises(InvalidRequest):
        sd1.encode(["a"], clip_skip=5)


def test_clip_skip_is_ignored_for_sd2_and_sdxl_by_default(tokenizer, encoders, sdxl):
    sd2 = PromptEncoder([tokenizer], [encoders[0]], "sd2")
    assert torch.equal(sd2.encode(["a b"], clip_skip=2).context, sd2.encode(["a b"], clip_skip=1).context)
    assert torch.equal(sdxl.encode(["a b"], clip_skip=2).context, sdxl.encode(["a b"], clip_skip=1).context)
    clip_l_skip = PromptEncoder([tokenizer, tokenizer], list(encoders), "sdxl", sdxl_clip_l_skip=True)
    shifted = clip_l_skip.encode(["a b"], clip_skip=1).context
    assert not torch.allclose(shifted[..., :32], sdxl.encode(["a b"]).context[..., :32])
    assert torch.equal(shifted[..., 32:], sdxl.encode(["a b"]).context[..., 32:])  # bigG untouched


# -- SDXL ---


def test_sdxl_concatenates_both_encoders_and_pools_the_first_chunk(sdxl, encoders, tokenizer):
    cond = sdxl.encode(["a b", "c"])
    assert cond.context.shape == (2, 77, 96)
    assert cond.pooled.shape == (2, 64)
    clip_l, big_g = encoders
    ids = torch.tensor([sdxl.chunk_texts("a b")[0]])
    with torch.no_grad():
        l_out = clip_l(input_ids=ids, output_hidden_states=True)
        g_ids = ids.clone()
        g_ids[0, 4:] = 0  # OpenCLIP pads with 0 after the end token
        g_out = big_g(input_ids=g_ids, output_hidden_states=True)
    assert torch.allclose(cond.context[0:1, :, :32], l_out.hidden_states[-2], atol=1e-6)
    assert torch.allclose(cond.context[0:1, :, 32:], g_out.hidden_states[-2], atol=1e-6)
    assert torch.allclose(cond.pooled[0], g_out.text_embeds[0], atol=1e-6)

    long = sdxl.encode([words(60) + " BREAK " + words(10, "b")])
    first_only = sdxl.encode([words(60)])
    assert long.context.shape == (1, 154, 96)
    assert torch.allclose(long.pooled, first_only.pooled, atol=1e-6)
    assert torch.equal(sdxl.encode(["a (b:1.4)"]).pooled, sdxl.encode(["a b"]).pooled)


def test_sdxl_empty_negative_prompt_is_zeros(sdxl):
    negative = sdxl.encode([""], negative=True)
    assert negative.context.shape == (1, 77, 96) and not negative.context.any() and not negative.pooled.any()
    assert sdxl.encode([""]).context.any()
    assert sdxl.encode(["a"], negative=True).context.any()


# -- caching and scheduling ---


def test_the_same_prompt_is_encoded_once(tokenizer, encoders):
    enc = PromptEncoder([tokenizer], [encoders[0]], "sd1")
    calls = count_forwards(encoders[0])
    first = enc.encode(["a cat"])
    assert calls[0] == 1
    second = enc.encode(["a cat", "a cat"])
    assert calls[0] == 1 and enc.encoder_calls == 1
    assert torch.equal(second.context[1:], first.context)
    enc.encode(["a cat"], clip_skip=2)
    assert calls[0] == 2


def test_scheduled_conditioning_switches_texts_at_a1111_steps(tokenizer, encoders):
    enc = PromptEncoder([tokenizer], [encoders[0]], "sd1")
    calls = count_forwards(encoders[0])
    sched = ScheduledConditioning(enc, ["a [b:c:0.5]", "d", "a [b:c:0.5]"], steps=10)
    assert calls[0] == 2  # one forward for the two variants of the first prompt, one for "d"
    assert sched.boundaries == [5, 10]
    assert sched.texts_at(0) == ["a b", "d", "a b"]
    assert sched.texts_at(5) == ["a b", "d", "a b"]
    assert sched.texts_at(6) == ["a c", "d", "a c"]
    early, late = sched.at(0), sched.at(6)
    assert early.context.shape == (3, 77, 32)
    assert torch.allclose(early.context[0], enc.encode(["a b"]).context[0], atol=1e-5)
    assert torch.allclose(late.context[2], enc.encode(["a c"]).context[0], atol=1e-5)
    assert torch.equal(late.context[1], early.context[1])
    assert sched.at(7) is late  # reused while nothing changes

    ScheduledConditioning(enc, ["a [b:c:0.5]"], steps=10)
    assert calls[0] == 2 + 2  # "a b" / "a c" alone were encoded above for the comparison, then all cached

    hires = ScheduledConditioning(enc, ["a [b:c:0.5]"], steps=10, hires_steps=10)
    assert hires.texts_at(0) == ["a c"]


def test_batch_of_different_lengths_repeats_the_last_vector(sd1):
    cond = sd1.encode(["a", words(100)])
    assert cond.context.shape == (2, 154, 32)
    assert torch.equal(cond.context[0, 77:], cond.context[0, 76:77].expand(77, -1))


def test_pad_cond_uncond_appends_empty_prompt_chunks(sd1):
    cond = sd1.encode([words(100)])
    uncond = sd1.encode(["b"])
    empty = sd1.empty()
    padded_cond, padded_uncond = pad_to_same_length(cond, uncond, empty)
    assert padded_cond is cond
    assert padded_uncond.context.shape == (1, 154, 32)
    assert torch.equal(padded_uncond.context[:, :77], uncond.context)
    assert torch.equal(padded_uncond.context[:, 77:], empty.context)
    swapped_uncond, swapped_cond = pad_to_same_length(uncond, cond, empty)
    assert swapped_uncond.context.shape == (1, 154, 32) and swapped_cond is cond


def test_stack_conds_keeps_pooled():
    a = Cond(torch.zeros(1, 77, 4), torch.zeros(1, 3))
    b = Cond(torch.ones(1, 154, 4), torch.ones(1, 3))
    stacked = stack_conds([a, b])
    assert stacked.context.shape == (2, 154, 4) and stacked.pooled.shape == (2, 3)
