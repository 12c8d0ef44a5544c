"""Building blocks of :class:`carbongeo.models.network.DSTCarbonFormer`.

All blocks are plain 2-D convolutions without normalisation layers: batch statistics are unreliable
with small batches, and per-tile statistics (instance or group norm) would make overlapping tiles of
a mosaic disagree. Each block keeps the spatial size of its input unless stated otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def conv3x3(in_channels: int, out_channels: int, dilation: int = 1, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution that keeps the spatial size (for ``stride=1``)."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
    )


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    """Pointwise convolution."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1)


class ResBlock(nn.Module):
    """Residual block ``x + conv(gelu(conv(x)))``.

    Args:
        channels: Feature width.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.act = nn.GELU()
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``[B, C, H, W]`` features."""
        return x + self.conv2(self.act(self.conv1(x)))


class MultiScaleBlock(nn.Module):
    """Multi-scale dilated block: parallel 3x3 convolutions with dilations 1, 2 and 4 and a 1x1
    branch, concatenated, fused by a 1x1 convolution and added to the input.

    Args:
        channels: Feature width, a multiple of 4 (each branch gets a quarter).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"MultiScaleBlock needs channels divisible by 4, got {channels}")
        branch = channels // 4
        self.branches = nn.ModuleList(
            [
                conv3x3(channels, branch, dilation=1),
                conv3x3(channels, branch, dilation=2),
                conv3x3(channels, branch, dilation=4),
                conv1x1(channels, branch),
            ]
        )
        self.act = nn.GELU()
        self.fuse = conv1x1(4 * branch, channels)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``[B, C, H, W]`` features."""
        features = torch.cat([self.act(branch(x)) for branch in self.branches], dim=1)
        return x + self.fuse(features)


class AuxStem(nn.Module):
    """Progressive convolutional stem of the auxiliary stream.

    The years of the auxiliary window are folded into channels (``[B, C, T, H, W]`` becomes
    ``[B, C*T, H, W]``), then widened in two steps to ``channels`` and refined by a
    :class:`MultiScaleBlock`.

    Args:
        in_channels: ``C_aux * T``.
        channels: Output feature width (a multiple of 4).
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            conv3x3(in_channels, channels // 2),
            nn.GELU(),
            conv3x3(channels // 2, channels),
            nn.GELU(),
            conv3x3(channels, channels),
            MultiScaleBlock(channels),
        )

    def forward(self, aux: Tensor) -> Tensor:
        """Encode ``[B, C_aux, T, H, W]`` auxiliary rasters into ``[B, channels, H, W]``."""
        return self.layers(aux.flatten(1, 2))


class SFTLayer(nn.Module):
    """Spatial feature transform: ``out = F * (1 + gamma) + beta``, with ``gamma`` and ``beta``
    predicted per pixel and channel from the condition (auxiliary) features.

    Args:
        channels: Width of both the modulated and the condition features.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.condition = nn.Sequential(
            conv3x3(channels, channels),
            nn.LeakyReLU(0.1),
            conv1x1(channels, 2 * channels),
        )

    def forward(self, features: Tensor, condition: Tensor) -> Tensor:
        """Modulate ``features`` ``[B, C, H, W]`` by ``condition`` ``[B, C, H, W]``."""
        gamma, beta = self.condition(condition).chunk(2, dim=1)
        return features * (1.0 + gamma) + beta


class GlobalContextBlock(nn.Module):
    """GCNet-style global context block.

    A softmax over all ``H * W`` positions pools the features into one context vector per sample
    (attention pooling), a bottleneck transforms it, and the result is added to every position.
    The cost is linear in the number of pixels, and every output pixel depends on every input pixel.

    Args:
        channels: Feature width.
        reduction: Bottleneck reduction factor.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.attention = conv1x1(channels, 1)
        self.transform = nn.Sequential(
            conv1x1(channels, hidden),
            nn.GELU(),
            conv1x1(hidden, channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Add the global context of ``[B, C, H, W]`` features to each position."""
        weights = torch.softmax(self.attention(x).flatten(2), dim=-1)  # [B, 1, HW]
        context = torch.einsum("bcn,bon->bc", x.flatten(2), weights)
        return x + self.transform(context[:, :, None, None])


class TemporalEncoder(nn.Module):
    """Encode a coarse time series and collapse it onto the centre year.

    Each year is encoded by the same small 2-D network (at the grid of its input). For ``T > 1`` a
    learned year embedding marks each year's position in the window, and a per-pixel dot-product
    attention, queried by the centre year, pools the years; the pooled and the centre features are
    fused by a 1x1 convolution. For ``T == 1`` the attention is skipped (it would be the identity).

    Args:
        channels: Feature width.
        temporal: Number of years ``T`` (odd; the centre year is ``T // 2``).
        in_channels: Channels of each year's input.
    """

    def __init__(self, channels: int, temporal: int, in_channels: int = 1) -> None:
        super().__init__()
        self.temporal = temporal
        self.channels = channels
        self.frame = nn.Sequential(
            conv3x3(in_channels, channels),
            nn.GELU(),
            conv3x3(channels, channels),
            nn.GELU(),
            conv3x3(channels, channels),
        )
        if temporal > 1:
            self.year_embedding = nn.Parameter(torch.randn(temporal, channels) * 0.02)
            self.query = conv1x1(channels, channels)
            self.key = conv1x1(channels, channels)
            self.value = conv1x1(channels, channels)
            self.fuse = conv1x1(2 * channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """Encode ``[B, C_in, T, h, w]`` into centre-year features ``[B, channels, h, w]``."""
        batch, in_channels, years, height, width = x.shape
        if years != self.temporal:
            raise ValueError(f"expected {self.temporal} years, got {years}")
        frames = x.transpose(1, 2).reshape(batch * years, in_channels, height, width)
        features = self.frame(frames)
        if years == 1:
            return features
        features = features.reshape(batch, years, self.channels, height, width)
        features = features + self.year_embedding[None, :, :, None, None]
        centre = features[:, years // 2]
        flat = features.flatten(0, 1)
        keys = self.key(flat).reshape(batch, years, self.channels, height, width)
        values = self.value(flat).reshape(batch, years, self.channels, height, width)
        query = self.query(centre)
        logits = (keys * query[:, None]).sum(dim=2) / math.sqrt(self.channels)  # [B, T, h, w]
        weights = torch.softmax(logits, dim=1)
        pooled = (weights[:, :, None] * values).sum(dim=1)
        return self.fuse(torch.cat([centre, pooled], dim=1))
