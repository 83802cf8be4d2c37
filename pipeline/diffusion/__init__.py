"""The sampling core: the loop, denoise-from-strength, samplers, prompt conditioning and syntax, seeds,
previews, tiled (MultiDiffusion) sampling and seamless padding."""
