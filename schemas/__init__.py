"""Pydantic request/response models with AUTOMATIC1111's names and defaults. A leaf: imports nothing of ours."""
