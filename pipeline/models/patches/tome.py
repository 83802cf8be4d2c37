"""Token merging for Stable Diffusion (Bolya & Hoffman, "Token Merging for Fast Stable Diffusion"; A1111's
`token_merging_ratio` options), with A1111's settings: merge before self-attention only, 2x2 strides, no
random destination choice, only the transformer blocks at the latent's full resolution.

Bipartite soft matching: the tokens are split into destinations (the top-left token of every 2x2 cell of
the grid) and sources (all others). Each source is matched to its most similar destination (cosine
similarity of the block's input features); the r = int(N * ratio) sources with the best matches are
averaged into their destinations, so self-attention sees N - r tokens. Afterwards every merged source
takes its destination's output again (unmerge), and the block goes on with N tokens."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.models.patches.layer import UNetPatcher

Merge = Callable[[torch.Tensor], torch.Tensor]


def bipartite_merge(metric: torch.Tensor, h: int, w: int, r: int, sx: int = 2, sy: int = 2
                    ) -> tuple[Merge, Merge]:
    """(merge, unmerge) for (B, h*w, C) tokens whose similarity is judged on `metric`, merging r of them.
    merge: (B, N, C) -> (B, N - r, C); unmerge: (B, N - r, C') -> (B, N, C')."""
    b, n, _ = metric.shape
    grid = torch.arange(n, device=metric.device).view(h, w)
    is_dst = torch.zeros(h, w, dtype=torch.bool, device=metric.device)
    is_dst[: (h // sy) * sy: sy, : (w // sx) * sx: sx] = True
    dst_ids, src_ids = grid[is_dst], grid[~is_dst]
    r = min(r, src_ids.numel())
    if r <= 0:
        return (lambda x: x), (lambda x: x)
    with torch.no_grad():
        unit = metric / metric.norm(dim=-1, keepdim=True)
        scores = unit[:, src_ids] @ unit[:, dst_ids].transpose(-1, -2)  # (B, S, D)
        best, partner = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True, stable=True)
        moved, kept = order[:, :r], order[:, r:]  # positions in the source list
        into = partner.gather(1, moved)  # the destination (position in the destination list) of each moved

    def expand(idx: torch.Tensor, c: int) -> torch.Tensor:
        return idx[..., None].expand(-1, -1, c)

    def merge(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        src, dst = x[:, src_ids], x[:, dst_ids]
        dst = dst.scatter_reduce(1, expand(into, c), src.gather(1, expand(moved, c)), reduce="mean")
        return torch.cat([src.gather(1, expand(kept, c)), dst], dim=1)

    def unmerge(y: torch.Tensor) -> torch.Tensor:
        c = y.shape[-1]
        k = kept.shape[1]
        y_kept, y_dst = y[:, :k], y[:, k:]
        src = y.new_empty(b, src_ids.numel(), c)
        src.scatter_(1, expand(kept, c), y_kept)
        src.scatter_(1, expand(moved, c), y_dst.gather(1, expand(into, c)))
        out = y.new_empty(b, n, c)
        out[:, src_ids] = src
        out[:, dst_ids] = y_dst
        return out

    return merge, unmerge


def _hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@dataclass
class TokenMerging:
    """The UNet patch at `ratio` (0 < ratio; at most 3/4 of the tokens can merge). `merged` records
    (tokens, tokens after merging) of every merged attention call."""

    ratio: float

    def __post_init__(self) -> None:
        self.merged: list[tuple[int, int]] = []

    def apply(self, patcher: UNetPatcher) -> None:
        from diffusers.models.attention import BasicTransformerBlock

        for block in patcher.unet.modules():
            if isinstance(block, BasicTransformerBlock):
                self._patch_block(patcher, block)

    def _patch_block(self, patcher: UNetPatcher, block: Any) -> None:
        state: dict[str, Any] = {}

        def before_block(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = _hidden(args, kwargs)
            h, w = patcher.call.latent_size
            state.clear()
            if x.ndim == 3 and x.shape[1] == h * w:  # the full-resolution level only
                r = int(x.shape[1] * self.ratio)
                state["mu"] = bipartite_merge(x, h, w, r)

        def before_attn(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if "mu" not in state:
                return None
            x = _hidden(args, kwargs)
            merged = state["mu"][0](x)
            self.merged.append((int(x.shape[1]), int(merged.shape[1])))
            if args:
                return (merged, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": merged}

        def after_attn(_m: Any, _args: Any, output: torch.Tensor) -> Any:
            return state["mu"][1](output) if "mu" in state else None

        patcher.pre_hook(block, before_block)
        patcher.pre_hook(block.attn1, before_attn)
        patcher.post_hook(block.attn1, after_attn)
        patcher.on_exit(state.clear)

