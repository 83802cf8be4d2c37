"""`Networks`: the LoRA-family files and embeddings of the models folder, parsed once and cached, checked
against a job's tags (`check()`/`resolve()`: unknown name, bad multiplier, wrong model family, a 400 naming
the tag) and applied to a model (`activate()`: a prompt's LoRA set becomes the one patched in, restored
exactly; no set for `None`). The per-pass use by a job is activation.py."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.models.networks.embeddings import (
    Embedding,
    EmbeddingDatabase,
    EmbeddingFileError,
    EmbeddingMatcher,
    embedding_from_data,
    fits_widths,
    misfit_reason,
)
from pipeline.models.networks.files import LoraFile, LoraIndex, NetworkFileError, TensorCache, load_tensors
from pipeline.models.networks.keys import file_family, split_key, target_map
from pipeline.models.networks.patch import Patcher, Step
from pipeline.models.networks.tags import LoraParams, lora_params, parse_tags
from pipeline.models.networks.types import ModuleNetwork, NetworkTypeError, classify
from pipeline.runtime.errors import InvalidRequest

log = logging.getLogger("hiresd.networks")
DEFAULT_CACHE_MB = 1024


@dataclass
class ParsedNetwork:
    """A network file parsed once: its modules' factors by key stem, and the embeddings it bundles."""

    path: str
    mtime: float
    modules: dict[str, ModuleNetwork]
    unknown_keys: list[str]
    embeddings: dict[str, Embedding] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        vectors = sum(v.numel() * v.element_size() for e in self.embeddings.values() for v in e.vectors)
        return sum(m.nbytes for m in self.modules.values()) + vectors


def parse_network(lf: LoraFile) -> ParsedNetwork:
    tensors = load_tensors(lf.path)
    groups: dict[str, dict[str, Any]] = {}
    unknown: list[str] = []
    bundle: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("bundle_emb."):
            _bundle_part(bundle, key, value, lf)
            continue
        split = split_key(key)
        if split is None:
            unknown.append(key)
            continue
        stem, factor = split
        groups.setdefault(stem, {})[factor] = value
    modules: dict[str, ModuleNetwork] = {}
    for stem, factors in groups.items():
        try:
            modules[stem] = classify(factors)
        except NetworkTypeError as exc:
            raise NetworkFileError(f"{lf.path}: module {stem}: {exc}") from exc
    if unknown:
        log.debug("%s: %d keys not understood, e.g. %s", lf.path, len(unknown), unknown[:3])
    embeddings: dict[str, Embedding] = {}
    for name, data in bundle.items():
        try:
            embeddings[name] = embedding_from_data(data, name, lf.path / name, bundled=True)
        except EmbeddingFileError as exc:
            raise NetworkFileError(f"{lf.path}: bundled embedding {name!r}: {exc}") from exc
    return ParsedNetwork(str(lf.path), lf.mtime, modules, unknown, embeddings)


def _bundle_part(bundle: dict[str, dict[str, Any]], key: str, value: Any, lf: LoraFile) -> None:
    """A1111's reading of `bundle_emb.<name>.string_to_param.<k>` (an A1111 embedding's tensor) and
    `bundle_emb.<name>.<part>` (`clip_l`, `clip_g`, or a single tensor) into `bundle[name]`."""
    name, _, part = key[len("bundle_emb."):].partition(".")
    if not name or not part:
        raise NetworkFileError(f"{lf.path}: key {key!r} is not bundle_emb.<name>.<vector name>")
    data = bundle.setdefault(name, {})
    head, _, sub = part.partition(".")
    if head == "string_to_param":
        if not sub:
            raise NetworkFileError(f"{lf.path}: key {key!r} needs bundle_emb.<name>.string_to_param.<token>")
        data["string_to_param"] = {sub: value}
    else:
        data[part] = value


@dataclass(frozen=True)
class ActiveLora:
    """A LoRA a pass applied: the tag's parameters and the file."""

    params: LoraParams
    file: LoraFile


class Networks:
    """LoRA folders, the parsed-file cache and the per-model patchers; thread-safe for listing, while
    `activate` runs on the worker."""

    def __init__(self, lora_dirs: list[Path], embeddings_dir: Path | None = None,
                 cache_mb: float = DEFAULT_CACHE_MB) -> None:
        self.loras = LoraIndex(lora_dirs)
        self.embeddings = EmbeddingDatabase(embeddings_dir)
        self.last_widths: list[int] | None = None  # text-encoder widths of the model last prepared
        self.last_bundled: dict[str, Embedding] = {}  # the embeddings its applied LoRA files bundle
        self.cache = TensorCache(int(cache_mb * 2**20))
        self.backups = "auto"  # where patched parameters' backups live: one of patch.BACKUP_DEVICES
        self.functional = False  # option lora_functional: networks added to layer outputs, not merged

    @classmethod
    def for_models_dir(cls, models_dir: Path, lora_dir: Path | None = None, lyco_dir: Path | None = None,
                       embeddings_dir: Path | None = None, cache_mb: float = DEFAULT_CACHE_MB) -> Networks:
        """A1111's folders: `<models>/Lora`, `<models>/LyCORIS`, `<models>/embeddings` unless given."""
        return cls([lora_dir or models_dir / "Lora", lyco_dir or models_dir / "LyCORIS"],
                   embeddings_dir or models_dir / "embeddings", cache_mb)

    # -- validation (before queueing) ----------------------------------------------------------------
    def resolve(self, prompt: str, family: str | None = None, field: str = "prompt") -> list[ActiveLora]:
        """The LoRAs a prompt's tags name, each found on disk and fitting `family` (when known), else an
        InvalidRequest naming the tag. Unknown tag types are only stripped, as in A1111."""
        _, tags = parse_tags(prompt)
        out: list[ActiveLora] = []
        try:
            wanted = lora_params(tags)
        except InvalidRequest as exc:
            raise InvalidRequest(field, str(exc).split(": ", 1)[1]) from None
        for params in wanted:
            lf = self.loras.find(params.name)
            if lf is None:
                raise InvalidRequest(field, f"{params.tag}: no LoRA named {params.name!r} in "
                                     f"{', '.join(str(f) for f in self.loras.folders)} (A1111 would silently "
                                     "ignore it)", self.loras.closest(params.name))
            if family is not None:
                self._check_family(params, lf, family, field)
            out.append(ActiveLora(params, lf))
        return out

    def _check_family(self, params: LoraParams, lf: LoraFile, family: str, field: str) -> None:
        got = file_family(list(lf.shapes))
        if got is None:
            return
        if (got == "sdxl") != (family == "sdxl"):
            trained = "SDXL" if got == "sdxl" else "SD 1.x/2.x"
            raise InvalidRequest(field, f"{params.tag}: LoRA {lf.name!r} was trained for {trained} models "
                                 f"and the checkpoint is {family}; it would apply partially and distort "
                                 "the image (A1111 applies it silently)",
                                 [f.name for f in self.loras.list() if self._fits(f, family)][:10])

    @staticmethod
    def _fits(lf: LoraFile, family: str) -> bool:
        got = file_family(list(lf.shapes))
        return got is None or (got == "sdxl") == (family == "sdxl")

    # -- textual inversion -----------------------------------------------------------------------------
    def matcher_for(self, model: Any) -> EmbeddingMatcher:
        """The embeddings that fit `model`, indexed for its tokenizers (rebuilt after a reload or a change
        of applied LoRAs): the folder's, and those bundled in the applied LoRA files whose names the
        folder's do not take (A1111 skips a bundled one when the folder has it)."""
        self.embeddings.ensure()
        bundled: dict[str, tuple[Embedding, str]] = model.extra.get("networks.bundled", {})
        key = (self.embeddings.generation, tuple((name, id(emb)) for name, (emb, _) in bundled.items()))
        matcher = model.extra.get("networks.embeddings")
        if matcher is None or matcher.generation != key:
            widths = encoder_widths(model)
            loaded, _ = self.embeddings.for_widths(widths)
            for name, (emb, _) in bundled.items():
                if name not in loaded and fits_widths(emb, widths):
                    loaded[name] = emb
            matcher = model.extra["networks.embeddings"] = EmbeddingMatcher(loaded, model.tokenizers, key)
        self.last_widths = encoder_widths(model)
        self.last_bundled = {name: emb for name, (emb, _) in bundled.items()}
        return matcher

    def embeddings_api(self, widths: list[int]) -> dict[str, dict[str, Any]]:
        """`GET /sdapi/v1/embeddings` for text encoders of these widths: A1111's `loaded` / `skipped`
        items (`step`, `sd_checkpoint`, `sd_checkpoint_name`, `shape`, `vectors`), a skipped one with
        its `reason` too. The embeddings bundled in the LoRA files applied to the model last prepared are
        listed while they are applied (A1111 registers them with the folder's), unless a folder embedding
        takes the name; one that does not fit is skipped with its reason."""
        loaded, skipped = self.embeddings.for_widths(widths)
        for name, emb in self.last_bundled.items():
            if name in loaded or name in skipped:
                continue
            if fits_widths(emb, widths):
                loaded[name] = emb
            else:
                skipped[name] = (emb, misfit_reason(emb, widths))
        return {"loaded": {n: e.api_item() for n, e in sorted(loaded.items(), key=lambda kv: kv[0].lower())},
                "skipped": {n: {**e.api_item(), "reason": why} for n, (e, why) in skipped.items()}}

    # -- activation (worker thread) ------------------------------------------------------------------
    def activate(self, model: Any, prompt: str | None, lenient: bool = False) -> list[ActiveLora]:
        """Apply the LoRA set of `prompt`'s tags to `model` (only the tags' set, every earlier one off);
        `None` or a prompt without tags applies none. Returns what is now applied. `lenient`: a LoRA that
        matches no module of `model` is skipped (else it is an InvalidRequest)."""
        active = self.resolve(prompt) if prompt else []
        last = {a.params.name: a.params for a in active}  # a repeated name uses its last multipliers
        signature = tuple((a.file.path, a.file.mtime, last[a.params.name].te, last[a.params.name].unet,
                           last[a.params.name].dyn) for a in active)
        if active and self.functional:  # option lora_functional: another way to apply the same set
            signature = ("functional", *signature)
        patcher: Patcher = model.extra.setdefault("networks.patcher", Patcher())
        patcher.backups = self.backups
        if signature == patcher.signature:
            return active
        plan: list[Step] = []
        targets = None
        keep = {(str(a.file.path), a.file.mtime) for a in active}
        bundled: dict[str, tuple[Embedding, str]] = {}  # embedding name -> (embedding, LoRA name as typed)
        model.extra["networks.bundled"] = {}
        for a in active:
            params = last[a.params.name]
            parsed = self._parsed(a.file, keep)
            for emb_name, emb in parsed.embeddings.items():  # a later LoRA's wins, as A1111 registers them
                bundled[emb_name] = (emb, a.params.name)
            if targets is None:
                targets = model.extra.get("networks.targets")
                if targets is None:
                    targets = model.extra["networks.targets"] = target_map(model)
            plan += self._plan(params, a.file, parsed, targets, lenient)
        try:
            changed = patcher.apply(signature, plan, functional=self.functional)
        except (NetworkTypeError, RuntimeError) as exc:
            raise InvalidRequest("prompt", f"a LoRA of {[a.params.tag for a in active]} does not fit the "
                                 f"loaded model: {exc}") from exc
        self.cache.trim(keep)
        model.extra["networks.bundled"] = bundled
        if changed:
            model.extra["networks.salt"] = signature
            log.info("networks on %s: %s", model.title,
                     ", ".join(f"{a.params.name} te={last[a.params.name].te} unet={last[a.params.name].unet}"
                               for a in active) or "none")
        return active

    def _parsed(self, lf: LoraFile, keep: set[tuple[str, float]]) -> ParsedNetwork:
        key = (str(lf.path), lf.mtime)
        hit = self.cache.get(key)
        if hit is None:
            try:
                hit = parse_network(lf)
            except NetworkFileError as exc:
                raise InvalidRequest("prompt", f"LoRA {lf.name!r}: {exc}") from exc
            self.cache.put(key, hit, hit.nbytes, keep)
        return hit

    @staticmethod
    def _plan(params: LoraParams, lf: LoraFile, parsed: ParsedNetwork, targets: dict[str, Any],
              lenient: bool = False) -> list[Step]:
        steps: list[Step] = []
        missing: list[str] = []
        for stem, net in parsed.modules.items():
            target = targets.get(stem)
            if target is None:
                missing.append(stem)
                continue
            steps.append(Step(target, net, params.te if target.is_te else params.unet, params.dyn))
        if missing:
            log.debug("LoRA %s: %d modules match nothing in the model, e.g. %s", lf.name, len(missing),
                      missing[:3])
        if parsed.modules and not steps and not lenient:
            raise InvalidRequest("prompt", f"{params.tag}: none of the {len(parsed.modules)} modules of LoRA "
                                 f"{lf.name!r} exists in the loaded model (e.g. {missing[0]!r}); it was made "
                                 "for another kind of model")
        return steps


FAMILY_WIDTHS = {"sd1": [768], "sd2": [1024], "sdxl": [768, 1280]}


def encoder_widths(model: Any) -> list[int]:
    return [int(e.get_input_embeddings().weight.shape[1]) for e in model.text_encoders]
