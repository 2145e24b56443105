"""Plain ``nn.Module`` encoders and decoders (no Lightning, no Hydra in here).

Every encoder maps images ``(B, C, H, W)`` to ``(B, 2 * latent_dim)`` (μ and log σ²
concatenated); every decoder maps ``(B, latent_dim)`` to the parameters of p(x|z),
``(B, out_channels, H, W)``. The VAE passes ``image_shape``, ``latent_dim`` and
``out_channels`` in; configs only hold architecture choices (widths, depths).
"""

from vae_lightning.networks.conv import ConvDecoder, ConvEncoder
from vae_lightning.networks.mlp import MLPDecoder, MLPEncoder
from vae_lightning.networks.resnet import ResNetDecoder, ResNetEncoder

__all__ = ["ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder", "ResNetDecoder", "ResNetEncoder"]
