"""Tests of carbongeo.training.normalization: train-only statistics, streaming, round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _cubes import BANDS, YEARS, write_cubes

from carbongeo.errors import CarbongeoError
from carbongeo.training.normalization import HOTSPOT_QUANTILE, Normalization, compute_normalization


def _stats(tiles_dir: Path, ids: list[int], **kwargs: object) -> Normalization:
    return compute_normalization(tiles_dir, ids, YEARS, high_quantile=0.9, **kwargs)


def test_statistics_match_numpy(tmp_path: Path) -> None:
    ids = write_cubes(tmp_path, n_tiles=5)
    train = ids[:3]
    norm = _stats(tmp_path, train)
    x = np.concatenate([np.load(tmp_path / f"X_{y}.npy")[:3] for y in YEARS]).astype(np.float64)
    y = np.concatenate([np.load(tmp_path / f"Y_{y}.npy")[:3] for y in YEARS]).astype(np.float64)
    y = y.ravel()
    for band in range(len(BANDS)):
        values = x[:, band].ravel()
        values = values[np.isfinite(values)]
        assert norm.aux_mean[band] == pytest.approx(values.mean(), rel=1e-9)
        assert norm.aux_std[band] == pytest.approx(values.std(), rel=1e-9)
    positive = y[np.isfinite(y) & (y > 0)]
    assert norm.value_scale == pytest.approx(positive.mean(), rel=1e-9)
    # Every positive pixel fits in the default sample, so the quantiles are exact.
    assert norm.high_threshold == pytest.approx(np.quantile(positive, 0.9))
    assert norm.hotspot_threshold == pytest.approx(np.quantile(positive, HOTSPOT_QUANTILE))


def test_only_train_tiles_count(tmp_path: Path) -> None:
    ids = write_cubes(tmp_path, n_tiles=5)
    before = _stats(tmp_path, ids[:3])
    for year in YEARS:  # rewrite the two non-train tiles with wild values
        for prefix in ("X", "Y"):
            cube = np.load(tmp_path / f"{prefix}_{year}.npy")
            cube[3:] = 1e6
            np.save(tmp_path / f"{prefix}_{year}.npy", cube)
    assert _stats(tmp_path, ids[:3]) == before
    assert _stats(tmp_path, ids) != before


def test_bounded_quantile_sample(tmp_path: Path) -> None:
    ids = write_cubes(tmp_path, n_tiles=4)
    exact = _stats(tmp_path, ids)
    sampled = _stats(tmp_path, ids, sample_size=2000, seed=1)
    assert sampled.value_scale == exact.value_scale  # the mean is exact, not sampled
    assert sampled.high_threshold == pytest.approx(exact.high_threshold, rel=0.15)
    assert _stats(tmp_path, ids, sample_size=2000, seed=1) == sampled  # deterministic


def test_no_positive_target_is_an_error(tmp_path: Path) -> None:
    ids = write_cubes(tmp_path, n_tiles=2)
    for year in YEARS:
        np.save(tmp_path / f"Y_{year}.npy", np.zeros((2, 1, 32, 32), dtype=np.float32))
    with pytest.raises(CarbongeoError, match="no positive target pixel"):
        _stats(tmp_path, ids)


def test_missing_year_names_the_command(tmp_path: Path) -> None:
    ids = write_cubes(tmp_path, n_tiles=2)
    (tmp_path / "X_2019.npy").unlink()
    with pytest.raises(CarbongeoError, match="carbongeo tile --year 2019"):
        _stats(tmp_path, ids)


def test_normalize_aux_numpy_and_tensor() -> None:
    norm = Normalization((1.0, -2.0), (2.0, 4.0), 10.0, 20.0, 50.0)
    x = np.array([[3.0, np.nan], [2.0, np.inf]], dtype=np.float32)  # [C=2, 2]
    expected = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    out = norm.normalize_aux(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    tensor = norm.normalize_aux(torch.from_numpy(x))
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_array_equal(tensor.numpy(), expected)
    batch = np.stack([x, x])  # [B, C, 2]: bands on axis 1
    np.testing.assert_array_equal(norm.normalize_aux(batch, channel_axis=1)[1], expected)
    with pytest.raises(CarbongeoError, match="3 bands"):
        norm.normalize_aux(np.zeros((3, 4)))


def test_dict_round_trip_is_plain() -> None:
    norm = Normalization((1.0, 2.0), (0.5, 3.0), 12.5, 40.0, 90.0)
    data = norm.to_dict()
    assert all(isinstance(v, float | list) for v in data.values())
    assert Normalization.from_dict(data) == norm
    with pytest.raises(CarbongeoError):
        Normalization.from_dict({"aux_mean": [1.0]})
