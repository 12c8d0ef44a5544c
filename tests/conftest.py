"""Shared test helpers: tiny georeferenced rasters and pipeline files built on the fly.

Use the fixtures (``make_raster``, ``make_netcdf``, ``make_pipeline``) from any test, or import the
functions directly (``from conftest import write_raster``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from carbongeo.config import PipelineConfig, load_config

UTM50 = "EPSG:32650"
WGS84 = "EPSG:4326"


def utm_transform(x0: float = 500_000.0, y0: float = 3_300_000.0, res: float = 1000.0) -> Affine:
    """A north-up transform with its upper-left corner at ``(x0, y0)`` and square pixels."""
    return Affine(res, 0.0, x0, 0.0, -res, y0)


def write_raster(
    path: str | Path,
    array: np.ndarray,
    crs: str | None = UTM50,
    transform: Affine | None = None,
    nodata: float | None = None,
    dtype: str | np.dtype | None = None,
    *,
    tiled: bool = False,
    blocksize: int = 256,
    compress: str | None = None,
    **profile: Any,
) -> Path:
    """Write a GeoTIFF from a ``[H, W]`` or ``[bands, H, W]`` array.

    Args:
        path: Output file (parent folders are created).
        array: Pixel values; 2-D for one band.
        crs: CRS (any rasterio spelling) or None for a raster without CRS.
        transform: Affine transform; default :func:`utm_transform` (1 km pixels).
        nodata: Declared nodata value, or None for none.
        dtype: Stored dtype; default the array's.
        tiled: Write internal tiles of ``blocksize`` pixels (blocksize must be a multiple of 16).
        blocksize: Tile side when ``tiled``.
        compress: GDAL compression (e.g. ``"deflate"``).
        **profile: Extra creation options passed to rasterio.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(array)
    if data.ndim == 2:
        data = data[None]
    dtype = np.dtype(dtype or data.dtype)
    options: dict[str, Any] = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": dtype.name,
        "transform": transform if transform is not None else utm_transform(),
    }
    if crs is not None:
        options["crs"] = crs
    if nodata is not None:
        options["nodata"] = nodata
    if tiled:
        options.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    if compress:
        options["compress"] = compress
    options.update(profile)
    with rasterio.open(path, "w", **options) as dst:
        dst.write(data.astype(dtype))
    return path


def write_netcdf(
    path: str | Path,
    array: np.ndarray,
    *,
    west: float = 116.0,
    north: float = 31.0,
    res: float = 0.01,
    variable: str = "data",
    fill_value: float | None = None,
    georeferenced: bool = True,
    extra_variables: Sequence[str] = (),
) -> Path:
    """Write a CF-1.x netCDF with one ``[lat, lon]`` variable on a regular lat/lon grid.

    Latitudes are stored south to north (as many products do); GDAL presents the data north-up.
    ``array`` is given north-up (row 0 = northernmost).

    Args:
        path: Output file.
        array: ``[H, W]`` values, north-up.
        west: Longitude of the western edge.
        north: Latitude of the northern edge.
        res: Cell size in degrees.
        variable: Name of the data variable.
        fill_value: ``_FillValue`` (nodata), or None.
        georeferenced: Write lat/lon coordinates and a grid_mapping; False writes bare dimensions.
        extra_variables: Names of further variables with the same data (a multi-variable file).
    """
    import netCDF4

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = array.shape
    with netCDF4.Dataset(path, "w") as ds:
        ds.Conventions = "CF-1.8"
        ds.createDimension("lat", height)
        ds.createDimension("lon", width)
        if georeferenced:
            lat = ds.createVariable("lat", "f8", ("lat",))
            lat.units = "degrees_north"
            lat.standard_name = "latitude"
            lon = ds.createVariable("lon", "f8", ("lon",))
            lon.units = "degrees_east"
            lon.standard_name = "longitude"
            lat[:] = (north - res * (np.arange(height) + 0.5))[::-1]
            lon[:] = west + res * (np.arange(width) + 0.5)
            crs = ds.createVariable("crs", "i4")
            crs.grid_mapping_name = "latitude_longitude"
            crs.semi_major_axis = 6378137.0
            crs.inverse_flattening = 298.257223563
            crs.crs_wkt = CRS.from_epsg(4326).to_wkt()
        for name in (variable, *extra_variables):
            var = ds.createVariable(name, "f4", ("lat", "lon"), fill_value=fill_value)
            if georeferenced:
                var.grid_mapping = "crs"
            var[:] = np.asarray(array, dtype=np.float32)[::-1]
    return path


def write_pipeline(folder: str | Path, text: str, name: str = "carbongeo.toml") -> PipelineConfig:
    """Write a pipeline file (TOML text) into ``folder`` and load it."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return load_config(path)


@pytest.fixture(name="make_raster")
def _make_raster_fixture() -> Callable[..., Path]:
    """:func:`write_raster` as a fixture."""
    return write_raster


@pytest.fixture(name="make_netcdf")
def _make_netcdf_fixture() -> Callable[..., Path]:
    """:func:`write_netcdf` as a fixture."""
    return write_netcdf


@pytest.fixture(name="make_pipeline")
def _make_pipeline_fixture() -> Callable[..., PipelineConfig]:
    """:func:`write_pipeline` as a fixture."""
    return write_pipeline
