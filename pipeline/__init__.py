"""The device side: checkpoints, prompts, samplers, the two-pass sampler, infotext, hooks, progress.

Knows nothing of HTTP. `pipeline.runtime.worker.Worker` is the single owner of the device."""
