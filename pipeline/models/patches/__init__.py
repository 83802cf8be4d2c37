"""Per-pass UNet patches (layer.py: the patching layer; blocks.py: the skip connections by block number)."""
from pipeline.models.patches.layer import PassInfo, UNetCall, UNetPatch, UNetPatcher, apply_patches

__all__ = ["PassInfo", "UNetCall", "UNetPatch", "UNetPatcher", "apply_patches"]
