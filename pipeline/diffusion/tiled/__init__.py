"""Latent tiling for big sampling passes: MultiDiffusion (Bar-Tal et al. 2023: every latent pixel is the
plain average of the overlapping tiles' predictions) and Mixture of Diffusers (Jimenez 2023: a Gaussian
weight per tile, so small overlaps suffice). The merge happens on the guided model output of every call,
so every sampler, CFG, prompt editing and the per-step callback work unchanged.

plan.py: where the tiles go; merge.py: the tile weights and the wrapped model."""
from .merge import TiledGuidance, TileSettings
from .plan import Window, grid_positions, plan_windows

__all__ = ["TileSettings", "TiledGuidance", "Window", "grid_positions", "plan_windows"]
