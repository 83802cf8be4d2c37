"""Infotext: A1111's layout when writing, A1111's `parse_generation_parameters` when reading."""
from __future__ import annotations

import pytest

from pipeline.infotext.codec import format_infotext, parse_infotext, prompt_uses_emphasis

HIRES_INFOTEXT = (
    "masterpiece, best quality, (a tabby cat:1.2) sitting on a windowsill,\n"
    "warm sunlight, <lora:add_detail:0.6>\n"
    "Negative prompt: lowres, bad anatomy,\n"
    "worst quality, jpeg artifacts\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234567890, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, "
    "Clip skip: 2, Hires resize: 1024x0, Hires steps: 15, Hires upscaler: R-ESRGAN 4x+, "
    'Lora hashes: "add_detail: 7c6bad76eb54, film: 1234abcd5678", TI hashes: "easynegative: c74b4e810b03", '
    "Version: v1.10.1"
)

# Keys `parse_infotext` fills in when the text does not have them, with A1111's values and types.
DEFAULTS = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Refiner switch by sampling steps": False,
}


# --- parsing ----------------------------------------------------------------------------------------


def test_hires_infotext_with_multiline_prompts_quoted_values_and_sizes():
    p = parse_infotext(HIRES_INFOTEXT)
    assert p["Prompt"] == (
        "masterpiece, best quality, (a tabby cat:1.2) sitting on a windowsill,\n"
        "warm sunlight, <lora:add_detail:0.6>"
    )
    assert p["Negative prompt"] == "lowres, bad anatomy,\nworst quality, jpeg artifacts"
    assert p["Steps"] == "28"
    assert p["Sampler"] == "DPM++ 2M"
    assert p["Schedule type"] == "Karras"
    assert p["CFG scale"] == "7.0"
    assert p["Seed"] == "1234567890"
    assert (p["Size-1"], p["Size-2"]) == ("512", "768")
    assert "Size" not in p
    assert (p["Hires resize-1"], p["Hires resize-2"]) == ("1024", "0")
    assert p["Hires upscaler"] == "R-ESRGAN 4x+"
    assert p["Lora hashes"] == "add_detail: 7c6bad76eb54, film: 1234abcd5678"
    assert p["TI hashes"] == "easynegative: c74b4e810b03"
    assert p["Clip skip"] == "2"
    assert p["Denoising strength"] == "0.45"
    assert p["Version"] == "v1.10.1"
    assert p["Emphasis"] == "Original"  # the prompt uses (…:1.2)
    # Defaults only for what the text lacks.
    assert p["Hires sampler"] == "Use same sampler"
    assert p["RNG"] == "GPU"
    assert p["Refiner switch by sampling steps"] is False
    # A current version sets no compatibility flags.
    assert "Downcast alphas_cumprod" not in p and "Old prompt editing timelines" not in p


def test_plain_infotext_without_negative_prompt_gets_all_defaults():
    text = "a photo of a dog in the park\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512"
    p = parse_infotext(text)
    assert p["Prompt"] == "a photo of a dog in the park"
    assert p["Negative prompt"] == ""
    for key, value in DEFAULTS.items():
        assert p[key] == value and type(p[key]) is type(value), key
    assert "Emphasis" not in p
    assert "Cache FP16 weight for LoRA" not in p
    # Parsed keys come first, in text order, then Prompt/Negative prompt, then defaults (A1111's order).
    assert list(p)[:7] == ["Steps", "Sampler", "CFG scale", "Seed", "Size-1", "Size-2", "Prompt"]


def test_last_line_with_fewer_than_three_params_belongs_to_the_prompt():
    text = "a cat\nstyle: oil painting, mood: calm"
    p = parse_infotext(text)
    assert p["Prompt"] == "a cat\nstyle: oil painting, mood: calm"
    assert "style" not in p and "mood" not in p
    assert parse_infotext("portrait, lighting: soft")["Prompt"] == "portrait, lighting: soft"


def test_negative_prompt_only_and_prompt_lines_are_stripped():
    text = "  first line  \n\tsecond line\nNegative prompt:   ugly  \nSteps: 4, Seed: 1, Sampler: Euler"
    p = parse_infotext(text)
    assert p["Prompt"] == "first line\nsecond line"
    assert p["Negative prompt"] == "ugly"


def test_empty_text_parses_to_defaults():
    p = parse_infotext("")
    assert p["Prompt"] == "" and p["Negative prompt"] == ""
    assert p["Clip skip"] == "1" and p["Hires resize-1"] == 0


def test_quoted_value_with_escapes_and_newline_is_unquoted():
    text = (
        'a cat\nSteps: 20, Seed: 5, Hires prompt: "a \\"quoted\\" cat,\\nsecond line", '
        'Hires negative prompt: "blurry, 猫", Sampler: Euler'
    )
    p = parse_infotext(text)
    assert p["Hires prompt"] == 'a "quoted" cat,\nsecond line'
    assert p["Hires negative prompt"] == "blurry, 猫"
    assert p["Sampler"] == "Euler"


def test_value_with_colon_that_is_not_quoted_is_kept_whole():
    p = parse_infotext("x\nSteps: 20, Model: sub:model, Seed: 1, Sampler: Euler")
    assert p["Model"] == "sub:model"


def test_empty_value_is_skipped_like_a1111():
    p = parse_infotext("x\nModel: , Steps: 20, Sampler: Euler, Seed: 1")
    assert "Model" not in p and p["Steps"] == "20"


def test_seed_resize_from_splits_and_bare_words_are_ignored():
    p = parse_infotext("x\nSteps: 20, Tiling, Seed resize from: 640x480, Seed: 3, Sampler: Euler")
    assert (p["Seed resize from-1"], p["Seed resize from-2"]) == ("640", "480")
    assert "Tiling" not in p


def test_legacy_combined_sampler_name_is_kept_as_written():
    # A1111's png-info does not split "DPM++ 2M Karras"; the split happens when resolving samplers.
    p = parse_infotext("x\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512")
    assert p["Sampler"] == "DPM++ 2M Karras"
    assert p["Schedule type"] == "Automatic"


def test_old_first_pass_size_is_converted_to_hires_resize():
    text = (
        "x\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 1024x768, First pass size: 512x384, "
        "Denoising strength: 0.7"
    )
    p = parse_infotext(text)
    assert (p["Size-1"], p["Size-2"]) == (512, 384)
    assert (p["Hires resize-1"], p["Hires resize-2"]) == (1024, 768)


def test_old_first_pass_size_zero_uses_the_old_512_area_rule():
    text = "x\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 1024x1024, First pass size: 0x0"
    p = parse_infotext(text)
    assert (p["Size-1"], p["Size-2"]) == (512, 512)
    assert (p["Hires resize-1"], p["Hires resize-2"]) == (1024, 1024)
    text = "x\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 1920x1080, First pass size: 0x0"
    p = parse_infotext(text)
    assert (p["Size-1"], p["Size-2"]) == (704, 384)  # ceil(682.7/64)*64, ceil(384/64)*64


def test_version_based_compatibility_flags():
    text = "a [cat:dog:0.5]\nSteps: 20, Sampler: DDIM, Seed: 1, Version: v1.5.1"
    p = parse_infotext(text)
    assert p["Old prompt editing timelines"] is True
    assert p["Pad conds v0"] is True
    assert p["Downcast alphas_cumprod"] is True

    text = "x\nSteps: 20, Sampler: Euler, Seed: 1, Refiner: sdxl_refiner [7440042bbd], Version: v1.7.0"
    p = parse_infotext(text)
    assert p["Refiner switch by sampling steps"] is True
    assert p["Downcast alphas_cumprod"] is True  # before v1.7.0-225

    p = parse_infotext("x\nSteps: 20, Sampler: Euler, Seed: 1, Version: v1.7.0-225-g1234567")
    assert "Downcast alphas_cumprod" not in p
    p = parse_infotext("x\nSteps: 20, Sampler: Euler, Seed: 1, Version: v1.6.0-RC-28-ga6e653be")
    assert p["Downcast alphas_cumprod"] is True
    assert "Old prompt editing timelines" not in p  # no '[' in the prompt
    p = parse_infotext("x\nSteps: 20, Sampler: Euler, Seed: 1, Version: f2.0.1v1.10.1-previous-313-g8a042934")
    assert "Downcast alphas_cumprod" not in p  # unparsable (Forge) versions set nothing


def test_fp8_weight_adds_the_lora_cache_default():
    p = parse_infotext("x\nSteps: 20, Sampler: Euler, Seed: 1, FP8 weight: Enable for SDXL")
    assert p["Cache FP16 weight for LoRA"] is False


def test_hypernet_is_appended_to_the_prompt():
    p = parse_infotext("a cat\nSteps: 20, Sampler: Euler, Seed: 1, Hypernet: anime, Hypernet strength: 0.8")
    assert p["Prompt"] == "a cat<hypernet:anime:0.8>"


def test_skip_fields_are_removed():
    p = parse_infotext("x\nSteps: 20, Sampler: Euler, Seed: 1", skip_fields=["Seed", "Clip skip"])
    assert "Seed" not in p and "Clip skip" not in p


def test_explicit_emphasis_is_kept():
    p = parse_infotext("(cat)\nSteps: 20, Sampler: Euler, Seed: 1, Emphasis: No norm")
    assert p["Emphasis"] == "No norm"


def test_emphasis_in_the_negative_prompt_counts():
    p = parse_infotext("cat\nNegative prompt: [blurry]\nSteps: 20, Sampler: Euler, Seed: 1")
    assert p["Emphasis"] == "Original"


@pytest.mark.parametrize(
    ("prompt", "uses"),
    [
        ("a cat", False),
        ("(a cat)", True),
        ("((a cat))", True),
        ("[a cat]", True),
        ("(a cat:1.0)", False),
        ("(a cat:1.3)", True),
        ("\\(a cat\\)", False),
        ("a cat BREAK a dog", False),
        ("(unclosed", True),
        ("()", False),
        ("[cat:dog:10]", True),  # prompt editing looks like emphasis to A1111 too
        ("a: b:1.2)", False),  # a weight with no open bracket is plain text
        ("(a:..)", True),  # A1111 crashes on the bad weight; we read it as text in an unclosed bracket
        ("", False),
    ],
)
def test_prompt_uses_emphasis(prompt, uses):
    assert prompt_uses_emphasis(prompt) is uses


# --- formatting -------------------------------------------------------------------------------------


def test_format_layout_and_value_rules():
    text = format_infotext(
        "a cat",
        "blurry",
        [
            ("Steps", 20),
            ("Sampler", "DPM++ 2M"),
            ("Schedule type", "Karras"),
            ("CFG scale", 7.0),
            ("Seed", 1234),
            ("Face restoration", None),
            ("Size", "512x512"),
            ("Denoising strength", 0.5),
            ("Hires upscale", 2.0),
            ("Hires upscaler", "Latent"),
            ("Tiling", True),
            ("Some flag", "Some flag"),
            ("Lora hashes", "a: 123, b: 456"),
            ("Hires prompt", "猫, 犬"),
            ("Multi", "line one\nline two"),
            ("Version", "v1.10.1"),
        ],
    )
    assert text == (
        "a cat\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234, Size: 512x512, "
        "Denoising strength: 0.5, Hires upscale: 2.0, Hires upscaler: Latent, Tiling: True, Some flag, "
        'Lora hashes: "a: 123, b: 456", Hires prompt: "猫, 犬", Multi: "line one\\nline two", '
        "Version: v1.10.1"
    )


def test_format_without_negative_prompt_and_from_dict():
    text = format_infotext("a cat\non a mat", "", {"Steps": 20, "Sampler": "Euler", "Seed": -1})
    assert text == "a cat\non a mat\nSteps: 20, Sampler: Euler, Seed: -1"


def test_format_json_quotes_non_string_values_with_commas():
    assert format_infotext("x", "", [("List", [1, 2])]) == "x\nList: [1, 2]"


def test_format_then_parse_round_trips():
    prompt = "masterpiece, (a cat:1.1),\nwindowsill"
    negative = "lowres,\nbad hands"
    params = [
        ("Steps", 20),
        ("Sampler", "DPM++ 2M SDE"),
        ("Schedule type", "Exponential"),
        ("CFG scale", 6.5),
        ("Seed", 3141592653),
        ("Size", "512x768"),
        ("Model hash", "31e35c80fc"),
        ("Model", "sd_xl_base_1.0"),
        ("Denoising strength", 0.55),
        ("Hires prompt", 'a "sharp", detailed cat'),
        ("Hires resize", "1024x0"),
        ("Hires steps", 10),
        ("Hires upscaler", "4x-UltraSharp"),
        ("Lora hashes", "a: 123, b: 456"),
        ("Version", "v1.10.1"),
    ]
    p = parse_infotext(format_infotext(prompt, negative, params))
    assert p["Prompt"] == prompt
    assert p["Negative prompt"] == negative
    for key, value in params:
        if isinstance(value, str) and "x" in value and key in ("Size", "Hires resize"):
            w, h = value.split("x")
            assert (p[f"{key}-1"], p[f"{key}-2"]) == (w, h)
        else:
            assert p[key] == str(value), key
    assert p["Emphasis"] == "Original"
