"""Data checks: statistics per band and year, totals, and the warnings users rely on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _cubes import YEARS, make_config, write_cubes

from carbongeo.errors import CarbongeoError
from carbongeo.stages.check import check_data


@pytest.fixture()
def config(tmp_path: Path):
    config = make_config(tmp_path)
    write_cubes(config.tiles_dir, n_tiles=4)
    return config


def test_statistics_match_numpy(config) -> None:
    report = check_data(config)
    assert sorted(report.years) == list(YEARS)
    y = np.load(config.tiles_dir / "Y_2019.npy")
    valid = y[np.isfinite(y)]
    stats = report.years[2019]["target"]
    assert stats["count"] == valid.size
    assert stats["nan_count"] == int(np.isnan(y).sum())
    assert stats["mean"] == pytest.approx(valid.mean(), rel=1e-6)
    assert stats["std"] == pytest.approx(valid.astype(np.float64).std(), rel=1e-6)
    assert stats["max"] == pytest.approx(valid.max())
    assert stats["zero_fraction"] == pytest.approx((valid == 0).mean())
    assert stats["valid_fraction"] == pytest.approx(valid.size / y.size)
    assert stats["min"] <= stats["p1"] <= stats["p50"] <= stats["p99"] <= stats["max"]
    # b0 is log1p(target): strongly correlated; b1 is noise: not.
    assert report.years[2019]["b0"]["corr_with_target"] > 0.9
    assert any("b1: correlation" in w for w in report.warnings)
    json.dumps(report.to_dict())  # machine-readable
    assert "year 2019" in report.to_text()


def test_constant_and_all_nodata_bands_warn(config) -> None:
    x = np.load(config.tiles_dir / "X_2018.npy", mmap_mode="r+")
    x[:, 0] = 5.0
    x[:, 1] = np.nan
    x.flush()
    del x
    report = check_data(config, years=[2018])
    assert any("2018 b0: constant value 5" in w for w in report.warnings)
    assert any("2018 b1: all nodata" in w for w in report.warnings)
    assert report.years[2018]["b1"]["valid_fraction"] == 0.0


def test_totals_before_and_after_alignment(config) -> None:
    index_path = config.tiles_dir / "index.json"
    index = json.loads(index_path.read_text())
    index["totals"] = {
        "2018": {"target_source": 1000.0, "target_aligned": 1000.01},
        "2019": {"target_source": 1000.0, "target_aligned": 900.0},
    }
    index_path.write_text(json.dumps(index))
    report = check_data(config)
    assert report.totals["2018"]["relative_difference"] == pytest.approx(1e-5)
    assert not any(w.startswith("2018: target total") for w in report.warnings)
    assert any(w.startswith("2019: target total changed by 1.00e-01") for w in report.warnings)


def test_missing_cubes_name_the_command(config) -> None:
    (config.tiles_dir / "X_2020.npy").unlink()
    with pytest.raises(CarbongeoError, match="carbongeo tile --year 2020"):
        check_data(config)
    (config.tiles_dir / "index.json").unlink()
    with pytest.raises(CarbongeoError, match="run 'carbongeo tile' first"):
        check_data(config)
