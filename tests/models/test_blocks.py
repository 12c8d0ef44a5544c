"""Tests of the network building blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from carbongeo.models.blocks import (
    AuxStem,
    GlobalContextBlock,
    MultiScaleBlock,
    ResBlock,
    SFTLayer,
    TemporalEncoder,
)


@pytest.mark.parametrize(("height", "width"), [(16, 16), (13, 21)])
def test_shape_preserving_blocks(height: int, width: int) -> None:
    x = torch.randn(2, 8, height, width)
    for block in (ResBlock(8), MultiScaleBlock(8), GlobalContextBlock(8)):
        assert block(x).shape == x.shape


def test_multiscale_block_uses_dilated_branches() -> None:
    block = MultiScaleBlock(8)
    dilations = [branch.dilation for branch in block.branches]
    kernels = [branch.kernel_size for branch in block.branches]
    assert dilations == [(1, 1), (2, 2), (4, 4), (1, 1)]
    assert kernels == [(3, 3), (3, 3), (3, 3), (1, 1)]
    # The dilation-4 branch reaches 4 pixels away; nothing reaches 6 pixels away.
    x = torch.zeros(1, 8, 17, 17, requires_grad=True)
    block(x)[0, :, 8, 8].sum().backward()
    assert x.grad is not None
    assert float(x.grad[0, :, 8, 12].abs().sum()) > 0
    assert float(x.grad[0, :, 8, 14].abs().sum()) == 0


def test_multiscale_block_rejects_width_not_divisible_by_four() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        MultiScaleBlock(6)


def test_sft_layer_applies_scale_and_shift() -> None:
    layer = SFTLayer(4)
    last = layer.condition[-1]
    assert isinstance(last, nn.Conv2d)
    with torch.no_grad():
        last.weight.zero_()
        assert last.bias is not None
        last.bias.copy_(torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0, 2.0, 3.0, 4.0]))
    features = torch.randn(2, 4, 5, 6)
    out = layer(features, torch.randn(2, 4, 5, 6))
    beta = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1)
    torch.testing.assert_close(out, features * 1.5 + beta)


def test_sft_layer_modulation_depends_on_condition_per_pixel() -> None:
    torch.manual_seed(0)
    layer = SFTLayer(4)
    features = torch.randn(1, 4, 9, 9)
    condition = torch.randn(1, 4, 9, 9)
    changed = condition.clone()
    changed[..., 0, 0] += 5.0
    with torch.no_grad():
        delta = (layer(features, condition) - layer(features, changed)).abs().sum(dim=1)[0]
    assert float(delta[0, 0]) > 0
    assert float(delta[8, 8]) == 0  # outside the 3x3 condition network's receptive field


def test_global_context_block_is_global() -> None:
    torch.manual_seed(1)
    block = GlobalContextBlock(8)
    x = torch.randn(1, 8, 32, 32)
    changed = x.clone()
    changed[..., 0, 0] += 10.0
    with torch.no_grad():
        out, out_changed = block(x), block(changed)
    # A change in one corner reaches the opposite corner.
    assert float((out - out_changed)[..., 31, 31].abs().sum()) > 0


def test_global_context_block_adds_the_same_vector_everywhere() -> None:
    block = GlobalContextBlock(8)
    x = torch.randn(2, 8, 6, 7)
    added = block(x) - x
    torch.testing.assert_close(added, added[..., :1, :1].expand_as(added))


@pytest.mark.parametrize("temporal", [1, 3])
def test_temporal_encoder_collapses_years(temporal: int) -> None:
    encoder = TemporalEncoder(8, temporal)
    out = encoder(torch.randn(2, 1, temporal, 5, 7))
    assert out.shape == (2, 8, 5, 7)


def test_temporal_encoder_uses_every_year_and_their_order() -> None:
    torch.manual_seed(2)
    encoder = TemporalEncoder(8, 3)
    x = torch.randn(1, 1, 3, 6, 6)
    base = encoder(x)
    changed = x.clone()
    changed[:, :, 0] += 1.0
    assert not torch.allclose(encoder(changed), base)
    swapped = x[:, :, [2, 1, 0]]
    assert not torch.allclose(encoder(swapped), base)


def test_temporal_encoder_rejects_wrong_number_of_years() -> None:
    with pytest.raises(ValueError, match="expected 3 years"):
        TemporalEncoder(8, 3)(torch.randn(1, 1, 1, 4, 4))


def test_aux_stem_folds_years_into_channels() -> None:
    stem = AuxStem(in_channels=9 * 3, channels=16)
    out = stem(torch.randn(2, 9, 3, 12, 20))
    assert out.shape == (2, 16, 12, 20)
