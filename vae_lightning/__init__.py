"""vae-lightning: Variational Autoencoders on images with PyTorch Lightning and Hydra."""

from vae_lightning.config import register_resolvers
from vae_lightning.module import VAE

register_resolvers()

__all__ = ["VAE"]
__version__ = "0.1.0"
