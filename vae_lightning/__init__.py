"""vae-lightning: Variational Autoencoders on images with PyTorch Lightning and Hydra."""

from vae_lightning.config import register_resolvers
from vae_lightning.speed import skip_failing_nvml_probe
from vae_lightning.system import VAE

register_resolvers()
skip_failing_nvml_probe()  # after Lightning's import, which sets the probe

__all__ = ["VAE"]
__version__ = "0.1.0"
