"""Models: checkpoints and their loading, the model manager, the loaded-model type, VAE files and coding,
the built-in model, extra networks (LoRA, embeddings) and speed options (accel)."""
