"""Prompt text -> UNet cross-attention conditioning, with A1111 v1.10's chunking, emphasis and CLIP skip.

A prompt is tokenized without BOS/EOS, each token carrying its emphasis weight, and cut into chunks of 75
tokens (a chunk ends early at BREAK, and a chunk that overflows is cut after its last comma when that comma
is within the last `comma_padding_backtrack` tokens). Each chunk becomes BOS + 75 tokens (padded) + EOS = 77
and is encoded on its own; the chunks' hidden states are concatenated on the sequence axis: (B, 77*k, D).

Per family (what A1111 v1.10 does):
  sd1   CLIP-L; pad with EOS; clip_skip n > 1 takes hidden_states[-n] + final layer norm.
  sd2   OpenCLIP-H as diffusers ships it (23 layers, i.e. already A1111's penultimate layer + final norm);
        pad id 0; clip_skip is ignored (A1111 ignores it for SD2).
  sdxl  CLIP-L hidden_states[-2] (no final norm, pad EOS) ++ OpenCLIP-bigG hidden_states[-2] (no final
        norm, pad 0) on the feature axis; pooled = bigG text projection of the FIRST chunk's EOS token.
        clip_skip is ignored unless `sdxl_clip_l_skip` (A1111's "Clip skip SDXL" option), which then takes
        hidden_states[-n] of CLIP-L only. An all-empty negative prompt gives zeros (context and pooled).

Emphasis modes (A1111 option `emphasis`): "Original" (default: multiply by the weights, then rescale to
the pre-weighting mean), "No norm", "Ignore" (parse brackets, apply no weights), "None" (no parsing).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.diffusion.old_emphasis import old_chunk
from pipeline.diffusion.prompts import parse_prompt_attention
from pipeline.runtime.errors import InvalidRequest

__all__ = [
    "CHUNK_TOKENS",
    "Cond",
    "PromptEncoder",
    "pad_to_same_length",
    "stack_conds",
]

CHUNK_TOKENS = 75
"""Prompt tokens per chunk; each chunk is encoded as BOS + 75 + EOS = 77 positions."""
CHUNK_LENGTH = CHUNK_TOKENS + 2
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")


@dataclass
class Cond:
    """Conditioning for a batch: `context` (B, 77*k, D) for cross-attention; `pooled` (B, D_pool) for SDXL,
    else None."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.context.shape[0])

    @property
    def chunks(self) -> int:
        """Number of 77-token chunks (k)."""
        return int(self.context.shape[1]) // CHUNK_LENGTH

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cond:
        pooled = self.pooled.to(device=device, dtype=dtype) if self.pooled is not None else None
        return Cond(self.context.to(device=device, dtype=dtype), pooled)


@dataclass
class _Chunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (offset, embedding vectors)


@dataclass
class _Encoder:
    """One text encoder and how A1111 drives it."""

    tokenizer: Any
    model: Any
    role: str  # "clip" (sd1), "openclip" (sd2), "xl_clip_l", "xl_bigg"
    pad_id: int
    bos_id: int
    eos_id: int
    comma_id: int | None
    bracket_mults: dict[int, float] | None = None  # A1111's old emphasis `token_mults`, made on first use

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)


def _final_layer_norm(model: Any) -> torch.nn.Module:
    norm = getattr(model, "final_layer_norm", None)
    if norm is None:
        norm = model.text_model.final_layer_norm
    return norm


def _projection(model: Any) -> torch.nn.Module:
    return model.text_projection


class PromptEncoder:
    """Encodes prompts the way A1111 v1.10 does, caching every encoded prompt (LRU, `cache_size` entries).

    Build with `PromptEncoder.from_model(sd_model)` or `PromptEncoder(tokenizers, text_encoders, family)`. The
    cache key is (texts encoded together, clip_skip, zero flag); one encoder belongs to one loaded model.
    `encoder_calls` counts text-encoder forward passes (one per chunk position per encoder).
    """

    def __init__(
        self,
        tokenizers: Sequence[Any],
        text_encoders: Sequence[Any],
        family: str,
        *,
        emphasis: str = "Original",
        comma_padding_backtrack: int = 20,
        sdxl_clip_l_skip: bool = False,
        old_emphasis: bool = False,
        cache_size: int = 256,
        salt: Callable[[], Hashable] | None = None,
        embeddings: Callable[[], Any] | None = None,
        device: torch.device | None = None,
    ):
        if family not in ("sd1", "sd2", "sdxl"):
            raise ValueError(f"unknown model family {family!r}")
        expected = 2 if family == "sdxl" and len(text_encoders) != 1 else 1  # an SDXL refiner: bigG only
        if len(tokenizers) != expected or len(text_encoders) != expected:
            raise ValueError(f"{family} needs {expected} tokenizer(s) and text encoder(s)")
        if emphasis not in EMPHASIS_MODES:
            raise InvalidRequest("emphasis", f"unknown emphasis mode {emphasis!r}", list(EMPHASIS_MODES))
        self.family = family
        self.emphasis = emphasis
        self.comma_padding_backtrack = int(comma_padding_backtrack)
        self.sdxl_clip_l_skip = bool(sdxl_clip_l_skip)
        self.old_emphasis = bool(old_emphasis)  # A1111's use_old_emphasis_implementation (CLIP-L models only)
        roles = {"sd1": ["clip"], "sd2": ["openclip"], "sdxl": ["xl_clip_l", "xl_bigg"]}[family][-expected:]
        self.encoders = [
            self._describe(tok, enc, role) for tok, enc, role in zip(tokenizers, text_encoders, roles)
        ]
        self.cache_size = int(cache_size)
        self.salt = salt  # what else the encodings depend on (the text encoders' patched networks)
        self.embeddings = embeddings  # -> a networks.embeddings.EmbeddingMatcher (textual inversion) or None
        self._cache: OrderedDict[tuple, list[tuple[torch.Tensor, torch.Tensor | None]]] = OrderedDict()
        self.encoder_calls = 0
        # where encodings live: the model's compute device (under --medvram the text encoders wait on the CPU
        # between uses, so their parameters' device is not it); None: the first encoder's device
        self.device = device

    @classmethod
    def from_model(cls, model: Any, **options: Any) -> PromptEncoder:
        """From an `SDModel` (its tokenizers, text_encoders and family). Textual-inversion embeddings come
        from the model's `networks.embeddings` matcher; cached encodings are keyed by the model's
        `networks.salt` (its patched LoRA set) and the matcher's generation too."""
        options.setdefault("embeddings", lambda: model.extra.get("networks.embeddings"))
        options.setdefault("device", getattr(model, "device", None))
        def salt() -> Hashable:
            matcher = model.extra.get("networks.embeddings")
            return model.extra.get("networks.salt"), getattr(matcher, "generation", None)

        options.setdefault("salt", salt)
        return cls(model.tokenizers, model.text_encoders, model.family, **options)

    @staticmethod
    def _describe(tokenizer: Any, model: Any, role: str) -> _Encoder:
        bos, eos = int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)
        # A1111 pads CLIP-L chunks with EOS and OpenCLIP chunks with id 0, whatever the tokenizer config says
        pad = eos if role in ("clip", "xl_clip_l") else 0
        comma = tokenizer.get_vocab().get(",</w>")
        return _Encoder(tokenizer, model, role, pad, bos, eos, comma)

    # -- public
    # -------------------------------------------------------------------------------------------------

    @property
    def context_dim(self) -> int:
        return sum(e.width for e in self.encoders)

    @property
    def pooled_dim(self) -> int | None:
        if self.family != "sdxl":
            return None
        return int(_projection(self.encoders[-1].model).out_features)

    def encode(self, texts: Sequence[str], clip_skip: int = 1, *, negative: bool = False) -> Cond:
        """Encode each text on its own (as A1111 does for each distinct prompt) and stack them into a batch.

        Texts of different chunk counts are brought to the longest by repeating their last token vector
        (A1111's `stack_conds`). `negative=True` marks a negative prompt (SDXL: "" then encodes as zeros).
        """
        rows = [self.encode_group([t], clip_skip, negative=negative)[0] for t in texts]
        return stack_conds(rows)

    def encode_group(self, texts: Sequence[str], clip_skip: int = 1, *, negative: bool = False) -> list[Cond]:
        """Encode texts together, as A1111 encodes the scheduled variants of one prompt; one Cond (B=1) per
        text.

        Together means: all texts padded (with empty chunks) to the group's chunk count, and the 'Original'
        emphasis mean taken over the whole group per chunk position, exactly like A1111. Cached.
        """
        texts = tuple(texts)
        zero = negative and self.family == "sdxl" and all(t == "" for t in texts)
        skip = self._effective_clip_skip(clip_skip)
        salt = self.salt() if self.salt is not None else None
        key = (texts, skip, zero, self.emphasis, self.comma_padding_backtrack, self.sdxl_clip_l_skip,
               self.old_emphasis, salt)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._zeros(len(texts)) if zero else self._encode_uncached(texts, skip)
            self._cache[key] = hit
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return [
            Cond(ctx.unsqueeze(0), pooled.unsqueeze(0) if pooled is not None else None) for ctx, pooled in hit
        ]

    def empty(self, clip_skip: int = 1) -> Cond:
        """The encoding of the empty prompt: one chunk (A1111's `cond_stage_model_empty_prompt`)."""
        return self.encode([""], clip_skip)

    def chunk_texts(self, text: str) -> list[list[int]]:
        """Token ids (77 per chunk, BOS..EOS, padded as the encoder sees them) of `text` for the first
        encoder."""
        enc = self.encoders[0]
        return [self._with_padding(enc, c.tokens) for c in self._chunks(enc, text)]

    def clear_cache(self) -> None:
        self._cache.clear()

    # -- tokenization
    # -------------------------------------------------------------------------------------------

    def _parse(self, text: str) -> list[tuple[str, float]]:
        if self.emphasis == "None":
            return [(text, 1.0)]
        return parse_prompt_attention(text)

    def _chunks(self, enc: _Encoder, text: str) -> list[_Chunk]:
        parsed = self._parse(text)
        pieces = [t for t, _ in parsed]
        ids = enc.tokenizer(pieces, truncation=False, add_special_tokens=False, verbose=False)["input_ids"]
        backtrack = self.comma_padding_backtrack
        matcher = self.embeddings() if self.embeddings is not None else None
        k = self.encoders.index(enc)

        chunks: list[_Chunk] = []
        chunk = _Chunk()
        last_comma = -1

        def close(current: _Chunk) -> None:
            nonlocal last_comma
            missing = CHUNK_TOKENS - len(current.tokens)
            current.tokens = [enc.bos_id, *current.tokens, *([enc.eos_id] * max(missing, 0)), enc.eos_id]
            current.weights = [1.0, *current.weights, *([1.0] * max(missing, 0)), 1.0]
            chunks.append(current)
            last_comma = -1

        for (piece, weight), tokens in zip(parsed, ids):
            if piece == "BREAK" and weight == -1:
                close(chunk)
                chunk = _Chunk()
                continue
            i = 0
            while i < len(tokens):
                # A1111's order: the comma / full-chunk checks see the next token first, embedding or not
                token = tokens[i]
                if token == enc.comma_id:
                    last_comma = len(chunk.tokens)
                elif (
                    backtrack != 0
                    and len(chunk.tokens) == CHUNK_TOKENS
                    and last_comma != -1
                    and len(chunk.tokens) - last_comma <= backtrack
                ):
                    # move the words after the last comma into the next chunk. As in A1111, an embedding's
                    # placeholder ids move with them but its vectors stay at their offsets in this chunk
                    # (over its padding), and the moved placeholders encode as token id 0
                    cut = last_comma + 1
                    moved_tokens, moved_weights = chunk.tokens[cut:], chunk.weights[cut:]
                    del chunk.tokens[cut:], chunk.weights[cut:]
                    close(chunk)
                    chunk = _Chunk(moved_tokens, moved_weights)
                if len(chunk.tokens) == CHUNK_TOKENS:
                    close(chunk)
                    chunk = _Chunk()
                hit = matcher.match(k, tokens, i) if matcher is not None else None
                if hit is None:
                    chunk.tokens.append(int(token))
                    chunk.weights.append(float(weight))
                    i += 1
                    continue
                # an embedding: its vectors take that many positions, never split across chunks
                emb, used = hit
                vec = emb.vectors[k if len(emb.vectors) > 1 else 0][:CHUNK_TOKENS]
                if len(chunk.tokens) + vec.shape[0] > CHUNK_TOKENS:
                    close(chunk)
                    chunk = _Chunk()
                chunk.fixes.append((len(chunk.tokens), vec))
                chunk.tokens += [0] * vec.shape[0]  # placeholder ids, replaced after the lookup
                chunk.weights += [float(weight)] * vec.shape[0]
                i += used

        if chunk.tokens or not chunks:
            close(chunk)
        return chunks

    def _old_chunk(self, enc: _Encoder, text: str) -> _Chunk:
        """A1111's `use_old_emphasis_implementation` (pipeline/diffusion/old_emphasis.py)."""
        matcher = self.embeddings() if self.embeddings is not None else None
        k = self.encoders.index(enc)
        match = (lambda ids, i: matcher.match(k, ids, i)) if matcher is not None else None
        return _Chunk(*old_chunk(enc, text, CHUNK_TOKENS, match, k, weigh=self.emphasis != "None"))

    def _empty_chunk(self, enc: _Encoder) -> _Chunk:
        return _Chunk([enc.bos_id] + [enc.eos_id] * (CHUNK_TOKENS + 1), [1.0] * CHUNK_LENGTH)

    @staticmethod
    def _with_padding(enc: _Encoder, tokens: list[int]) -> list[int]:
        """OpenCLIP: everything after the first EOS becomes the pad id (CLIP-L pads with EOS already)."""
        if enc.pad_id == enc.eos_id:
            return list(tokens)
        first_eos = tokens.index(enc.eos_id)
        return tokens[: first_eos + 1] + [enc.pad_id] * (len(tokens) - first_eos - 1)

    # -- encoding
    # -----------------------------------------------------------------------------------------------

    def _effective_clip_skip(self, clip_skip: int) -> int:
        n = max(int(clip_skip), 1)
        if self.family == "sd2" or (self.family == "sdxl" and not self.sdxl_clip_l_skip):
            return 1  # ignored, as in A1111
        return n

    def _zeros(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        ref = self.encoders[0].model
        param = next(ref.parameters())
        device = self.device or param.device
        ctx = torch.zeros(CHUNK_LENGTH, self.context_dim, device=device, dtype=param.dtype)
        pooled = torch.zeros(self.pooled_dim, device=device, dtype=param.dtype)
        return [(ctx, pooled) for _ in range(count)]

    @torch.no_grad()
    def _encode_uncached(
        self, texts: tuple[str, ...], clip_skip: int
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        unique = list(dict.fromkeys(texts))
        counts = torch.tensor([texts.count(t) for t in unique], dtype=torch.float32)
        per_encoder: list[torch.Tensor] = []  # each (U, 77*k, D_e)
        pooled: torch.Tensor | None = None
        for enc in self.encoders:
            if self.old_emphasis and enc.role != "clip":
                raise InvalidRequest("use_old_emphasis_implementation",
                                     "A1111's old emphasis implementation works with CLIP-L (SD 1.x) models "
                                     "only; A1111 fails with it on OpenCLIP (SD 2.x, SDXL): turn it off")
            chunk_lists = [[self._old_chunk(enc, t)] if self.old_emphasis else self._chunks(enc, t)
                           for t in unique]
            n_chunks = max(len(c) for c in chunk_lists)
            if per_encoder:  # SDXL: both encoders must agree on the chunk count
                n_chunks = max(n_chunks, per_encoder[0].shape[1] // CHUNK_LENGTH)
            zs = []
            for i in range(n_chunks):
                batch = [c[i] if i < len(c) else self._empty_chunk(enc) for c in chunk_lists]
                z, pool = self._run(enc, [self._with_padding(enc, c.tokens) for c in batch], clip_skip,
                                    [c.fixes for c in batch])
                weights = torch.tensor([c.weights for c in batch], dtype=torch.float32, device=z.device)
                zs.append(self._apply_emphasis(z, weights, counts.to(z.device)))
                if i == 0 and pool is not None:
                    pooled = pool
            per_encoder.append(torch.cat(zs, dim=1))
        if len(per_encoder) == 2 and per_encoder[0].shape[1] != per_encoder[1].shape[1]:
            per_encoder[0] = self._pad_with_empty(
                per_encoder[0], per_encoder[1].shape[1], self.encoders[0], clip_skip
            )
        context = torch.cat(per_encoder, dim=-1)
        by_text = {t: (context[j], pooled[j] if pooled is not None else None) for j, t in enumerate(unique)}
        return [by_text[t] for t in texts]

    def _pad_with_empty(self, z: torch.Tensor, length: int, enc: _Encoder, clip_skip: int) -> torch.Tensor:
        empty, _ = self._run(enc, [self._with_padding(enc, self._empty_chunk(enc).tokens)], clip_skip)
        reps = (length - z.shape[1]) // CHUNK_LENGTH
        return torch.cat([z, empty.expand(z.shape[0], -1, -1).repeat(1, reps, 1)], dim=1)

    def _run(
        self, enc: _Encoder, token_rows: list[list[int]], clip_skip: int,
        fixes: list[list[tuple[int, torch.Tensor]]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        model = enc.model
        param = next(model.parameters())
        ids = torch.tensor(token_rows, dtype=torch.long, device=self.device or param.device)
        self.encoder_calls += 1
        handle = None
        if fixes and any(fixes):
            def put_vectors(_module: Any, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
                out = out.clone()
                for row, row_fixes in enumerate(fixes):
                    for offset, vec in row_fixes:  # after BOS, before the position embeddings
                        out[row, offset + 1:offset + 1 + vec.shape[0]] = vec.to(out)
                return out

            handle = model.get_input_embeddings().register_forward_hook(put_vectors)
        try:
            out = model(input_ids=ids, output_hidden_states=True)
        finally:
            if handle is not None:
                handle.remove()
        hidden = out.hidden_states
        pooled = None
        if enc.role == "clip":
            if clip_skip > 1:
                z = _final_layer_norm(model)(self._layer(hidden, clip_skip))
            else:
                z = out.last_hidden_state
        elif enc.role == "openclip":
            z = out.last_hidden_state
        elif enc.role == "xl_clip_l":
            z = self._layer(hidden, clip_skip) if self.sdxl_clip_l_skip else hidden[-2]
        else:  # xl_bigg
            z = hidden[-2]
            eos_at = (ids == enc.eos_id).int().argmax(dim=-1)
            last = out.last_hidden_state[torch.arange(ids.shape[0], device=ids.device), eos_at]
            pooled = _projection(model)(last)
        return z, pooled

    @staticmethod
    def _layer(hidden: tuple[torch.Tensor, ...], clip_skip: int) -> torch.Tensor:
        if clip_skip > len(hidden):
            raise InvalidRequest(
                "CLIP_stop_at_last_layers",
                f"clip skip {clip_skip} exceeds the text encoder's {len(hidden) - 1} layers",
            )
        return hidden[-clip_skip]

    def _apply_emphasis(self, z: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """z (U, 77, D) for U unique texts; counts: how often each occurs in the group (the mean is over the
        group)."""
        if self.emphasis in ("Ignore", "None"):
            return z
        dtype = z.dtype
        z32 = z.float()
        weighted = z32 * weights.unsqueeze(-1)
        if self.emphasis == "No norm":
            return weighted.to(dtype)

        def group_mean(t: torch.Tensor) -> torch.Tensor:
            return (t.mean(dim=(1, 2)) * counts).sum() / counts.sum()

        original_mean = group_mean(z32)
        new_mean = group_mean(weighted)
        if new_mean == 0:  # A1111 would produce NaN here; keep the weighted values instead
            return weighted.to(dtype)
        return (weighted * (original_mean / new_mean)).to(dtype)


def stack_conds(rows: Sequence[Cond]) -> Cond:
    """Concatenate Conds on the batch axis; shorter contexts are lengthened by repeating their last token
    vector (A1111's `stack_conds`, used for prompts of different lengths in one batch)."""
    longest = max(r.context.shape[1] for r in rows)
    contexts = []
    for r in rows:
        ctx = r.context
        if ctx.shape[1] < longest:
            ctx = torch.cat([ctx, ctx[:, -1:].expand(-1, longest - ctx.shape[1], -1)], dim=1)
        contexts.append(ctx)
    pooled = torch.cat([r.pooled for r in rows]) if rows[0].pooled is not None else None
    return Cond(torch.cat(contexts), pooled)


def pad_to_same_length(cond: Cond, uncond: Cond, empty: Cond) -> tuple[Cond, Cond]:
    """A1111's "Pad prompt/negative prompt" option (`pad_cond_uncond`): append copies of the empty prompt's
    encoding (`PromptEncoder.empty()`, 77 tokens) to the shorter of cond/uncond until both have as many
    chunks.

    A1111's default (option off) does not pad: when the lengths differ it runs the UNet separately for cond
    and uncond, each with its own length. Use this only to emulate the option (infotext "Pad conds: True").
    """
    unit = empty.context.shape[1]
    repeats = (cond.context.shape[1] - uncond.context.shape[1]) // unit
    if repeats == 0:
        return cond, uncond

    def padded(c: Cond, n: int) -> Cond:
        extra = empty.context.to(c.context).expand(c.context.shape[0], -1, -1).repeat(1, n, 1)
        return Cond(torch.cat([c.context, extra], dim=1), c.pooled)

    if repeats < 0:
        return padded(cond, -repeats), uncond
    return cond, padded(uncond, repeats)
