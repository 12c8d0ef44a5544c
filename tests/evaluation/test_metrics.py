"""Tests of carbongeo.evaluation.metrics: validation and report metrics, pooled (not averaged)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_msssim import ssim as reference_ssim

from carbongeo.evaluation.metrics import (
    REPORT_METRICS,
    VALIDATION_METRICS,
    PooledMetrics,
    compute_metrics,
    hotspot_mask,
    regression_metrics,
)
from carbongeo.ops.blocks import block_sum

S = 4


def _fields(seed: int = 0, shape: tuple[int, ...] = (3, 1, 16, 16)) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=gen, dtype=torch.float64) * 100
    pred = target + torch.randn(shape, generator=gen, dtype=torch.float64) * 5
    mask = torch.rand(shape, generator=gen) > 0.2
    return pred, target, mask


# --------------------------------------------------------------------------- validation metrics
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
    assert out["mae_above_threshold"] == pytest.approx(2.0)  # only the pixel with target 4
    assert math.isnan(out["ssim_gauss11"]) and math.isnan(out["mass_err_pooled"])


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
    assert out["ssim_gauss11"] == pytest.approx(expected, abs=1e-5)
    same = regression_metrics(target, target, scale=4, hotspot_threshold=1e9, ssim_range=100.0)
    assert same["ssim_gauss11"] == pytest.approx(1.0, abs=1e-6)
    assert same["mae"] == 0.0 and same["r2"] == 1.0


def test_pooled_mass_error_over_fully_valid_cells() -> None:
    target = torch.rand(1, 1, 8, 8, dtype=torch.float64) * 10
    coarse = target.reshape(1, 1, 2, 4, 2, 4).sum(dim=(3, 5))
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    # Pixels moved around inside their cells: the cell totals are unchanged.
    conserving = target.reshape(1, 1, 2, 4, 2, 4).flip(3).flip(5).reshape(1, 1, 8, 8)
    assert not torch.equal(conserving, target)
    out = regression_metrics(
        conserving, target, mask, scale=4, hotspot_threshold=5.0, ssim_range=10.0, coarse=coarse
    )
    assert out["mass_err_pooled"] == pytest.approx(0.0, abs=1e-12)
    doubled = regression_metrics(
        2 * target, target, mask, scale=4, hotspot_threshold=5.0, ssim_range=10.0, coarse=coarse
    )
    assert doubled["mass_err_pooled"] == pytest.approx(1.0)
    mask[..., 0, 0] = False  # the first cell is no longer fully valid: it is left out
    partial = regression_metrics(
        2 * target, target, mask, scale=4, hotspot_threshold=5.0, ssim_range=10.0, coarse=coarse
    )
    assert partial["mass_err_pooled"] == pytest.approx(1.0)


def test_undefined_metrics_are_nan() -> None:
    meter = PooledMetrics(4, 1.0, 1.0)
    out = meter.compute()
    assert all(math.isnan(out[k]) for k in VALIDATION_METRICS)
    with pytest.raises(ValueError):
        PooledMetrics(4, 1.0, 0.0)


def test_validation_metrics_are_the_computed_ones() -> None:
    pred, target, mask = _fields()
    out = regression_metrics(pred, target, mask, scale=4, hotspot_threshold=50.0, ssim_range=100.0)
    assert set(VALIDATION_METRICS) == set(out) - {"n_pixels", "n_above_threshold"}


def test_validation_and_report_share_only_names_with_one_meaning() -> None:
    # A validation column and a report column with the same name must mean the same thing:
    # these three are pooled over valid pixels, in physical units, the same way in both.
    assert set(VALIDATION_METRICS) & set(REPORT_METRICS) == {"mae", "rmse", "r2"}


# --------------------------------------------------------------------------- report metrics
def test_perfect_prediction() -> None:
    rng = np.random.default_rng(1)
    truth = rng.gamma(0.5, 10.0, (32, 32))
    truth[:4, :4] = 0.0
    metrics = compute_metrics(truth, truth, block_sum(truth, S), S, np.ones(truth.shape, bool))
    assert metrics["mae"] == 0.0 and metrics["rmse"] == 0.0
    assert metrics["r2"] == 1.0 and metrics["r2_log1p"] == 1.0
    assert metrics["ssim"] == pytest.approx(1.0) and metrics["ssim_log1p"] == pytest.approx(1.0)
    assert metrics["hotspot_recall"] == 1.0 and metrics["hotspot_precision"] == 1.0
    assert metrics["hotspot_mae"] == 0.0
    assert metrics["psnr"] == math.inf
    assert metrics["mass_err_max"] < 1e-12
    assert abs(metrics["pbias"]) < 1e-12
    assert metrics["mass_on_zero_truth"] == 0.0
    assert metrics["n_pixels"] == 32 * 32


def test_small_example_by_hand() -> None:
    truth = np.array([[1.0, 2.0], [3.0, 4.0]])
    pred = np.array([[2.0, 2.0], [2.0, 4.0]])
    metrics = compute_metrics(pred, truth, np.array([[10.0]]), 2, np.ones((2, 2), bool))
    assert metrics["mae"] == pytest.approx(0.5)
    assert metrics["rmse"] == pytest.approx(math.sqrt(0.5))
    assert metrics["r2"] == pytest.approx(1 - 2.0 / 5.0)  # SST about the mean 2.5 is 5
    assert metrics["mae_log1p"] == pytest.approx(
        (abs(math.log(3) - math.log(2)) + abs(math.log(3) - math.log(4))) / 4
    )
    assert metrics["psnr"] == pytest.approx(10 * math.log10(3.0**2 / 0.5))  # range 4 - 1
    assert metrics["mass_err_max"] == 0.0  # 2 + 2 + 2 + 4 = 10


def test_nodata_pixels_are_excluded() -> None:
    rng = np.random.default_rng(2)
    truth = rng.gamma(0.5, 10.0, (16, 16))
    pred = truth + rng.normal(0, 1, truth.shape)
    valid = np.ones(truth.shape, bool)
    coarse = block_sum(truth, S)
    reference = compute_metrics(pred, truth, coarse, S, valid)
    masked_truth = truth.copy()
    masked_truth[3, 5] = np.nan
    wild = pred.copy()
    wild[3, 5] = 1e9
    outside = compute_metrics(wild, masked_truth, coarse, S, valid)
    assert outside["n_pixels"] == reference["n_pixels"] - 1
    assert outside["mae"] < 2 * reference["mae"]
    not_valid = valid.copy()
    not_valid[3, 5] = False
    same = compute_metrics(wild, truth, coarse, S, not_valid)
    assert same["mae"] == pytest.approx(outside["mae"])
    assert same["rmse"] == pytest.approx(outside["rmse"])


def test_missing_prediction_counts_as_zero() -> None:
    truth = np.full((4, 4), 2.0)
    pred = truth.copy()
    pred[0, 0] = np.nan
    metrics = compute_metrics(pred, truth, block_sum(truth, 4), 4, np.ones((4, 4), bool))
    assert metrics["pred_nodata_pixels"] == 1
    assert metrics["mae"] == pytest.approx(2.0 / 16)
    assert metrics["mass_err_max"] == pytest.approx(2.0 / 32)


def test_hotspot_recall_and_precision() -> None:
    truth = np.arange(1.0, 201.0).reshape(10, 20)  # top 1 %: the two largest cells
    pred = truth.copy()
    pred[9, 19] = 0.0  # the largest truth cell is missed
    metrics = compute_metrics(pred, truth, block_sum(truth, 10), 10, np.ones(truth.shape, bool))
    assert metrics["hotspot_recall"] == pytest.approx(0.5)
    assert metrics["hotspot_precision"] == pytest.approx(0.5)
    assert metrics["hotspot_mae"] == pytest.approx(200.0 / 2)
    assert hotspot_mask(np.array([0.0, 0.0, 0.0])).sum() == 0  # zeros are never hotspots


def test_mass_on_zero_truth_and_water() -> None:
    truth = np.array([[0.0, 2.0], [2.0, 4.0]])
    pred = np.array([[2.0, 2.0], [2.0, 2.0]])
    water = np.array([[True, False], [False, False]])
    metrics = compute_metrics(
        pred, truth, np.array([[8.0]]), 2, np.ones((2, 2), bool), zero_aux=water
    )
    assert metrics["mass_on_zero_truth"] == pytest.approx(0.25)
    assert metrics["mass_on_water"] == pytest.approx(0.25)
