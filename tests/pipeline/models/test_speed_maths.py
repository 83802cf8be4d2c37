"""The maths of the speed patches against straightforward references computed here: Hypertile's tiled
self-attention equals attention run tile by tile by hand; A1111's tile-count draw; token merging's
merge/unmerge equals averaging each matched group by hand; Deep Shrink's bislerp equals a slerp by hand."""
from __future__ import annotations

import math
import random

import torch

from pipeline.models.patches import PassInfo, UNetPatcher
from pipeline.models.patches.deep_shrink import DeepShrink, bislerp
from pipeline.models.patches.hypertile import (
    Hypertile,
    attention_depths,
    largest_tile,
    tile_count,
    token_grid,
)
from pipeline.models.patches.tome import bipartite_merge


def test_tile_count_draws_as_a1111_random_divisor():
    # 128 cells, min side 32: divisors 32, 64, 128 -> counts 4, 2, 1; the draw is randint over them
    rng, ref = random.Random(7), random.Random(7)
    for _ in range(20):
        assert tile_count(128, 32, 3, rng) == [4, 2, 1][ref.randint(0, 2)]
    assert tile_count(128, 32, 1, random.Random(1)) == 4  # one option: deterministic
    assert tile_count(16, 32, 3, random.Random(1)) == 1  # min side above the side: one tile
    assert largest_tile(1024, 768) == 256 and largest_tile(1000, 1000) == 8
    assert token_grid(32 * 48, (32, 48)) == (32, 48) and token_grid(16 * 24, (32, 48)) == (16, 24)
    assert token_grid(9 * 9, (17, 17)) == (9, 9) and token_grid(100, (32, 48)) is None


def test_hypertile_attention_equals_attention_tile_by_tile(builtin_model):
    """A 32x32 grid at depth 0, 128-px max tile, one option: 2x2 tiles of 16x16 tokens each; the patched
    self-attention equals the module run on each tile's tokens separately and put back in place."""
    attn = next(m for m, d in attention_depths(builtin_model.unet, "sd1") if d == 0)
    x = torch.randn(2, 32 * 32, attn.to_q.in_features, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = torch.empty_like(x)
        grid = x.view(2, 32, 32, -1)
        for i in range(2):
            for j in range(2):
                tile = grid[:, 16 * i:16 * i + 16, 16 * j:16 * j + 16].reshape(2, 256, -1)
                out = attn(tile).view(2, 16, 16, -1)
                expected.view(2, 32, 32, -1)[:, 16 * i:16 * i + 16, 16 * j:16 * j + 16] = out
        whole = attn(x)
        patcher = UNetPatcher(builtin_model, PassInfo(2, 256, 256, seed=1))
        ht = Hypertile(256, 256, max_depth=3, max_tile=128, swap_size=1)
        try:
            ht.apply(patcher)
            patcher.call.latent_size = (32, 32)
            got = attn(x)
        finally:
            patcher.close()
        assert "forward" not in attn.__dict__
    assert ht.tiles == [(2, 2)]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, whole, atol=1e-3)  # tiling is not a no-op


def _merge_reference(x: torch.Tensor, h: int, w: int, r: int) -> torch.Tensor:
    """unmerge(merge(x)) by hand: destinations are the top-left token of each 2x2 cell; each source picks
    its most similar destination (cosine); the r best-matched sources and their destination all become
    the mean of that group; everything else is unchanged."""
    out = x.clone()
    for b in range(x.shape[0]):
        dst = [i * w + j for i in range(0, h - h % 2, 2) for j in range(0, w - w % 2, 2)]
        src = [t for t in range(h * w) if t not in set(dst)]
        unit = x[b] / x[b].norm(dim=-1, keepdim=True)
        best = []
        for s in src:
            sims = torch.stack([unit[s] @ unit[d] for d in dst])
            best.append((float(sims.max()), s, dst[int(sims.argmax())]))
        best.sort(key=lambda e: -e[0])
        groups: dict[int, list[int]] = {}
        for _, s, d in best[:r]:
            groups.setdefault(d, [d]).append(s)
        for members in groups.values():
            out[b, members] = x[b, members].mean(dim=0)
    return out


def test_token_merging_equals_group_means_by_hand():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(6, 8, generator=g)  # few distinct directions, so matches are clear
    x = base[torch.randint(0, 6, (2, 6 * 5), generator=g)] + 0.05 * torch.randn(2, 30, 8, generator=g)
    merge, unmerge = bipartite_merge(x, 6, 5, r=12)  # 5 wide: the last column has no 2x2 cell
    merged = merge(x)
    assert merged.shape == (2, 30 - 12, 8)
    torch.testing.assert_close(unmerge(merged), _merge_reference(x, 6, 5, 12), rtol=1e-5, atol=1e-6)
    merge0, unmerge0 = bipartite_merge(x, 6, 5, r=0)
    assert torch.equal(unmerge0(merge0(x)), x)


def test_bislerp_equals_slerp_by_hand():
    """Two orthogonal unit vectors 1 px apart, resized to 4 px: positions 0, 0.25, 0.75, 1 between them
    (half-pixel centres, clamped at the ends); each output is the slerp at that position."""
    x = torch.zeros(1, 2, 1, 2)
    x[0, 0, 0, 0] = 1.0
    x[0, 1, 0, 1] = 1.0
    out = bislerp(x, 1, 4)
    for k, t in enumerate([0.0, 0.25, 0.75, 1.0]):
        expected = torch.tensor([math.cos(t * math.pi / 2), math.sin(t * math.pi / 2)])
        torch.testing.assert_close(out[0, :, 0, k], expected, rtol=1e-5, atol=1e-6)


def test_deep_shrink_window_counts_percents_as_forge():
    ds = DeepShrink(start_percent=0.0, end_percent=0.35)
    assert ds.active(0.0) and ds.active(0.35) and not ds.active(0.36)
    ds = DeepShrink(start_percent=0.2, end_percent=1.0)
    assert not ds.active(0.1) and ds.active(0.2) and ds.active(1.0)


def test_vae_hypertile_equals_the_vae_attention_tile_by_tile(builtin_model):
    """The decoder's mid-block attention on a 32x32 latent, 128-px max tile, one option: 2x2 tiles."""
    from pipeline.models.patches.hypertile import vae_hypertile

    vae = builtin_model.vae
    attn = vae.decoder.mid_block.attentions[0]
    x = torch.randn(1, attn.to_q.in_features, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = torch.empty_like(x)
        for i in range(2):
            for j in range(2):
                part = x[:, :, 16 * i:16 * i + 16, 16 * j:16 * j + 16].contiguous()
                expected[:, :, 16 * i:16 * i + 16, 16 * j:16 * j + 16] = attn(part)
        with vae_hypertile(vae, 256, 256, seed=1, max_tile=128, swap_size=1) as tiles:
            got = attn(x)
        assert "forward" not in attn.__dict__
    assert tiles == [(2, 2)]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
