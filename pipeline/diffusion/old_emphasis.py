"""A1111's `use_old_emphasis_implementation` (its modules/sd_hijack_clip_old.py), SD 1.x only: the raw
prompt text is tokenized (no attention parsing, so no `(word:1.2)` weights and no BREAK); each vocabulary
token holding brackets multiplies the weight of the tokens after it (each `(` and `]` by 1.1, each `)` and
`[` by 1/1.1) and is dropped, unless emphasis is off; the rest is cut to one chunk. Embedding vectors are
placed as A1111 places them, cut at the chunk's end."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# (token ids, position) -> (an embedding with `.vectors`, how many ids it used), or None
Match = Callable[[list[int], int], Any]


def old_chunk(enc: Any, text: str, chunk_tokens: int, match: Match | None, k: int, *,
              weigh: bool = True) -> tuple[list[int], list[float], list[tuple[int, torch.Tensor]]]:
    """One chunk of BOS + `chunk_tokens` + EOS for encoder `enc` (its tokenizer, bos/eos ids) and text
    encoder index `k`: (token ids, weights, embedding fixes as (offset, vectors))."""
    ids = enc.tokenizer(text, truncation=False, add_special_tokens=False, verbose=False)["input_ids"]
    mults = bracket_mults(enc) if weigh else {}
    length = chunk_tokens + 2
    tokens: list[int] = []
    weights: list[float] = []
    fixes: list[tuple[int, torch.Tensor]] = []
    mult, i = 1.0, 0
    while i < len(ids):
        change = mults.get(ids[i])
        hit = match(ids, i) if match is not None and change is None else None
        if change is not None:
            mult *= change
            i += 1
        elif hit is None:
            tokens.append(int(ids[i]))
            weights.append(mult)
            i += 1
        else:
            emb, used = hit
            vec = emb.vectors[k if len(emb.vectors) > 1 else 0]
            offset = len(tokens)
            if offset < length - 1:  # A1111 lays at most up to the chunk's last position
                fixes.append((offset, vec[:length - 1 - offset]))
            tokens += [0] * vec.shape[0]
            weights += [mult] * vec.shape[0]
            i += used
    tokens = tokens[:chunk_tokens] + [enc.eos_id] * (chunk_tokens - len(tokens))
    weights = weights[:chunk_tokens] + [1.0] * (chunk_tokens - len(weights))
    return [enc.bos_id, *tokens, enc.eos_id], [1.0, *weights, 1.0], fixes


def bracket_mults(enc: Any) -> dict[int, float]:
    """A1111's `token_mults`: every vocabulary token with brackets whose brackets do not cancel out (kept
    on `enc.bracket_mults` after the first use)."""
    cached = getattr(enc, "bracket_mults", None)
    if cached is None:
        cached = {}
        for text, ident in enc.tokenizer.get_vocab().items():
            mult = 1.0
            for c in text:
                if c in "(]":
                    mult *= 1.1
                elif c in ")[":
                    mult /= 1.1
            if mult != 1.0:
                cached[int(ident)] = mult
        enc.bracket_mults = cached
    return cached
