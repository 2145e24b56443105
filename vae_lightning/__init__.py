"""vae-lightning: Variational Autoencoders on images with PyTorch Lightning and Hydra."""

from vae_lightning.config import register_resolvers
from vae_lightning.module import VAE
from vae_lightning.speed import skip_failing_nvml_probe

register_resolvers()
skip_failing_nvml_probe()  # after Lightning's import, which sets the probe

__all__ = ["VAE"]
__version__ = "0.1.0"
