"""Per-image blur-kernel estimation: the learned estimator and KernelGAN."""
