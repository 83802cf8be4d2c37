"""A1111 v1.10 prompt syntax: emphasis, BREAK, prompt editing, alternation, composable prompts."""

from __future__ import annotations

import pytest

from pipeline.diffusion.prompts import (
    BREAK,
    PromptSyntaxError,
    get_prompt_schedules,
    parse_prompt_attention,
    split_composable,
    text_at_step,
)

UP = 1.1
DOWN = 1 / 1.1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("a (very beautiful:1.5) girl", [("a ", 1.0), ("very beautiful", 1.5), (" girl", 1.0)]),
        ("(((a)))", [("a", 1.0 * UP * UP * UP)]),
        ("((word))", [("word", 1.0 * UP * UP)]),
        ("[a]", [("a", DOWN)]),
        ("[[a]]", [("a", 1.0 * DOWN * DOWN)]),
        ("(a: 1.3 )", [("a", 1.3)]),
        ("\\(literal\\)", [("(literal)", 1.0)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("\\[x\\] \\\\", [("[x] \\", 1.0)]),
        ("a\\b", [("ab", 1.0)]),  # a lone backslash is dropped
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("[unbalanced", [("unbalanced", DOWN)]),
        ("unbalanced)", [("unbalanced)", 1.0)]),
        ("a]b", [("a]b", 1.0)]),
        ("x:1.2)", [("x:1.2)", 1.0)]),  # a weight closer without an opener is text
        ("(a:1.2", [("a:1.2", 1.1)]),  # never closed: the colon is text, the bracket gives 1.1
        ("(a:b)", [("a:b", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        ("", [("", 1.0)]),
        ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
        ("a\nBREAK\nb", [("a", 1.0), BREAK, ("b", 1.0)]),
        ("BREAK a", [("", 1.0), BREAK, ("a", 1.0)]),
        ("a break b", [("a break b", 1.0)]),  # lowercase is a word
        ("a BREAKfast", [("a BREAKfast", 1.0)]),  # whole word only
        ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # scaled, so no longer a BREAK
    ],
)
def test_parse_prompt_attention(text, expected):
    assert parse_prompt_attention(text) == expected


def test_break_marker_is_weight_minus_one():
    assert BREAK == ("BREAK", -1)


def test_bad_weight_is_a_clear_error():
    with pytest.raises(PromptSyntaxError):
        parse_prompt_attention("(a:..)")


def g(prompt, steps=10, hires_steps=None):
    return get_prompt_schedules([prompt], steps, hires_steps)[0]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("test", [(10, "test")]),
        ("[a:b:0.5]", [(5, "a"), (10, "b")]),
        ("[a:b:3]", [(3, "a"), (10, "b")]),
        ("[a::2]", [(2, "a"), (10, "")]),
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("a [b:3 ]", [(3, "a "), (10, "a b")]),
        ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        ("[a:b:1.0]", [(10, "a")]),  # with a ".", 1.0 is the whole pass
        ("[a:b:20]", [(10, "a")]),  # capped at the pass length
        ("[a:b:0]", [(10, "b")]),
        ("[a:b:0.29]", [(2, "a"), (10, "b")]),  # int(0.29 * 10) == 2
        ("a | b [c:d:2]", [(10, "a | b [c:d:2]")]),  # a "|" outside brackets: used verbatim
        ("[a:b:c]", [(10, "[a:b:c]")]),
    ],
)
def test_prompt_editing(prompt, expected):
    assert g(prompt) == expected


def test_alternation_changes_every_step():
    assert g("[a|b]", 4) == [(1, "a"), (2, "b"), (3, "a"), (4, "b")]
    assert g("[a|(b:1.1)]") == [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]
    assert [t for _, t in g("[fe|]male")] == ["female", "male"] * 5
    assert [t for _, t in g("[fe|||]male", 8)] == ["female", "male", "male", "male"] * 2


def test_nested_alternation_inside_editing():
    assert g("[x:[a|b]:2]", 4) == [(1, "x"), (2, "x"), (3, "a"), (4, "b")]


def test_hires_pass_counts_on_from_the_first_pass():
    assert g("a [b:.5] c", 10, 10) == [(10, "a b c")]  # switched during the first pass
    assert g("a [b:1.5] c", 10, 10) == [(5, "a  c"), (10, "a b c")]
    assert g("[a:b:12]", 10, 8) == [(2, "a"), (8, "b")]
    assert g("[a:b:3]", 10, 8) == [(8, "b")]


def test_same_prompts_share_one_schedule():
    a, b, c = get_prompt_schedules(["[x:y:2]", "z", "[x:y:2]"], 4)
    assert a == c == [(2, "x"), (4, "y")]
    assert b == [(4, "z")]


def test_text_at_step_uses_a1111_step_rule():
    schedule = g("[a:b:5]")
    # A1111's denoiser counts calls from 0 and keeps an entry while step <= end_at_step
    assert [text_at_step(schedule, s) for s in range(10)] == ["a"] * 6 + ["b"] * 4
    assert text_at_step(schedule, 10) == "b"
    assert text_at_step(schedule, 11) == "a"  # past the end A1111 falls back to the first entry
    alternating = g("[a|b]", 4)
    assert [text_at_step(alternating, s) for s in range(4)] == ["a", "a", "b", "a"]


def test_split_composable():
    assert split_composable("a cat AND a dog:0.5") == [("a cat", 1.0), (" a dog", 0.5)]
    assert split_composable("a cat and a dog") == [("a cat and a dog", 1.0)]
    assert split_composable("x:1.2") == [("x", 1.2)]


def test_old_scheduling_rule():
    """A1111's use_old_scheduling: below 1 a fraction, otherwise a step, whatever the decimal point says;
    the hires pass schedules over the first pass's steps from 0."""
    assert get_prompt_schedules(["[a:b:1.0]"], 10) == [[(10, "a")]]
    assert get_prompt_schedules(["[a:b:1.0]"], 10, old=True) == [[(1, "a"), (10, "b")]]
    assert get_prompt_schedules(["[a:b:0.5]"], 10, old=True) == get_prompt_schedules(["[a:b:0.5]"], 10)
    assert get_prompt_schedules(["[a:b:3]"], 10, hires_steps=4, old=True) == [[(3, "a"), (10, "b")]]
