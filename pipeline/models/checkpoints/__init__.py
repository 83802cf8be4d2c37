"""Checkpoints: discovery and A1111 naming (`registry`), hashes (`hashing`), family detection
(`detect`), the architecture read from a file's tensors (`architecture`, `folder_layout`), LDM key
conversion (`convert`), the shipped configs and tokenizer (`shipped`) and offline, strict loading into an
`SDModel` (`loader`)."""
from pipeline.models.checkpoints.detect import Detection, detect_family
from pipeline.models.checkpoints.hashing import HashCache
from pipeline.models.checkpoints.loader import (
    CONFIGS_DIR,
    detect_checkpoint,
    header_shapes,
    load_checkpoint,
    probe_v_prediction,
    read_state_dict,
)
from pipeline.models.checkpoints.registry import CheckpointInfo, CheckpointRegistry, discover

__all__ = [
    "CONFIGS_DIR", "CheckpointInfo", "CheckpointRegistry", "Detection", "HashCache", "detect_checkpoint",
    "detect_family", "discover", "header_shapes", "load_checkpoint", "probe_v_prediction", "read_state_dict",
]
