"""A job's extra networks: the per-pass activation of a prompt's LoRA set and the infotext hashes it
writes (`Lora hashes`, `TI hashes`), and the check of a job's tags before it is queued."""
from __future__ import annotations

from typing import Any

from pipeline.diffusion.prompts import parse_prompt_attention
from pipeline.models.checkpoints.loader import detect_checkpoint
from pipeline.models.networks.embeddings import EmbeddingMatcher
from pipeline.models.networks.registry import ActiveLora, Networks
from pipeline.models.networks.tags import parse_tags, strip_tags


def hash_items(text: str | None) -> dict[str, str]:
    """`name: hash, name2: hash` (an infotext `Lora hashes` / `TI hashes` value) as a dict."""
    out: dict[str, str] = {}
    for item in (text or "").split(", "):
        name, sep, value = item.rpartition(": ")
        if sep:
            out[name] = value
    return out


def hash_value(items: dict[str, str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in items.items())


def _infotext_name(name: str) -> str:
    return name.replace(":", "").replace(",", "")


def default_lora_tag(networks: Networks | None, p: Any, prompt: str) -> str:
    """A1111's option `sd_lora` (the Lora extension's ExtraNetworkLora.activate): when it names a LoRA file
    (its name, the file name without extension) that the prompt does not already name in a `<lora:...>`
    tag, `<lora:NAME:M>` is what A1111 appends to the prompt, M being `extra_networks_default_multiplier`
    (written as Python writes the number). "" otherwise, and with `disable_extra_networks`."""
    name = str(p.options.get("sd_lora") or "None")
    if networks is None or name == "None" or getattr(p.request, "disable_extra_networks", False):
        return ""
    if not any(f.name == name for f in networks.loras.list()):
        return ""
    if any(t.type == "lora" and t.name == name for t in parse_tags(prompt)[1]):
        return ""
    return f"<lora:{name}:{p.options.get('extra_networks_default_multiplier', 1.0)}>"


def activate_for_pass(networks: Networks | None, model: Any, p: Any, prompt: str,
                      negative: str | None = None, lenient: bool = False) -> list[ActiveLora]:
    """A1111's per-pass activation: the LoRA set of this pass's prompt (pass two: the hires prompt's) is
    applied to `model` before its conditioning is encoded; with `disable_extra_networks` none is (never
    the previous job's). The LoRAs used are added to the job's `Lora hashes` (keys as typed), the
    embeddings the prompt and `negative` use to its `TI hashes` (whatever the encoder's cache did).
    `lenient` (a refiner taking over): a LoRA none of whose modules exists in `model` is left off it, as
    A1111's per-module patching leaves it, instead of failing the job. The `sd_lora` option's LoRA
    (`default_lora_tag`) is part of every pass's set."""
    if networks is None:
        return []
    if "lora_cache_mb" in p.options:
        networks.cache.limit_bytes = int(float(p.options["lora_cache_mb"]) * 2**20)
    networks.backups = str(p.options.get("lora_backup_device", "auto"))
    networks.functional = bool(p.options.get("lora_functional", False))
    networks.cache.limit_count = int(p.options.get("lora_in_memory_limit", 0) or 0)
    disabled = bool(getattr(p.request, "disable_extra_networks", False))
    prompt = prompt + default_lora_tag(networks, p, prompt)  # a hires prompt of its own gets it too
    active = networks.activate(model, None if disabled else prompt, lenient=lenient)
    matcher = networks.matcher_for(model)  # the folder's embeddings and the applied LoRAs' bundled ones
    add_ti = p.options.get("textual_inversion_add_hashes_to_infotext", True)
    if negative is not None and matcher.embeddings and add_ti:
        used = used_embeddings(matcher, model.tokenizers[0], [prompt, negative])
        if used:
            bundled = model.extra.get("networks.bundled", {})
            items = hash_items(p.extra_generation_params.get("TI hashes"))
            for emb in used:
                if emb.bundled:  # A1111 writes the LoRA's name (as typed) where a hash would be
                    lora = bundled[emb.name][1] if emb.name in bundled else ""
                    value = lora if p.options.get("lora_bundled_ti_to_infotext", True) else ""
                else:
                    value = emb.shorthash
                items.setdefault(_infotext_name(emb.name), value)
            p.extra_generation_params["TI hashes"] = hash_value(items)
    if active and p.options.get("lora_add_hashes_to_infotext", True):
        items = hash_items(p.extra_generation_params.get("Lora hashes"))
        for a in active:
            items.setdefault(_infotext_name(a.params.name), a.file.shorthash)
        p.extra_generation_params["Lora hashes"] = hash_value(items)
    return active


def activate_for_refiner(networks: Networks | None, model: Any, p: Any, prompt: str, negative: str) -> None:
    """The pass's networks on a refiner taking over (`activate_for_pass`, lenient): what `/embeddings` lists
    stays the job's own model's (the refiner is per job, never the server's current model)."""
    if networks is None:
        return
    widths, bundled = networks.last_widths, networks.last_bundled
    try:
        activate_for_pass(networks, model, p, prompt, negative, lenient=True)
    finally:
        networks.last_widths, networks.last_bundled = widths, bundled


def checkpoint_family(models: Any, key: str | None) -> str | None:
    """The family of a checkpoint (header-only detection when not yet known), None when unknown."""
    if not key:
        return None
    try:
        info = models.find(key)
        if info.family is None and info.kind != "builtin":
            detect_checkpoint(info)
        return info.family
    except Exception:  # noqa: BLE001 - an unreadable checkpoint fails later, with its own message
        return None


def check_job(networks: Networks | None, p: Any, models: Any) -> None:
    """Validate a txt2img job's LoRA tags before it is queued: the prompt's against the checkpoint, the
    hires prompt's (when it has its own) against the hires checkpoint. Nothing when
    `disable_extra_networks` is set: the tags are then only stripped."""
    if networks is None or getattr(p.request, "disable_extra_networks", False):
        return
    family = checkpoint_family(models, p.checkpoint)
    networks.resolve(p.prompt, family)
    if getattr(p, "enable_hr", False) and getattr(p, "hr_prompt", ""):
        hr_checkpoint = getattr(p, "hr_checkpoint", None)
        hr_family = checkpoint_family(models, hr_checkpoint) if hr_checkpoint else family
        networks.resolve(p.hr_prompt, hr_family, "hr_prompt")


def used_embeddings(matcher: EmbeddingMatcher, tokenizer: Any, texts: list[str]) -> list[Any]:
    """The embeddings the texts mention (emphasis runs tokenized as the prompt encoder does)."""
    rows: list[list[int]] = []
    for text in texts:
        pieces = [t for t, _ in parse_prompt_attention(strip_tags(text))] if text else []
        for ids in tokenizer(pieces, add_special_tokens=False, truncation=False, verbose=False)["input_ids"] \
                if pieces else []:
            rows.append(list(ids))
    return matcher.used(rows)
