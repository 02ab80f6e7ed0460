"""LightningModules that compose the method's pieces: segmenter, diffusion model, adaptation."""
