"""The tag grammar and LoRA arguments, as A1111 v1.10 parses them."""
from __future__ import annotations

import pytest

from pipeline.models.networks.tags import lora_params, parse_tags, strip_tags
from pipeline.runtime.errors import InvalidRequest


def test_every_tag_is_stripped_and_the_rest_of_the_prompt_stays():
    text, tags = parse_tags("a cat, <lora:add_detail:0.6>, <LORA:x:1> <embedding:neg> [dog:<x:y>:0.5]")
    assert text == "a cat, ,   [dog::0.5]"
    assert [t.type for t in tags] == ["lora", "LORA", "embedding", "x"]
    assert strip_tags("(<lora:x:1>:1.2) BREAK b") == "(:1.2) BREAK b"


@pytest.mark.parametrize(("tag", "te", "unet", "dyn"), [
    ("<lora:x>", 1.0, 1.0, None),
    ("<lora:x:0.7>", 0.7, 0.7, None),
    ("<lora:x:0.7:0.2>", 0.7, 0.2, None),
    ("<lora:x:unet=0.2>", 1.0, 0.2, None),
    ("<lora:x:te=0.5:0.8>", 0.5, 0.5, None),
    ("<lora:x:1:1:8>", 1.0, 1.0, 8),
    ("<lora:x:0.5:dyn=4:lbw=OUTD>", 0.5, 0.5, 4),
])
def test_lora_arguments_follow_a1111(tag, te, unet, dyn):
    (p,) = lora_params(parse_tags(tag)[1])
    assert (p.name, p.te, p.unet, p.dyn) == ("x", te, unet, dyn)


def test_lora_and_lyco_combine_by_first_mention_then_prompt_order():
    names = [p.name for p in lora_params(parse_tags("<lyco:a> <lora:b> <lyco:c> <lora:d>")[1])]
    assert names == ["a", "c", "b", "d"]


def test_a_name_may_hold_spaces():
    (p,) = lora_params(parse_tags("<lora:my style v2:0.8>")[1])
    assert p.name == "my style v2" and p.te == 0.8


@pytest.mark.parametrize("tag", ["<lora:x:abc>", "<lora:x:>", "<lora:x:1:1:1.5>", "<lora: :1>"])
def test_a_bad_tag_is_a_clear_error_naming_it(tag):
    with pytest.raises(InvalidRequest) as e:
        lora_params(parse_tags(tag)[1])
    assert tag in str(e.value)
