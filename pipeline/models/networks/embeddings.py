"""Textual-inversion embeddings with A1111 v1.10's semantics.

Files: `.pt`/`.bin` (unpickled with `weights_only=True`, `ParameterDict` allowed, nothing else that is not
plain data), `.safetensors`, and A1111's image embeddings (`image_embeddings.py`) under the embeddings
folder, recursively; the name is the file stem (an image's embedded `name` when it has one; a later file
wins). Accepted structures: A1111's `string_to_param` with exactly one tensor, SDXL's `clip_l` +
`clip_g`, or any dict holding a single tensor. A file is `loaded` for the current model when its width
fits the text encoder(s) (SD1 768, SD2 1024, SDXL 768 + 1280), else `skipped` with the reason.

Matching is on CLIP token ids (so case-insensitive and on token boundaries): each name is tokenized and
indexed by its first id, longest first; the prompt encoder asks `match(tokens, i)` at each position."""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.models.networks.files import natural_key, walk
from pipeline.models.networks.image_embeddings import SUFFIXES as IMAGE_SUFFIXES
from pipeline.models.networks.image_embeddings import read_image_embedding

log = logging.getLogger("hiresd.networks")

SUFFIXES = (".pt", ".bin", ".safetensors", *IMAGE_SUFFIXES)


class EmbeddingFileError(Exception):
    """An embedding file that cannot be read or has no structure A1111 understands."""


@dataclass
class Embedding:
    """One embedding file: its vectors per text encoder (SD1/SD2: one (n, D); SDXL: clip_l, clip_g)."""

    name: str
    path: Path
    vectors: list[torch.Tensor]
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    bundled: bool = False  # from a LoRA file's `bundle_emb.<name>.*` keys (`path` is `<lora file>/<name>`)
    _hash: str | None = field(default=None, repr=False)

    @property
    def count(self) -> int:
        return int(self.vectors[-1].shape[0])

    @property
    def width(self) -> int:
        return sum(int(v.shape[1]) for v in self.vectors)

    @property
    def shorthash(self) -> str:
        if self._hash is None:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            self._hash = h.hexdigest()
        return self._hash[:12]

    def api_item(self) -> dict[str, Any]:
        return {"step": self.step, "sd_checkpoint": self.sd_checkpoint,
                "sd_checkpoint_name": self.sd_checkpoint_name, "shape": self.width, "vectors": self.count}


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to(torch.float32, copy=True)
    return t.unsqueeze(0) if t.dim() == 1 else t


def _tensors(obj: Any) -> list[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        return [("", obj)]
    if isinstance(obj, (dict, torch.nn.ParameterDict)):
        return [(str(k), v) for k, v in obj.items() if isinstance(v, torch.Tensor)]
    return []


def read_embedding(path: Path) -> Embedding | None:
    """Read one embedding file (EmbeddingFileError with the reason when it cannot be used; None for an
    image that holds no embedding, such as a `.preview.png`)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        try:
            found = read_image_embedding(path)
        except Exception as exc:  # noqa: BLE001 - broken images, bad base64 / JSON alike
            raise EmbeddingFileError(f"unreadable image embedding: {exc}") from exc
        if found is None:
            return None
        return embedding_from_data(found[1], found[0], path.resolve())
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        else:
            with torch.serialization.safe_globals([torch.nn.ParameterDict]):
                data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling refusals and broken files alike
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EmbeddingFileError(f"unreadable or not plain data (pickles may hold only tensors and plain "
                                 f"containers): {first}") from exc
    if not isinstance(data, dict):
        raise EmbeddingFileError(f"not a dict of tensors (found {type(data).__name__})")
    return embedding_from_data(data, path.stem, path.resolve())


def embedding_from_data(data: dict[str, Any], name: str, path: Path, bundled: bool = False) -> Embedding:
    """An embedding from a file's dict (or a LoRA file's bundled part), by A1111's rules: `string_to_param`
    with exactly one tensor, SDXL's `clip_l` + `clip_g`, or a dict holding a single tensor."""
    meta = {"step": data.get("step"), "sd_checkpoint": data.get("sd_checkpoint"),
            "sd_checkpoint_name": data.get("sd_checkpoint_name")}
    meta = {k: (v if isinstance(v, (int, str)) and not isinstance(v, bool) else None)
            for k, v in meta.items()}
    if "string_to_param" in data:
        params = _tensors(data["string_to_param"])
        if len(params) != 1:
            raise EmbeddingFileError(f"string_to_param holds {len(params)} tensors; exactly one is needed")
        vectors = [_as_matrix(params[0][1])]
    elif "clip_l" in data and "clip_g" in data:
        vectors = [_as_matrix(data["clip_l"]), _as_matrix(data["clip_g"])]
        if vectors[0].shape[0] != vectors[1].shape[0]:
            raise EmbeddingFileError(f"clip_l has {vectors[0].shape[0]} vectors and clip_g "
                                     f"{vectors[1].shape[0]}")
    else:
        found = _tensors(data)
        if len(found) != 1:
            raise EmbeddingFileError(f"couldn't identify the embedding: {len(found)} tensors in the file "
                                     "(expected string_to_param, clip_l + clip_g, or one tensor)")
        vectors = [_as_matrix(found[0][1])]
    if any(v.dim() != 2 or v.shape[0] == 0 for v in vectors):
        raise EmbeddingFileError(f"vectors of shape {[tuple(v.shape) for v in vectors]}; (n, width) needed")
    return Embedding(name, path, vectors, meta["step"], meta["sd_checkpoint"], meta["sd_checkpoint_name"],
                     bundled)


class EmbeddingDatabase:
    """The embedding files of a folder, read at first use and on `refresh()`; `generation` counts reloads."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.generation = 0
        self.errors: dict[str, str] = {}
        self._all: dict[str, Embedding] = {}
        self._lock = threading.Lock()
        self._loaded = False
        self._mtime: float | None = None

    def refresh(self) -> None:
        found: dict[str, Embedding] = {}
        errors: dict[str, str] = {}
        # every folder, hidden ones too: A1111's load_from_dir walks them all (list_hidden_files is not read)
        for path in walk(self.folder, SUFFIXES) if self.folder is not None else []:
            try:
                if path.stat().st_size == 0:
                    continue
                emb = read_embedding(path)
            except (EmbeddingFileError, OSError) as exc:
                errors[str(path)] = str(exc)
                log.warning("embedding %s skipped: %s", path, exc)
                continue
            if emb is None:  # a picture (a preview), not an embedding
                continue
            found[emb.name] = emb
        with self._lock:
            self._all, self.errors, self._loaded = found, errors, True
            self._mtime = self._folder_mtime()
            self.generation += 1

    def _folder_mtime(self) -> float | None:
        try:
            return self.folder.stat().st_mtime if self.folder is not None else None
        except OSError:
            return None

    def ensure(self) -> None:
        """Load at first use; reload when the folder's mtime changed (a file added or removed at the top)."""
        if not self._loaded or self._folder_mtime() != self._mtime:
            self.refresh()

    def all(self) -> dict[str, Embedding]:
        self.ensure()
        with self._lock:
            return dict(self._all)

    def for_widths(self, widths: list[int]) -> tuple[dict[str, Embedding], dict[str, tuple[Embedding, str]]]:
        """(loaded, skipped with reason) for text encoders of these widths."""
        loaded: dict[str, Embedding] = {}
        skipped: dict[str, tuple[Embedding, str]] = {}
        for name, emb in sorted(self.all().items(), key=lambda kv: natural_key(kv[0])):
            if fits_widths(emb, widths):
                loaded[name] = emb
            else:
                skipped[name] = (emb, misfit_reason(emb, widths))
        return loaded, skipped


def misfit_reason(emb: Embedding, widths: list[int]) -> str:
    parts = [int(v.shape[1]) for v in emb.vectors]
    return (f"width {emb.width} ({'+'.join(map(str, parts))}) does not fit this model's text "
            f"encoder{'s' if len(widths) > 1 else ''} ({'+'.join(map(str, widths))})")


def fits_widths(emb: Embedding, widths: list[int]) -> bool:
    """Whether the embedding's vectors fit text encoders of these widths (SDXL: clip_l + clip_g)."""
    parts = [int(v.shape[1]) for v in emb.vectors]
    return parts == list(widths) or (len(widths) == 1 and parts == [sum(widths)])


class EmbeddingMatcher:
    """The loaded embeddings of one model, indexed by token ids for one tokenizer per text encoder."""

    def __init__(self, embeddings: dict[str, Embedding], tokenizers: list[Any], generation: Any) -> None:
        self.generation = generation
        self.embeddings = embeddings
        self._index: list[dict[int, list[tuple[list[int], Embedding]]]] = []
        for tok in tokenizers:
            index: dict[int, list[tuple[list[int], Embedding]]] = {}
            for name, emb in embeddings.items():
                ids = tok(name, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
                if ids:
                    index.setdefault(ids[0], []).append((list(ids), emb))
            for entries in index.values():
                entries.sort(key=lambda e: len(e[0]), reverse=True)
            self._index.append(index)

    def match(self, encoder: int, tokens: list[int], i: int) -> tuple[Embedding, int] | None:
        """The embedding whose name's ids start at `tokens[i]` (longest first), with its token count."""
        for ids, emb in self._index[encoder].get(tokens[i], ()):
            if tokens[i:i + len(ids)] == ids:
                return emb, len(ids)
        return None

    def used(self, encoder_tokens: list[list[int]]) -> list[Embedding]:
        """The embeddings the token sequences contain, in order (for `TI hashes`)."""
        out: list[Embedding] = []
        for tokens in encoder_tokens:
            i = 0
            while i < len(tokens):
                hit = self.match(0, tokens, i)
                if hit is None:
                    i += 1
                    continue
                if hit[0] not in out:
                    out.append(hit[0])
                i += hit[1]
        return out
