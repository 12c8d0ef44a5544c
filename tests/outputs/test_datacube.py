"""Tests of the CF datacube: round trips, units, CF compliance, CRS and transform, atomic writes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from _predictions import UNITS, UTM_TRANSFORM, UTM_WKT, YEARS, write_predictions
from affine import Affine
from rasterio.crs import CRS

from carbongeo.config import PipelineConfig
from carbongeo.errors import CarbongeoError
from carbongeo.grid import Grid
from carbongeo.outputs.arrays import open_predictions
from carbongeo.outputs.datacube import build_datacube, target_units, time_axis, write_datacube
from carbongeo.outputs.geodesy import geodetic_centres, pixel_areas
from carbongeo.outputs.units import parse_units, year_seconds
from carbongeo.store.tiles import load_index

GEO_TRANSFORM = Affine(0.01, 0.0, 118.0, 0.0, -0.01, 25.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    return write_predictions(tmp_path_factory.mktemp("cube"))


def cube(config: PipelineConfig, choice: str, chunk: int = 16) -> tuple[xr.Dataset, Grid]:
    pred = open_predictions(config, chunks=chunk)
    grid = load_index(config.tiles_dir).grid
    return build_datacube(pred, grid, target_units(choice, pred), chunk=chunk), grid


def written(config: PipelineConfig, choice: str, folder: Path, fmt: str = "netcdf") -> Path:
    ds, _ = cube(config, choice)
    path = folder / f"cube_{choice}{'.nc' if fmt == 'netcdf' else '.zarr'}"
    return write_datacube(ds, path, fmt, chunk=16)  # type: ignore[arg-type]


def npy(config: PipelineConfig, year: int) -> np.ndarray:
    return np.load(config.layout.prediction_npy(year))


def test_per_cell_round_trip_equals_the_npy(run: PipelineConfig, tmp_path: Path) -> None:
    with xr.open_dataset(written(run, "per_cell", tmp_path)) as ds:
        assert ds.emissions.dims == ("time", "y", "x") and ds.emissions.dtype == np.float32
        assert [t.year for t in ds.indexes["time"]] == list(YEARS)
        for k, year in enumerate(YEARS):
            np.testing.assert_array_equal(ds.emissions.values[k], npy(run, year))


@pytest.mark.parametrize("choice", ["flux", "per_km2"])
def test_totals_come_back_through_cell_area(
    run: PipelineConfig, tmp_path: Path, choice: str
) -> None:
    with xr.open_dataset(written(run, choice, tmp_path)) as ds:
        area = ds.cell_area.values
        for k, year in enumerate(YEARS):
            density = ds.emissions.values[k].astype(np.float64)
            if choice == "flux":  # kg CO2 m-2 s-1 -> t CO2 per cell and year
                totals = density * area * year_seconds(year) / 1000.0
            else:  # t CO2 km-2 -> t CO2 per cell and year
                totals = density * area / 1e6
            truth = npy(run, year)
            np.testing.assert_allclose(totals, truth, rtol=2e-7)  # float32 rounding only
            assert np.nansum(totals) == pytest.approx(np.nansum(truth.astype(np.float64)), 1e-7)
            np.testing.assert_array_equal(np.isnan(totals), np.isnan(truth))


def test_cf_attributes_coordinates_and_bounds(run: PipelineConfig, tmp_path: Path) -> None:
    path = written(run, "flux", tmp_path)
    with xr.open_dataset(path, decode_times=False, decode_coords=False) as ds:
        assert ds.attrs["Conventions"] == "CF-1.8"
        for key in ("source", "history", "model_id", "config_hash", "carbongeo_version"):
            assert ds.attrs.get(key), key
        emissions = ds.emissions
        assert emissions.attrs["units"] == "kg m-2 s-1"
        assert emissions.attrs["cell_methods"] == "area: mean time: mean"
        assert emissions.attrs["cell_measures"] == "area: cell_area"
        assert emissions.attrs["grid_mapping"] == "crs"
        assert emissions.attrs["standard_name"].startswith("tendency_of_atmosphere_mass")
        assert np.isnan(emissions.encoding["_FillValue"])
        assert set(emissions.attrs["coordinates"].split()) == {"lat", "lon"}
        mid, bounds = time_axis(list(YEARS))
        np.testing.assert_array_equal(ds.time_bnds.values, bounds)
        epoch = dt.date(1970, 1, 1)
        assert bounds[1].tolist() == [(dt.date(y, 1, 1) - epoch).days for y in (2020, 2021)]
        assert ds.time.attrs["units"] == "days since 1970-01-01 00:00:00"
        np.testing.assert_array_equal(ds.x_bnds.values[:, 1] - ds.x_bnds.values[:, 0], 1000.0)
        np.testing.assert_array_equal(ds.y_bnds.values[0], [3012000.0, 3011000.0])
        assert ds.x.attrs["standard_name"] == "projection_x_coordinate"
        assert ds.crs.attrs["grid_mapping_name"] == "transverse_mercator"
        assert CRS.from_wkt(ds.crs.attrs["crs_wkt"]) == CRS.from_wkt(UTM_WKT)
        grid = load_index(run.tiles_dir).grid
        np.testing.assert_allclose(ds.cell_area.values, pixel_areas(grid), rtol=1e-12)
        lon, lat = geodetic_centres(grid)
        np.testing.assert_array_equal(ds.lon.values, lon)
        np.testing.assert_array_equal(ds.lat.values, lat)
    with xr.open_dataset(written(run, "per_cell", tmp_path)) as ds:
        assert ds.emissions.attrs["units"] == "t"
        assert ds.emissions.attrs["cell_methods"] == "area: sum time: sum"
        assert ds.emissions.attrs["carbongeo_units"] == UNITS


def test_datacube_opens_with_rioxarray_on_the_exact_grid(
    run: PipelineConfig, tmp_path: Path
) -> None:
    with xr.open_dataset(written(run, "per_cell", tmp_path), decode_coords="all") as ds:
        emissions = ds.emissions
        assert emissions.rio.crs == CRS.from_wkt(UTM_WKT)
        assert emissions.rio.transform() == UTM_TRANSFORM
        assert emissions.rio.transform(recalc=True).almost_equals(UTM_TRANSFORM)


def test_chunks_are_stored_as_chunks(run: PipelineConfig, tmp_path: Path) -> None:
    import netCDF4

    ds, _ = cube(run, "flux")
    assert ds.emissions.chunks is not None and ds.cell_area.chunks is not None  # lazy
    with netCDF4.Dataset(written(run, "flux", tmp_path)) as nc:
        assert nc["emissions"].chunking() == [1, 16, 16]
        assert nc["emissions"].filters()["zlib"]


def test_zarr_round_trip(run: PipelineConfig, tmp_path: Path) -> None:
    pytest.importorskip("zarr", reason="the zarr format needs the zarr package")
    path = written(run, "flux", tmp_path, "zarr")
    with xr.open_zarr(path, decode_coords="all") as ds:
        assert ds.emissions.rio.crs == CRS.from_wkt(UTM_WKT)
        assert ds.emissions.rio.transform() == UTM_TRANSFORM
        for k, year in enumerate(YEARS):
            totals = ds.emissions.values[k] * ds.cell_area.values * year_seconds(year) / 1000
            np.testing.assert_allclose(totals, npy(run, year), rtol=2e-7)
    again = written(run, "flux", tmp_path, "zarr")  # replacing a store leaves nothing behind
    assert again == path and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_geographic_grid_has_lon_lat_axes_and_no_2d_coordinates(tmp_path: Path) -> None:
    config = write_predictions(tmp_path, crs="EPSG:4326", transform=GEO_TRANSFORM)
    with xr.open_dataset(written(config, "flux", tmp_path), decode_coords="all") as ds:
        assert ds.x.attrs["standard_name"] == "longitude" and ds.y.attrs["units"] == "degrees_north"
        assert "lat" not in ds.variables and "lon" not in ds.variables
        assert ds.crs.attrs["grid_mapping_name"] == "latitude_longitude"
        assert ds.emissions.rio.transform() == GEO_TRANSFORM
        assert ds.cell_area.values[-1, 0] > ds.cell_area.values[0, 0]  # larger towards 0 N


def test_failed_write_leaves_the_previous_file_and_no_temporary(
    run: PipelineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = written(run, "per_cell", tmp_path)
    before = path.read_bytes()

    def broken(self: xr.Dataset, target: Path, **kwargs: object) -> None:
        Path(target).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    with pytest.raises(CarbongeoError, match="No space left on device"):
        written(run, "per_cell", tmp_path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_unknown_format_and_unreadable_units_are_refused(tmp_path: Path) -> None:
    config = write_predictions(tmp_path, units="persons / cell")
    pred = open_predictions(config)
    with pytest.raises(CarbongeoError, match="target.units: cannot convert 'persons / cell'"):
        target_units("flux", pred)
    grid = load_index(config.tiles_dir).grid
    with pytest.raises(CarbongeoError, match="units of the prediction COGs: cannot convert"):
        build_datacube(pred, grid, parse_units(""))
    ds, _ = cube(write_predictions(tmp_path / "ok"), "per_cell")
    with pytest.raises(CarbongeoError, match="format: 'hdf4' is not one of netcdf, zarr"):
        write_datacube(ds, tmp_path / "x.hdf", "hdf4")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- CF checker
def cf_check(path: Path) -> tuple[int, str]:
    """Run the IOOS compliance-checker's CF-1.8 suite: (1 if any check failed else 0, report)."""
    import io
    from contextlib import redirect_stdout

    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    out = io.StringIO()
    with redirect_stdout(out):
        passed, errors = ComplianceChecker.run_checker(
            str(path), ["cf:1.8"], verbose=1, criteria="strict", output_format="text"
        )
    assert not errors, errors
    return (0 if passed else 1), out.getvalue()


@pytest.mark.parametrize(
    ("choice", "crs", "transform"),
    [
        ("per_cell", UTM_WKT, UTM_TRANSFORM),
        ("flux", UTM_WKT, UTM_TRANSFORM),
        ("per_km2", "EPSG:4326", GEO_TRANSFORM),
    ],
    ids=["per_cell-utm", "flux-utm", "per_km2-degrees"],
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the checker's own plugins
def test_cf_checker_finds_no_error(
    tmp_path: Path, choice: str, crs: str, transform: Affine
) -> None:
    pytest.importorskip(
        "compliance_checker",
        reason="the IOOS compliance-checker is not installed (pip install compliance-checker)",
    )
    config = write_predictions(tmp_path, crs=crs, transform=transform)
    failed, report = cf_check(written(config, choice, tmp_path))
    assert failed == 0, report
