"""Tests of carbongeo.store.predictions: the ``Pred_<year>`` pair, its writer and its readers."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from carbongeo.errors import InputDataError
from carbongeo.grid import Grid
from carbongeo.io.cog import validate_cog
from carbongeo.store.layout import RunLayout
from carbongeo.store.predictions import (
    file_sha256,
    open_prediction,
    open_prediction_pair,
    prediction_done,
    require_prediction,
)

GRID = Grid("EPSG:32650", Affine(100.0, 0, 300000.0, 0, -100.0, 2600000.0), 40, 56, 16, 4)
UNITS = "t CO2 / cell / yr"


def scene(seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).gamma(2.0, 5.0, (GRID.height, GRID.width))
    values[5:9, 10:30] = np.nan  # nodata
    return values.astype(np.float32)


def write_pair(layout: RunLayout, year: int, values: np.ndarray, rows_per_call: int = 8) -> None:
    tif, npy = layout.prediction_tif(year), layout.prediction_npy(year)
    with open_prediction_pair(tif, npy, GRID, {"year": str(year)}, UNITS) as (sink, writer):
        for top in range(0, values.shape[0], rows_per_call):
            sink(values[top : top + rows_per_call])
        writer.update_tags(note="done")


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_the_pair_holds_the_same_band_on_the_grid(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    values = scene()
    assert not prediction_done(layout, 2020)
    write_pair(layout, 2020, values)
    assert prediction_done(layout, 2020)
    assert listing(layout.predictions_dir) == ["Pred_2020.npy", "Pred_2020.tif"]
    array = np.load(layout.prediction_npy(2020))
    assert array.dtype == np.float32 and np.array_equal(array, values, equal_nan=True)
    ok, errors, _ = validate_cog(layout.prediction_tif(2020))
    assert ok, errors
    with rasterio.open(layout.prediction_tif(2020)) as src:
        assert (src.height, src.width, src.transform) == (GRID.height, GRID.width, GRID.transform)
        assert math.isnan(src.nodata) and src.units == (UNITS,)
        assert src.tags()["year"] == "2020" and src.tags()["note"] == "done"
        assert np.array_equal(src.read(1), values, equal_nan=True)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failure_leaves_neither_file_and_keeps_the_previous_pair(
    tmp_path: Path, error: BaseException
) -> None:
    layout = RunLayout(tmp_path)
    tif, npy = layout.prediction_tif(2020), layout.prediction_npy(2020)
    with pytest.raises(type(error)), open_prediction_pair(tif, npy, GRID, {}, UNITS) as (sink, _):
        sink(scene()[:16])  # rows were already written
        raise error
    assert listing(layout.predictions_dir) == []  # no partial file, no temporary
    write_pair(layout, 2020, scene(1))
    before = tif.read_bytes(), npy.read_bytes()
    with pytest.raises(type(error)), open_prediction_pair(tif, npy, GRID, {}, UNITS) as (sink, _):
        sink(scene(2)[:16])
        raise error
    assert (tif.read_bytes(), npy.read_bytes()) == before
    assert listing(layout.predictions_dir) == ["Pred_2020.npy", "Pred_2020.tif"]


def test_a_pair_with_missing_rows_is_not_published(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    tif, npy = layout.prediction_tif(2020), layout.prediction_npy(2020)
    with (
        pytest.raises(ValueError, match="only 24 of 40 rows"),
        open_prediction_pair(tif, npy, GRID, {}, UNITS) as (sink, _),
    ):
        sink(scene()[:24])
    assert listing(layout.predictions_dir) == []


def test_one_file_of_the_pair_is_not_a_finished_year(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    write_pair(layout, 2020, scene())
    layout.prediction_tif(2020).unlink()
    assert not prediction_done(layout, 2020)


def test_readers_name_the_mosaic_command(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    with pytest.raises(InputDataError, match=r"Pred_2020\.npy not found; run 'carbongeo mosaic"):
        open_prediction(layout, 2020, GRID)
    with pytest.raises(InputDataError, match=r"Pred_2020\.tif not found.*--year 2020' first"):
        require_prediction(layout, 2020, "tif")
    with pytest.raises(ValueError, match="npy or a .tif"):
        require_prediction(layout, 2020, "png")
    write_pair(layout, 2020, scene())
    assert require_prediction(layout, 2020, "tif") == layout.prediction_tif(2020)
    pred = open_prediction(layout, 2020, GRID)
    assert isinstance(pred, np.memmap) and np.array_equal(pred, scene(), equal_nan=True)
    other = Grid(GRID.crs, GRID.transform, 40, 40, 16, 4)
    with pytest.raises(InputDataError, match=r"shape \(40, 56\) but the grid is 40 x 40"):
        open_prediction(layout, 2020, other)


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    data = bytes(range(256)) * 5000  # more than one read chunk
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
