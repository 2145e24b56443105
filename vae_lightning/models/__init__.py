"""Probabilistic models: plain ``nn.Module``s (no Lightning, no Hydra) behind one interface
(``base.LatentVariableModel``), so the system, metrics, objectives and generation functions
work with any of them. ``FlatVAE``: one Gaussian latent with encoder and decoder networks
from ``vae_lightning.networks``; ``HierarchicalVAE``: VDVAE-style top-down latent groups."""

from vae_lightning.models.base import LatentVariableModel, Terms
from vae_lightning.models.flat import FlatVAE
from vae_lightning.models.hierarchical import HierarchicalVAE

__all__ = ["FlatVAE", "HierarchicalVAE", "LatentVariableModel", "Terms"]
