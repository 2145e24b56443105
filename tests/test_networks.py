import pytest
import torch

from vae_lightning.errors import ConfigError
from vae_lightning.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder


@pytest.mark.parametrize(
    "encoder, decoder",
    [
        (
            MLPEncoder((1, 28, 28), 8, hidden_dims=(64, 32)),
            MLPDecoder((1, 28, 28), 8, 1, hidden_dims=(32, 64)),
        ),
        (ConvEncoder((1, 28, 28), 8, channels=(4, 8)), ConvDecoder((1, 28, 28), 8, 1, channels=(4, 8))),
    ],
)
def test_mnist_shapes(encoder, decoder):
    x = torch.rand(5, 1, 28, 28)
    assert encoder(x).shape == (5, 16)  # μ ‖ log σ²
    assert decoder(torch.randn(5, 8)).shape == (5, 1, 28, 28)


@pytest.mark.parametrize("size, levels", [(28, 2), (32, 3), (64, 4), (128, 5)])
def test_conv_depth_follows_the_image_size(size, levels):
    """One channel list serves every size: 28 -> 7x7 after 2 levels, 64 -> 4x4 after 4."""
    channels = (4, 8, 8, 16, 16)
    enc = ConvEncoder((3, size, size), 16, channels=channels)
    dec = ConvDecoder((3, size, size), 16, 6, channels=channels)  # 2 params per channel
    assert sum(isinstance(m, torch.nn.Conv2d) for m in enc.modules()) == levels
    assert enc(torch.rand(2, 3, size, size)).shape == (2, 32)
    assert dec(torch.randn(2, 16)).shape == (2, 6, size, size)


def test_wrong_input_shape_says_what_was_expected():
    enc = MLPEncoder((1, 28, 28), 8)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 1, 28, 28\), got \(2, 3, 32, 32\)"):
        enc(torch.rand(2, 3, 32, 32))
    dec = ConvDecoder((1, 28, 28), 8, 1)
    with pytest.raises(ValueError, match=r"\(B, 8\), got \(2, 4\)"):
        dec(torch.randn(2, 4))


def test_conv_rejects_size_that_does_not_halve():
    with pytest.raises(ConfigError, match="cannot halve a 27x27 image"):
        ConvEncoder((1, 27, 27), 8, channels=(4, 8, 16))
    with pytest.raises(ConfigError, match="square images"):
        ConvDecoder((1, 28, 32), 8, 1)


@pytest.mark.parametrize("size, levels", [(28, 2), (64, 4)])
def test_resnet_shapes_and_levels(size, levels):
    from vae_lightning.networks import ResNetDecoder, ResNetEncoder

    enc = ResNetEncoder((3, size, size), 8, channels=(4, 8, 8, 8), blocks_per_level=2)
    dec = ResNetDecoder((3, size, size), 8, 6, channels=(4, 8, 8, 8), blocks_per_level=2)
    strided = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == levels
    assert enc(torch.rand(2, 3, size, size)).shape == (2, 16)
    assert dec(torch.randn(2, 8)).shape == (2, 6, size, size)
    with pytest.raises(ValueError, match=rf"\(B, 3, {size}, {size}\)"):
        enc(torch.rand(2, 1, size, size))
