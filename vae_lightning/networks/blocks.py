"""Building blocks of a top-down hierarchical VAE (VDVAE, Child 2021): the bottleneck
residual ``Block``, the bottom-up ``Encoder`` that keeps one activation per resolution,
the ``TopDownBlock`` of one latent group (its prior, posterior and state update) and the
``TopDownDecoder`` that chains the groups from a learned start state to the image.

Plain ``nn.Module``s: no Lightning, no Hydra. Standard deviations use a scaled softplus
(Efficient-VDVAE) rather than exp: σ = (softplus(raw) + floor) / (log 2 + floor), which
is exactly 1 at raw = 0 (so a zero-initialised prior is exactly N(0, I)), grows linearly
rather than exponentially, and never goes below floor / (log 2 + floor) ≈ 1.4e-4.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

STD_FLOOR = 1e-4  # keeps σ > 0 and log σ finite (σ_min ≈ 1.4e-4)


def softplus_std(raw: torch.Tensor) -> torch.Tensor:
    """A standard deviation > 0 from an unconstrained ``raw``; 1 at ``raw = 0``."""
    return (F.softplus(raw) + STD_FLOOR) / (math.log(2.0) + STD_FLOOR)


def bottleneck_width(width: int, bottleneck: float) -> int:
    """Channels inside a block: ``width * bottleneck``, rounded, at least 1."""
    return max(1, round(width * bottleneck))


class Block(nn.Module):
    """Pre-activation bottleneck block: GELU -> 1x1 -> GELU -> 3x3 -> GELU -> 3x3 -> GELU
    -> 1x1, plus the input when ``residual`` (then ``channels == out_channels``).

    ``zero_last`` zero-initialises the last conv (the block starts as 0 / the identity);
    ``out_scale`` multiplies its initial weight (VDVAE's 1/√N for N stacked residual
    blocks, so the residual stream's variance does not grow with depth). No normalisation.
    """

    def __init__(
        self,
        channels: int,
        mid: int,
        out_channels: int,
        residual: bool = True,
        zero_last: bool = False,
        out_scale: float = 1.0,
    ):
        super().__init__()
        if residual and channels != out_channels:
            raise ValueError(
                f"residual Block needs channels == out_channels, got {channels} != {out_channels}"
            )
        self.residual = residual
        last = nn.Conv2d(mid, out_channels, 1)
        with torch.no_grad():
            if zero_last:
                last.weight.zero_()
                last.bias.zero_()
            else:
                last.weight.mul_(out_scale)
        self.body = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(channels, mid, 1),
            nn.GELU(),
            nn.Conv2d(mid, mid, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(mid, mid, 3, padding=1),
            nn.GELU(),
            last,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)  # (B, out_channels, H, W)
        return x + out if self.residual else out


def pool_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Average-pool ``(B, C, S, S)`` to ``(B, C, size, size)``, any factor."""
    side = x.shape[-1]
    if side % size == 0:
        return F.avg_pool2d(x, side // size)
    return F.adaptive_avg_pool2d(x, size)


class Encoder(nn.Module):
    """Bottom-up pass: ``(B, C, S, S)`` -> ``{R: (B, width, R, R)}``, the output of the last
    block at each resolution R of ``stages`` [(R, blocks), …] (R strictly decreasing, the
    first R = S); average pooling between resolutions."""

    def __init__(self, in_channels: int, width: int, mid: int, stages: Sequence[tuple[int, int]]):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.resolutions = [r for r, _ in stages]
        scale = 1 / math.sqrt(max(1, sum(n for _, n in stages)))
        self.stages = nn.ModuleList(
            nn.Sequential(*(Block(width, mid, width, out_scale=scale) for _ in range(n))) for _, n in stages
        )

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        h = self.stem(x)  # (B, width, S, S)
        activations = {}
        for res, stage in zip(self.resolutions, self.stages, strict=True):
            h = stage(pool_to(h, res) if h.shape[-1] != res else h)  # (B, width, R, R)
            activations[res] = h
        return activations


class TopDownBlock(nn.Module):
    """One latent group at resolution ``resolution`` (VDVAE's DecBlock).

    From the top-down state s (B, width, R, R): the prior p(z | z_<l) and a state update
    from ``prior_net(s)`` (zero-initialised: N(0, I) and no update at the start); the
    posterior q(z | x, z_<l) from ``posterior_net([s, encoder activation])``; then
    s <- s + prior update + z_proj(z), followed by a residual Block.
    """

    def __init__(self, width: int, mid: int, latent_channels: int, resolution: int, groups: int):
        super().__init__()
        self.resolution, self.latent_channels = resolution, latent_channels
        scale = 1 / math.sqrt(groups)
        self.posterior_net = Block(2 * width, mid, 2 * latent_channels, residual=False)
        self.prior_net = Block(width, mid, 2 * latent_channels + width, residual=False, zero_last=True)
        self.z_proj = nn.Conv2d(latent_channels, width, 1)
        with torch.no_grad():
            self.z_proj.weight.mul_(scale)
        self.resnet = Block(width, mid, width, residual=True, out_scale=scale)

    def forward(self, state: torch.Tensor, activation: torch.Tensor | None = None) -> tuple:
        """(mean, std) of the prior p(z_l | z_<l), float32 (B, zc, R, R), the state update
        (B, width, R, R), and (mean, std) of the posterior q(z_l | x, z_<l) given the
        encoder ``activation`` at this resolution (None, None without one)."""
        zc = self.latent_channels
        out = self.prior_net(state)
        p_mean, p_raw = out[:, :zc].float(), out[:, zc : 2 * zc].float()
        if activation is None:
            return p_mean, softplus_std(p_raw), out[:, 2 * zc :], None, None
        q_mean, q_raw = self.posterior_net(torch.cat([state, activation], dim=1)).float().chunk(2, dim=1)
        return p_mean, softplus_std(p_raw), out[:, 2 * zc :], q_mean, softplus_std(q_raw)

    def update(self, state: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The next state from the state (prior update added) and z (B, zc, R, R)."""
        return self.resnet(state + self.z_proj(z.to(state.dtype)))


GroupDraw = tuple  # per group: z, q mean, q std (None without a posterior), p mean, p std


class TopDownDecoder(nn.Module):
    """The top-down path (VDVAE's Decoder): a learned start state (1, width, R0, R0), one
    ``TopDownBlock`` per latent group at ``resolutions`` (top-down, non-decreasing), nearest
    upsampling plus a learned bias (1, width, R, R) where the resolution changes, then
    ``output_blocks`` residual blocks at ``side`` x ``side`` and a 1x1 conv to
    ``out_channels`` likelihood parameters. Start state and biases start at zero.

    ``forward`` is one pure function of tensors (all noise is drawn beforehand), so that
    ``torch.compile`` captures the whole pass. How each group's z is chosen (``mode``):
    "sample": z = q mean + q std · noise[l] (reparameterised); "mean": z = q mean;
    "prior": z = p mean + p std · noise[l] (noise already scaled by the temperatures);
    "decode": the top z = ``z_top``, every lower z = its prior mean.
    """

    MODES = ("sample", "mean", "prior", "decode")

    def __init__(
        self, width: int, mid: int, latent_channels: int, resolutions: Sequence[int], side: int,
        out_channels: int, output_blocks: int,
    ):  # fmt: skip
        super().__init__()
        top, groups = resolutions[0], len(resolutions)
        self.side = side
        self.start = nn.Parameter(torch.zeros(1, width, top, top))
        self.biases = nn.ParameterDict(
            {str(r): nn.Parameter(torch.zeros(1, width, r, r)) for r in sorted(set(resolutions) - {top})}
        )
        self.groups = nn.ModuleList(TopDownBlock(width, mid, latent_channels, r, groups) for r in resolutions)
        scale = 1 / math.sqrt(groups)
        self.output_blocks = nn.Sequential(
            *(Block(width, mid, width, out_scale=scale) for _ in range(output_blocks))
        )
        self.out = nn.Conv2d(width, out_channels, 1)

    def forward(
        self,
        mode: str,
        acts: dict[int, torch.Tensor] | None = None,
        noise: list[torch.Tensor] | None = None,
        z_top: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[GroupDraw]]:
        """Likelihood parameters (n, out_channels, S, S) and, per group, its z (n, zc, R, R)
        and the float32 statistics it was drawn with."""
        if mode not in self.MODES:
            raise ValueError(f"unknown top-down mode {mode!r}; valid: {', '.join(self.MODES)}")
        batch = z_top if mode == "decode" else noise[0] if mode == "prior" else next(iter(acts.values()))
        # (n, width, R0, R0), a copy: expand() of a parameter under no_grad trips module hooks
        state = self.start.repeat(len(batch), 1, 1, 1)
        draws = []
        for index, block in enumerate(self.groups):
            res = block.resolution
            if state.shape[-1] != res:
                state = F.interpolate(state, size=(res, res), mode="nearest") + self.biases[str(res)]
            activation = acts[res] if mode in ("sample", "mean") else None
            p_mean, p_std, delta, q_mean, q_std = block(state, activation)  # delta (n, width, R, R)
            if mode == "sample":
                z = q_mean + q_std * noise[index]
            elif mode == "prior":
                z = p_mean + p_std * noise[index]
            else:
                z = q_mean if mode == "mean" else z_top if index == 0 else p_mean
            state = block.update(state + delta, z)
            draws.append((z, q_mean, q_std, p_mean, p_std))
        if state.shape[-1] != self.side:
            state = F.interpolate(state, size=(self.side, self.side), mode="nearest")
        return self.out(self.output_blocks(state)), draws
