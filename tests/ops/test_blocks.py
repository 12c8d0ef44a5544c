"""Tests of carbongeo.ops.blocks: block sum, maximum and upsampling for numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carbongeo.ops.blocks import block_max, block_shape, block_sum, upsample_blocks


@pytest.mark.parametrize("scale", [1, 2, 3, 8])
def test_block_sum_matches_explicit_loop(scale: int) -> None:
    x = torch.rand(2, 3, 4 * scale, 5 * scale, dtype=torch.float64)
    sums = block_sum(x, scale)
    assert sums.shape == (2, 3, 4, 5)
    for i in range(4):
        for j in range(5):
            block = x[..., i * scale : (i + 1) * scale, j * scale : (j + 1) * scale]
            torch.testing.assert_close(sums[..., i, j], block.sum(dim=(-2, -1)))


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_numpy_and_torch_agree(scale: int) -> None:
    rng = np.random.default_rng(scale)
    fine = rng.gamma(0.5, 10.0, (2, 4 * scale, 6 * scale))
    fine[0, 0, 0] = np.nan
    fine[1, :scale, :scale] = np.inf
    coarse = rng.uniform(size=(2, 3, 5))
    tensor = torch.from_numpy(fine)
    for nodata_as_zero in (False, True):
        np.testing.assert_allclose(
            block_sum(fine, scale, nodata_as_zero=nodata_as_zero),
            block_sum(tensor, scale, nodata_as_zero=nodata_as_zero).numpy(),
            rtol=1e-14,
        )
    np.testing.assert_array_equal(block_max(fine, scale), block_max(tensor, scale).numpy())
    np.testing.assert_array_equal(
        upsample_blocks(coarse, scale), upsample_blocks(torch.from_numpy(coarse), scale).numpy()
    )


def test_numpy_block_sums_are_float64_and_count_masks() -> None:
    fine = np.full((4, 6), 0.1, dtype=np.float32)
    sums = block_sum(fine, 2)
    assert sums.dtype == np.float64
    np.testing.assert_array_equal(sums, np.float64(np.float32(0.1)) * 4)
    mask = np.zeros((4, 6), dtype=bool)
    mask[0, :3] = True
    np.testing.assert_array_equal(block_sum(mask, 2), [[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


def test_tensor_block_sums_keep_dtype_and_gradient() -> None:
    x = torch.rand(1, 1, 4, 4, requires_grad=True)
    sums = block_sum(x, 2)
    assert sums.dtype == torch.float32
    sums.sum().backward()
    assert x.grad is not None and bool((x.grad == 1.0).all())


def test_nodata_counts_as_zero_only_when_asked() -> None:
    fine = np.array([[1.0, np.nan, 5.0, 5.0], [2.0, 3.0, 5.0, np.inf]])
    assert np.isnan(block_sum(fine, 2)[0, 0])
    np.testing.assert_array_equal(block_sum(fine, 2, nodata_as_zero=True), [[6.0, 15.0]])
    assert block_sum(torch.from_numpy(fine), 2, nodata_as_zero=True).tolist() == [[6.0, 15.0]]


def test_block_helpers_accept_any_leading_dims() -> None:
    x = torch.rand(6, 8)
    assert block_sum(x, 2).shape == (3, 4)
    assert block_max(torch.rand(2, 2, 3, 6, 8), 2).shape == (2, 2, 3, 3, 4)
    assert upsample_blocks(torch.rand(3, 4), 2).shape == (6, 8)
    assert block_sum(np.ones((2, 3, 6, 8)), 2).shape == (2, 3, 3, 4)
    assert upsample_blocks(np.ones((2, 3, 4)), 2).shape == (2, 6, 8)


def test_block_max_and_upsample_blocks() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert block_max(x, 2).flatten().tolist() == [5.0, 7.0, 13.0, 15.0]
    coarse = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    up = upsample_blocks(coarse, 3)
    torch.testing.assert_close(up, torch.kron(coarse, torch.ones(3, 3)))
    torch.testing.assert_close(block_sum(up / 9.0, 3), coarse)
    np.testing.assert_array_equal(
        upsample_blocks(coarse.numpy(), 3), np.kron(coarse.numpy(), np.ones((3, 3)))
    )


def test_sizes_not_multiple_of_scale_are_errors() -> None:
    with pytest.raises(ValueError, match="not a multiple of scale"):
        block_sum(torch.rand(1, 1, 10, 12), 4)
    with pytest.raises(ValueError, match="not a multiple of scale"):
        block_sum(np.ones((10, 12)), 4)
    with pytest.raises(ValueError, match="positive"):
        block_shape(8, 8, 0)
    with pytest.raises(ValueError, match="positive"):
        upsample_blocks(np.ones((2, 2)), 0)
    assert block_shape(12, 8, 4) == (3, 2)
