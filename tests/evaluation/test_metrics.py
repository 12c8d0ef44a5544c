"""Tests of carbongeo.evaluation.metrics: pooled (not per-batch) metrics in physical units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_msssim import ssim as reference_ssim

from carbongeo.evaluation.metrics import PooledMetrics, regression_metrics


def _fields(seed: int = 0, shape: tuple[int, ...] = (3, 1, 16, 16)) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=gen, dtype=torch.float64) * 100
    pred = target + torch.randn(shape, generator=gen, dtype=torch.float64) * 5
    mask = torch.rand(shape, generator=gen) > 0.2
    return pred, target, mask


def test_basic_metrics_by_hand() -> None:
    pred = np.array([[1.0, 2.0], [3.0, 10.0]])
    target = np.array([[1.0, 4.0], [0.0, np.nan]])
    out = regression_metrics(pred, target, scale=1, hotspot_threshold=3.0, ssim_range=1.0)
    errors = np.array([0.0, -2.0, 3.0])
    assert out["n_pixels"] == 3
    assert out["mae"] == pytest.approx(np.abs(errors).mean())
    assert out["rmse"] == pytest.approx(math.sqrt((errors**2).mean()))
    y = np.array([1.0, 4.0, 0.0])
    assert out["r2"] == pytest.approx(1 - (errors**2).sum() / ((y - y.mean()) ** 2).sum())
    assert out["hotspot_mae"] == pytest.approx(2.0)  # only the pixel with target 4
    assert math.isnan(out["ssim"]) and math.isnan(out["mass_error"])


def test_pooled_over_batches_not_averaged() -> None:
    pred, target, mask = _fields()
    whole = PooledMetrics(4, 50.0, 100.0)
    whole.update(pred, target, mask)
    split = PooledMetrics(4, 50.0, 100.0)
    for i in range(3):
        split.update(pred[i : i + 1], target[i : i + 1], mask[i : i + 1])
    a, b = whole.compute(), split.compute()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12, nan_ok=True)
    # The per-batch mean of MAEs would weigh images with fewer valid pixels more.
    masked = torch.where(mask, (pred - target).abs(), 0.0)
    pooled = float(masked.sum() / mask.sum())
    assert a["mae"] == pytest.approx(pooled, rel=1e-12)


def test_merged_sums_equal_the_whole() -> None:
    pred, target, mask = _fields(1)
    whole = PooledMetrics(4, 50.0, 100.0)
    whole.update(pred, target, mask)
    left, right = PooledMetrics(4, 50.0, 100.0), PooledMetrics(4, 50.0, 100.0)
    left.update(pred[:1], target[:1], mask[:1])
    right.update(pred[1:], target[1:], mask[1:])
    left.merge(left.sums + right.sums)  # what an all-reduce does
    assert left.compute()["rmse"] == pytest.approx(whole.compute()["rmse"], rel=1e-12)


def test_ssim_matches_pytorch_msssim_without_nodata() -> None:
    pred, target, _ = _fields(2, (2, 1, 32, 32))
    pred, target = pred.clamp(0, 100).float(), target.float()
    out = regression_metrics(pred, target, scale=4, hotspot_threshold=1e9, ssim_range=100.0)
    expected = float(reference_ssim(pred, target, data_range=100.0, size_average=True))
    assert out["ssim"] == pytest.approx(expected, abs=1e-5)
    same = regression_metrics(target, target, scale=4, hotspot_threshold=1e9, ssim_range=100.0)
    assert same["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert same["mae"] == 0.0 and same["r2"] == 1.0


def test_mass_error_over_fully_valid_cells() -> None:
    target = torch.rand(1, 1, 8, 8, dtype=torch.float64) * 10
    coarse = target.reshape(1, 1, 2, 4, 2, 4).sum(dim=(3, 5))
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    # Pixels moved around inside their cells: the cell totals are unchanged.
    conserving = target.reshape(1, 1, 2, 4, 2, 4).flip(3).flip(5).reshape(1, 1, 8, 8)
    assert not torch.equal(conserving, target)
    out = regression_metrics(
        conserving, target, mask, scale=4, hotspot_threshold=5.0, ssim_range=10.0, coarse=coarse
    )
    assert out["mass_error"] == pytest.approx(0.0, abs=1e-12)
    doubled = regression_metrics(
        2 * target, target, mask, scale=4, hotspot_threshold=5.0, ssim_range=10.0, coarse=coarse
    )
    assert doubled["mass_error"] == pytest.approx(1.0)
    mask[..., 0, 0] = False  # the first cell is no longer fully valid: it is left out
    partial = regression_metrics(
        2 * target, target, mask, scale=4, hotspot_threshold=5.0, ssim_range=10.0, coarse=coarse
    )
    assert partial["mass_error"] == pytest.approx(1.0)


def test_undefined_metrics_are_nan() -> None:
    meter = PooledMetrics(4, 1.0, 1.0)
    out = meter.compute()
    assert all(math.isnan(out[k]) for k in ("mae", "rmse", "r2", "ssim", "hotspot_mae"))
    with pytest.raises(ValueError):
        PooledMetrics(4, 1.0, 0.0)
