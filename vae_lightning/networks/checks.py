"""Shape checks shared by the networks: fail with what was expected, not a matmul error."""

from collections.abc import Sequence

import torch

from vae_lightning.errors import ConfigError


def check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """Validate a ``(C, H, W)`` triple of positive integers and return it as a tuple."""
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"image_shape must be (channels, height, width) > 0, got {tuple(image_shape)}")
    return shape


def check_input(x: torch.Tensor, expected: tuple[int, ...], what: str) -> None:
    """Raise a ValueError naming ``what`` when ``x`` is not ``(B, *expected)``."""
    if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{what} expected input of shape (B, {', '.join(map(str, expected))}), "
            f"got {tuple(x.shape)}. Check that the model's image_shape / latent_dim "
            "match the data (model sizes come from the data config)."
        )
