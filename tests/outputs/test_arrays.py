"""Tests of the xarray API: open_predictions and open_tiles are lazy and carry the exact grid."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from _cubes import BANDS, make_world
from _predictions import MODEL_ID, UNITS, UTM_TRANSFORM, UTM_WKT, YEARS, write_predictions
from affine import Affine
from rasterio.crs import CRS

import carbongeo
from carbongeo.config import PipelineConfig
from carbongeo.errors import CarbongeoError
from carbongeo.grid import Window
from carbongeo.io.cog import write_cog
from carbongeo.outputs.arrays import open_predictions, open_tiles, select_tile
from carbongeo.store.tiles import load_index


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    return write_predictions(tmp_path_factory.mktemp("arrays"))


def test_predictions_are_a_lazy_year_y_x_array_equal_to_the_npy(run: PipelineConfig) -> None:
    pred = open_predictions(run)
    assert pred.dims == ("year", "y", "x") and pred.shape == (2, 40, 56)
    assert pred.chunks is not None  # dask-backed: nothing read yet
    assert pred["year"].values.tolist() == list(YEARS)
    for year in YEARS:
        npy = np.load(run.layout.prediction_npy(year))
        np.testing.assert_array_equal(pred.sel(year=year).values, npy)  # NaN where nodata
    assert pred.dtype == np.float32 and np.isnan(pred.values[:, 0, 0]).all()


def test_predictions_carry_the_exact_grid_units_and_provenance(run: PipelineConfig) -> None:
    pred = open_predictions(run)
    assert pred.rio.crs == CRS.from_wkt(UTM_WKT)
    assert pred.rio.transform() == UTM_TRANSFORM
    assert pred.x.values[0] == 300500.0 and pred.y.values[0] == 3011500.0  # pixel centres
    assert pred.rio.transform(recalc=True).almost_equals(UTM_TRANSFORM)
    assert math.isnan(pred.rio.nodata)
    assert pred.attrs["units"] == UNITS and pred.attrs["target_units"] == UNITS
    assert pred.attrs["model_id"] == MODEL_ID and pred.attrs["config_hash"] == run.data_hash()
    assert pred.attrs["carbongeo_version"] == carbongeo.__version__
    assert "year" not in pred.attrs and "input_years" not in pred.attrs  # per-year tags


def test_predictions_open_from_a_pipeline_file_its_folder_or_the_workdir(
    run: PipelineConfig, tmp_path: Path
) -> None:
    for source in (run.path, run.path.parent, run.workdir):
        assert open_predictions(source, [2020]).shape == (1, 40, 56)
    assert carbongeo.open_predictions is open_predictions  # the package-level API
    with pytest.raises(CarbongeoError, match="neither a pipeline file nor a run's workdir"):
        open_predictions(tmp_path)


def test_missing_years_and_mixed_units_are_one_line_errors(tmp_path: Path) -> None:
    config = write_predictions(tmp_path)
    with pytest.raises(CarbongeoError, match="2018 is not a year of the run"):
        open_predictions(config, [2018])
    tif = config.layout.prediction_tif(2020)
    tif.unlink()
    assert open_predictions(config)["year"].values.tolist() == [2019]  # what exists
    with pytest.raises(CarbongeoError, match=r"Pred_2020.tif not found; run: carbongeo mosaic"):
        open_predictions(config, [2019, 2020])
    write_cog(tif, np.ones((40, 56), np.float32), crs=UTM_WKT, transform=UTM_TRANSFORM,
              tags={"units": "kg CO2 m-2 s-1"})  # fmt: skip
    with pytest.raises(CarbongeoError, match="in different units"):
        open_predictions(config)


def test_a_cog_off_the_grid_is_refused(tmp_path: Path) -> None:
    config = write_predictions(tmp_path)
    tif = config.layout.prediction_tif(2019)
    shifted = UTM_TRANSFORM @ Affine.translation(1, 0)
    write_cog(tif, np.ones((40, 56), np.float32), crs=UTM_WKT, transform=shifted)
    with pytest.raises(CarbongeoError, match="is not on the run's grid"):
        open_predictions(config)


def test_tiles_are_tile_band_y_x_with_band_names_and_georeferenced_tiles(tmp_path: Path) -> None:
    config = make_world(tmp_path)
    index = load_index(config.tiles_dir)
    tiles = open_tiles(config, 2019)
    assert tiles.dims == ("tile", "band", "y", "x") and tiles.chunks is not None
    assert tiles.band.values.tolist() == list(BANDS)
    assert tiles.tile.values.tolist() == [t.id for t in index.tiles]
    np.testing.assert_array_equal(tiles.values, np.load(config.layout.tiles.cube("X", 2019)))
    assert tiles.rio.crs == CRS.from_user_input(index.grid.crs)
    record = index.tiles[5]
    tile = select_tile(tiles, record.id)
    assert tile.dims == ("band", "y", "x")
    assert tile.rio.transform() == index.grid.window_transform(
        Window(record.row, record.col, 32, 32)
    )
    x0, y0 = tile.rio.transform() @ (0.5, 0.5)
    assert (tile.x.values[0], tile.y.values[0]) == pytest.approx((x0, y0))
    np.testing.assert_array_equal(tile.values, tiles.values[5])
    target = open_tiles(config.workdir, 2020, "Y")
    assert target.band.values.tolist() == ["target"] and target.band_units.values[0] == "t"


def test_coarse_tiles_sit_on_the_coarse_grid(tmp_path: Path) -> None:
    config = write_predictions(tmp_path)
    index = load_index(config.tiles_dir)
    grid = index.grid
    cube = np.random.default_rng(0).uniform(size=(len(index.tiles), 1, 4, 4)).astype("f4")
    np.save(config.layout.tiles.cube("C", 2019), cube)
    coarse = open_tiles(config, 2019, "C")
    record = index.tiles[-1]
    tile = select_tile(coarse, record.id)
    expected = grid.coarse_transform @ Affine.translation(
        record.col // grid.scale, record.row // grid.scale
    )
    assert tile.rio.transform() == expected
    np.testing.assert_array_equal(tile.values, cube[-1])
    with pytest.raises(CarbongeoError, match="no C cube of 2020"):
        open_tiles(config, 2020, "C")
    with pytest.raises(CarbongeoError, match="kind: 'Z' is not one of X, Y, C"):
        open_tiles(config, 2019, "Z")  # type: ignore[arg-type]
