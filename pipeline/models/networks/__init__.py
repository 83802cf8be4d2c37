"""Extra networks: prompt tags, LoRA-family files patched into the loaded model's weights (restored
exactly), and textual-inversion embeddings, all with AUTOMATIC1111 v1.10's semantics.

`Networks` is the one entry point. `check()` validates a job's tags before it is queued (unknown name,
bad multiplier, wrong model family: a 400 naming the tag); `activate()` makes a prompt's LoRA set the one
applied to a model (no set for `None`), right before its conditioning is encoded."""
from pipeline.models.networks.activation import (
    activate_for_pass,
    check_job,
    checkpoint_family,
    default_lora_tag,
)
from pipeline.models.networks.registry import (
           FAMILY_WIDTHS,
           Networks,
           ParsedNetwork,
           encoder_widths,
           parse_network,
)
from pipeline.models.networks.tags import strip_tags

__all__ = ["FAMILY_WIDTHS", "Networks", "ParsedNetwork", "activate_for_pass", "check_job", "checkpoint_family",
           "default_lora_tag", "encoder_widths", "parse_network", "strip_tags"]
