"""A1111 v1.10's file-name patterns (server/filenames.py): each token's value, the sanitising, and the
pattern rules (unknown tokens kept, arguments, tokens that drop the text before them)."""
from __future__ import annotations

import datetime as dt
import hashlib

from PIL import Image

from server.filenames import FilenameGenerator, JobFacts, sanitize_part

NOW = dt.datetime(2024, 7, 27, 13, 5, 9, tzinfo=dt.timezone.utc)


def _job(**kw) -> JobFacts:
    base = dict(steps=20, cfg_scale=7.0, sampler="DPM++ 2M", scheduler="Karras", styles=["Warm", "None"],
                style_prompts=["{prompt}, warm light"], model_hash="e6e99610c4", model_name="v1-5-pruned",
                vae_name="vae-ft-mse.safetensors", job_timestamp="20240727130509", prompt="a red fox",
                negative_prompt="blurry", all_seeds=[11, 12, 13, 14], all_prompts=["a red fox, warm light"] * 4,
                batch_size=2, n_iter=2, clip_skip=2, denoising_strength=0.75)
    base.update(kw)
    return JobFacts(**base)


def _gen(job: JobFacts | None = None, index: int = 1, **kw) -> FilenameGenerator:
    job = job or _job()
    img = kw.pop("image", Image.new("RGB", (64, 48), "red"))
    g = FilenameGenerator.for_image(job, index, img, **kw)
    g.now = lambda: NOW
    return g


def test_sanitize_part_as_a1111() -> None:
    assert sanitize_part(' a b:c/d\\e|f?g*h"i<j>k#l\tm. . ') == "_a_b_c_d_e_f_g_h_i_j_k_l_m._._"
    assert sanitize_part(" lead. ", replace_spaces=False) == "lead"
    assert sanitize_part("x" * 200) == "x" * 128
    assert sanitize_part(None) is None


def test_the_plain_tokens() -> None:
    g = _gen()
    assert g.apply("[seed]-[steps]-[cfg]-[width]x[height]") == "12-20-7.0-64x48"
    assert g.apply("[SEED]") == "12"  # names are case-insensitive
    assert g.apply("[sampler]|[scheduler]|[sampler_scheduler]") == "DPM++ 2M|Karras|DPM++ 2M Karras"
    assert g.apply("[styles]") == "Warm"
    assert g.apply("[model_hash] [model_name] [vae_filename]") == "e6e99610c4 v1-5-pruned vae-ft-mse"
    assert g.apply("[job_timestamp]") == "20240727130509"
    assert g.apply("[clip_skip]-[denoising]") == "2-0.75"
    assert g.apply("[batch_size]-[basename]") == "2-img"
    assert g.apply("a[none]b") == "ab"


def test_prompt_tokens() -> None:
    g = _gen(job=_job(all_prompts=["A red fox, warm light"] * 4, max_prompt_words=3))
    assert g.apply("[prompt]") == "A_red_fox,_warm_light"
    assert g.apply("[prompt_spaces]") == "A red fox, warm light"
    assert g.apply("[prompt_words]") == "A red fox"
    assert g.apply("[prompt_no_styles]") == "A red fox"
    assert g.apply("[hasprompt<fox|nofox><cat|nocat><dog>]") == "foxnocat"
    assert _gen(job=_job(all_prompts=["!!!"] * 4)).apply("[prompt_words]") == "empty"


def test_hashes() -> None:
    g = _gen()
    sha = hashlib.sha256
    assert g.apply("[prompt_hash]") == sha(b"a red fox, warm light").hexdigest()[:8]
    assert g.apply("[prompt_hash<4>]") == sha(b"a red fox, warm light").hexdigest()[:4]
    assert g.apply("[negative_prompt_hash]") == sha(b"blurry").hexdigest()[:8]
    assert g.apply("[full_prompt_hash<12>]") == sha(b"a red fox blurry").hexdigest()[:12]
    pixels = Image.new("RGB", (64, 48), "red").tobytes()
    assert g.apply("[image_hash]") == sha(pixels).hexdigest()
    assert g.apply("[image_hash<6>]") == sha(pixels).hexdigest()[:6]


def test_dates() -> None:
    g = _gen()
    assert g.apply("[date]") == "2024-07-27"
    local = NOW.astimezone(None)
    assert g.apply("[datetime]") == local.strftime("%Y%m%d%H%M%S")
    assert g.apply("[datetime<%Y/%m/%d %H:%M>]") == local.strftime("%Y_%m_%d %H_%M")
    assert g.apply("[datetime<%H><Asia/Tokyo>]") == "22"  # 13:05 UTC
    assert g.apply("[datetime<%H><Nowhere/Atlantis>]") == local.strftime("%H")  # unknown zone: local
    assert g.apply("[datetime<>]") == local.strftime("%Y%m%d%H%M%S")


def test_numbers_and_tokens_that_drop_the_text_before_them() -> None:
    job = _job()
    assert _gen(job, index=3).apply("[seed_first]-[seed_last]") == "11-14"
    assert _gen(job, index=3).apply("g[generation_number]-b[batch_number]") == "g4-b2"
    one = _job(batch_size=1, n_iter=1, all_seeds=[11], denoising_strength=None)
    assert _gen(one, index=0).apply("x-[seed_first]-[seed_last]") == "x-11"
    assert _gen(one, index=0).apply("x-[batch_number]-[generation_number]") == ""
    assert _gen(one, index=0).apply("x[denoising]y") == "y"
    # a batch of one but several iterations: generation numbers, no batch number
    iters = _job(batch_size=1, n_iter=3, all_seeds=[1, 2, 3])
    assert _gen(iters, index=2).apply("[generation_number]-[batch_number]") == "3"


def test_unknown_tokens_and_failing_arguments_stay_as_written() -> None:
    g = _gen()
    assert g.apply("[nope]-[seed]") == "[nope]-12"
    assert g.apply("[user]") == "[user]"  # A1111's API jobs have no user
    assert g.apply("[prompt_hash<x>]") == "[prompt_hash]"
    assert g.apply("[seed<3>]") == "[seed]"
    assert g.apply("unclosed [seed") == "unclosed [seed"
    assert _gen(job=_job(vae_name=None)).apply("[vae_filename]") == "NoneType"
