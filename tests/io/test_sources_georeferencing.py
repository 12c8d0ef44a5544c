"""Rasters georeferenced without a CRS and transform: GCPs, CF lat/lon without grid_mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import UTM50, utm_transform, write_raster
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS

from carbongeo.errors import InputDataError
from carbongeo.grid import Grid, Window
from carbongeo.io.sources import RasterSource, align_window, describe_source, validate_source

GRID = Grid(UTM50, utm_transform(res=1000.0), 40, 50, tile_size=16, scale=8)


def _align(path: Path, kind: str) -> np.ndarray:
    source = RasterSource("aux", str(path), kind)
    info = validate_source(source, GRID)
    return align_window(source, info, GRID, Window(0, 0, GRID.height, GRID.width))


def _gcp_raster(path: Path, values: np.ndarray, bend: float = 0.0) -> Path:
    """``values`` with no CRS or transform, only GCPs in UTM 50N that place pixel (r, c) where
    ``utm_transform()`` does, moved by ``bend`` metres times (r * c / size) (0: an affine)."""
    height, width = values.shape
    transform = utm_transform(res=1000.0)
    gcps = []
    for row in np.linspace(0, height, 5):
        for col in np.linspace(0, width, 5):
            x, y = transform @ (col, row)
            shift = bend * row * col / (height * width)
            gcps.append(GroundControlPoint(row=row, col=col, x=x + shift, y=y - shift))
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1}
    with rasterio.open(path, "w", **profile, dtype="float32", nodata=-9999.0) as dst:
        dst.write(values.astype(np.float32), 1)
        dst.gcps = (gcps, CRS.from_user_input(UTM50))
    return path


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_gcps_that_fit_an_affine_are_read_exactly(tmp_path: Path) -> None:
    values = np.random.default_rng(0).random((40, 50)).astype(np.float32) * 100
    path = _gcp_raster(tmp_path / "gcp.tif", values)
    meta = describe_source(RasterSource("aux", str(path), "extensive"))
    assert CRS.from_wkt(meta.crs) == CRS.from_user_input(UTM50)
    assert meta.transform.almost_equals(utm_transform(res=1000.0), precision=1e-6)
    reference = write_raster(tmp_path / "ref.tif", values, UTM50, utm_transform(res=1000.0))
    np.testing.assert_array_equal(_align(path, "extensive"), _align(reference, "extensive"))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_gcps_off_an_affine_are_warped_through_them(tmp_path: Path) -> None:
    values = np.full((40, 50), 7.0, dtype=np.float32)
    path = _gcp_raster(tmp_path / "bent.tif", values, bend=3000.0)  # up to 3 km off an affine
    aligned = _align(path, "intensive")
    assert np.isfinite(aligned[:30, :35]).all()  # the bend moves only the far corner
    np.testing.assert_allclose(aligned[np.isfinite(aligned)], 7.0, rtol=1e-5)


def _netcdf_without_grid_mapping(path: Path, values: np.ndarray) -> Path:
    import netCDF4

    height, width = values.shape
    with netCDF4.Dataset(path, "w") as ds:
        ds.Conventions = "CF-1.8"
        ds.createDimension("lat", height)
        ds.createDimension("lon", width)
        lat = ds.createVariable("lat", "f8", ("lat",))
        lat.units, lat.standard_name = "degrees_north", "latitude"
        lon = ds.createVariable("lon", "f8", ("lon",))
        lon.units, lon.standard_name = "degrees_east", "longitude"
        lat[:] = (31.0 - 0.01 * (np.arange(height) + 0.5))[::-1]
        lon[:] = 116.0 + 0.01 * (np.arange(width) + 0.5)
        var = ds.createVariable("data", "f4", ("lat", "lon"))
        var[:] = values[::-1]
    return path


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_cf_lat_lon_without_grid_mapping_is_wgs84(tmp_path: Path) -> None:
    values = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    path = _netcdf_without_grid_mapping(tmp_path / "ntl.nc", values)
    meta = describe_source(RasterSource("ntl", str(path)))
    assert CRS.from_wkt(meta.crs) == CRS.from_epsg(4326)
    assert meta.transform.almost_equals(rasterio.Affine(0.01, 0, 116.0, 0, -0.01, 31.0))
    grid = Grid.from_bounds("EPSG:4326", 0.01, (116.0, 30.8, 116.3, 31.0), tile_size=16, scale=8)
    source = RasterSource("ntl", str(path))
    info = validate_source(source, grid)
    aligned = align_window(source, info, grid, Window(0, 0, 20, 30))
    np.testing.assert_array_equal(aligned, values)


def test_a_raster_without_any_georeferencing_is_still_refused(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "bare.tif", np.ones((8, 8)), crs=None)
    with pytest.raises(InputDataError, match="has no CRS"):
        describe_source(RasterSource("aux", str(path)))
