"""The CF-1.8 datacube of a run: every year in one netCDF or Zarr store, in the units of choice.

:func:`build_datacube` turns the lazy predictions of :func:`~carbongeo.outputs.arrays.
open_predictions` into a lazy :class:`xarray.Dataset` that follows the CF conventions 1.8:

* ``time`` (the middle of each calendar year) with ``time_bnds`` (1 January to 1 January);
* ``x`` / ``y`` pixel centres with ``x_bnds`` / ``y_bnds``, and, on a projected grid, 2-D ``lat``
  / ``lon`` of the pixel centres on the grid's own datum;
* ``crs``, the grid mapping: CF projection parameters, ``crs_wkt`` (and GDAL's ``spatial_ref`` and
  ``GeoTransform``, so GDAL and rioxarray recover the exact grid);
* ``emissions (time, y, x)``, float32, in the chosen units (:mod:`carbongeo.outputs.units`) with
  ``units``, ``long_name``, ``cell_methods`` (``area: sum`` for totals per cell, ``area: mean``
  for densities and fluxes), ``cell_measures``, ``grid_mapping``, ``_FillValue`` (NaN);
* ``cell_area (y, x)``: the true area of every pixel in m2 (:mod:`carbongeo.outputs.geodesy`), so
  totals can be recovered from any unit.

Every large variable is a dask array computed chunk by chunk (one year of ``chunk x chunk``
pixels at a time), so :func:`write_datacube` streams: memory depends on the chunk size and the
number of threads, not on the scene. The file or folder is written under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import dask.array
import numpy as np
import xarray as xr
from pyproj import CRS

from carbongeo.errors import OutputError, ParameterError
from carbongeo.grid import Grid, Window
from carbongeo.io.atomic import commit, output_error, remove_quietly, temp_path
from carbongeo.outputs.arrays import CHUNK, pixel_centres
from carbongeo.outputs.geodesy import geodetic_centres, pixel_areas
from carbongeo.outputs.units import (
    Conversion,
    EmissionUnits,
    choice_units,
    conversion,
    parse_units,
)

Format = Literal["netcdf", "zarr"]
FORMATS: tuple[str, ...] = ("netcdf", "zarr")
SUFFIXES: dict[str, str] = {"netcdf": ".nc", "zarr": ".zarr"}
TIME_UNITS = "days since 1970-01-01 00:00:00"
_EPOCH = dt.date(1970, 1, 1)
_COMPRESSION = 4  # zlib level of the netCDF variables: most of the gain of 9 at a third of the time
AREA_METHOD = (
    "true area on the ellipsoid: pixel corners projected to Lambert cylindrical equal-area on "
    "the grid's ellipsoid, area of the quadrilateral (agrees with the geodesic polygon of the "
    "corners to better than 1e-6)"
)


def _days(date: dt.date) -> float:
    return float((date - _EPOCH).days)


def time_axis(years: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Mid-year times and ``[1 January, next 1 January]`` bounds, in days since 1970-01-01."""
    bounds = np.array([[_days(dt.date(y, 1, 1)), _days(dt.date(y + 1, 1, 1))] for y in years])
    return bounds.mean(axis=1), bounds


def _block_window(block_info: dict[Any, Any], axes: tuple[int, int]) -> Window:
    (r0, r1), (c0, c1) = (block_info[None]["array-location"][a] for a in axes)
    return Window(r0, c0, r1 - r0, c1 - c0)


def _convert_block(
    block: np.ndarray,
    convert: Conversion,
    grid: Grid,
    years: list[int],
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    assert block_info is not None
    year_range = block_info[None]["array-location"][0]
    window = _block_window(block_info, (1, 2))
    # Areas are computed again for every year so that chunks never wait for each other.
    area = pixel_areas(grid, window) if convert.area_power else None
    out = np.empty(block.shape, dtype=np.float32)
    for i, k in enumerate(range(*year_range)):
        out[i] = convert.apply(block[i], years[k], area)
    return out


def _area_block(grid: Grid, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    assert block_info is not None
    return pixel_areas(grid, _block_window(block_info, (0, 1)))


def _lonlat_block(grid: Grid, which: int, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    assert block_info is not None
    return geodetic_centres(grid, _block_window(block_info, (0, 1)))[which]


def _chunks(length: int, size: int) -> tuple[int, ...]:
    return tuple(min(size, length - start) for start in range(0, length, size))


def grid_mapping_attrs(grid: Grid) -> dict[str, Any]:
    """Attributes of the CF grid-mapping variable of ``grid``.

    pyproj's CF parameters (``grid_mapping_name``, ellipsoid, projection parameters) with
    ``crs_wkt``, plus GDAL's ``spatial_ref`` and ``GeoTransform`` so that GDAL and rioxarray read
    the transform exactly instead of recomputing it from the coordinates.
    """
    crs = CRS.from_user_input(grid.crs)
    attrs: dict[str, Any] = dict(crs.to_cf())
    wkt = crs.to_wkt()
    attrs["crs_wkt"] = wkt
    attrs["spatial_ref"] = wkt
    attrs["GeoTransform"] = " ".join(repr(float(v)) for v in grid.transform.to_gdal())
    return attrs


def _axis_attrs(crs: CRS, axis: Literal["x", "y"]) -> dict[str, str]:
    if crs.is_geographic:
        name, units = (
            ("longitude", "degrees_east") if axis == "x" else ("latitude", "degrees_north")
        )
        return {"standard_name": name, "long_name": name, "units": units, "axis": axis.upper()}
    unit = crs.axis_info[0].unit_name if crs.axis_info else "metre"
    units = {"metre": "m", "foot": "ft", "US survey foot": "US_survey_foot"}.get(unit, unit)
    return {
        "standard_name": f"projection_{axis}_coordinate",
        "long_name": f"{axis} coordinate of projection (pixel centre)",
        "units": units,
        "axis": axis.upper(),
    }


def build_datacube(
    predictions: xr.DataArray,
    grid: Grid,
    units: EmissionUnits,
    *,
    chunk: int = CHUNK,
    attrs: dict[str, str] | None = None,
) -> xr.Dataset:
    """The CF-1.8 dataset of ``predictions`` in ``units`` (lazy; nothing is computed).

    Args:
        predictions: ``(year, y, x)`` emissions on ``grid`` with a ``units`` attribute, as from
            :func:`~carbongeo.outputs.arrays.open_predictions`.
        grid: The run's grid.
        units: The units of the ``emissions`` variable.
        chunk: Side in pixels of the chunks (computation and storage).
        attrs: Further global attributes, which win over the defaults: the conventions, title,
            source, history, creation date and the provenance that the COGs record
            (``model_id``, ``checkpoint``, ``config_hash``, ``training_data_hash``,
            ``target_units``); ``carbongeo_version`` is the version writing the datacube.

    Raises:
        UnitsError: The predictions' units cannot be read.
    """
    years = [int(y) for y in predictions["year"].values]
    src = parse_units(str(predictions.attrs.get("units", "")), "units of the prediction COGs")
    convert = conversion(src, units)
    rows, cols = _chunks(grid.height, chunk), _chunks(grid.width, chunk)
    data = predictions.data.rechunk(((1,) * len(years), rows, cols))
    if not convert.identity:
        data = data.map_blocks(
            _convert_block, convert, grid, years, dtype=np.float32, meta=np.array((), np.float32)
        )
    crs = CRS.from_user_input(grid.crs)
    x, y = pixel_centres(grid)
    a, _, c, _, e, f = grid.transform[:6]
    x_bnds = np.stack([c + a * np.arange(grid.width), c + a * np.arange(1, grid.width + 1)], 1)
    y_bnds = np.stack([f + e * np.arange(grid.height), f + e * np.arange(1, grid.height + 1)], 1)
    time, time_bnds = time_axis(years)
    field = {"chunks": (rows, cols), "dtype": np.float64, "meta": np.array((), np.float64)}
    area = dask.array.map_blocks(_area_block, grid, **field)

    emission_attrs = {
        "long_name": units.long_name,
        "units": units.cf_units,
        "carbongeo_units": units.label,
        "cell_methods": units.cell_methods,
        "cell_measures": "area: cell_area",
        "grid_mapping": "crs",
    }
    if units.standard_name:
        emission_attrs["standard_name"] = units.standard_name
    coords: dict[str, Any] = {
        "time": (
            "time",
            time,
            {
                "standard_name": "time",
                "long_name": "time (middle of the calendar year)",
                "units": TIME_UNITS,
                "calendar": "standard",
                "axis": "T",
                "bounds": "time_bnds",
            },
        ),
        "y": ("y", y, {**_axis_attrs(crs, "y"), "bounds": "y_bnds"}),
        "x": ("x", x, {**_axis_attrs(crs, "x"), "bounds": "x_bnds"}),
    }
    if not crs.is_geographic:
        coords["lat"] = (
            ("y", "x"),
            dask.array.map_blocks(_lonlat_block, grid, 1, **field),
            {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north"},
        )
        coords["lon"] = (
            ("y", "x"),
            dask.array.map_blocks(_lonlat_block, grid, 0, **field),
            {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east"},
        )
    variables: dict[str, Any] = {
        "emissions": (("time", "y", "x"), data, emission_attrs),
        "cell_area": (
            ("y", "x"),
            area,
            {
                "standard_name": "cell_area",
                "long_name": "area of the grid cell",
                "units": "m2",
                "grid_mapping": "crs",
                "comment": AREA_METHOD,
            },
        ),
        "crs": ((), np.int32(0), grid_mapping_attrs(grid)),
        "time_bnds": (("time", "bnds"), time_bnds, {"units": TIME_UNITS, "calendar": "standard"}),
        "x_bnds": (("x", "bnds"), x_bnds, {"units": coords["x"][2]["units"]}),
        "y_bnds": (("y", "bnds"), y_bnds, {"units": coords["y"][2]["units"]}),
    }
    return xr.Dataset(
        variables, coords=coords, attrs={**_global_attrs(predictions), **(attrs or {})}
    )


def _global_attrs(predictions: xr.DataArray) -> dict[str, str]:
    from carbongeo import __version__

    tags = predictions.attrs
    years = [int(y) for y in predictions["year"].values]
    span = str(years[0]) if len(years) == 1 else f"{years[0]}-{years[-1]}"
    made_by = tags.get("carbongeo_version", __version__)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    return {
        "Conventions": "CF-1.8",
        "title": f"Downscaled CO2 emissions {span}",
        "source": (
            f"carbongeo {made_by}: mass-conserving downscaling of a coarse emission product by "
            f"the model {tags.get('model_id', 'unknown')}"
        ),
        "history": f"{now} written by carbongeo {__version__}",
        "date_created": now,
        "model_id": str(tags.get("model_id", "")),
        "checkpoint": str(tags.get("checkpoint", "")),
        "config_hash": str(tags.get("config_hash", "")),
        "training_data_hash": str(tags.get("training_data_hash", "")),
        "carbongeo_version": __version__,
        "target_units": str(tags.get("target_units", "")),
        "comment": (
            "In per-cell units every coarse cell of the input sums to its coarse total; "
            f"cell_area is the {AREA_METHOD}"
        ),
    }


def _encoding(ds: xr.Dataset, fmt: Format, chunk: int) -> dict[str, dict[str, Any]]:
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        enc: dict[str, Any] = {"_FillValue": None}
        if name == "emissions":
            enc["_FillValue"] = np.float32(np.nan)
        if var.ndim >= 2 and name not in ("time_bnds", "x_bnds", "y_bnds"):
            shape = tuple(min(chunk, n) if d in ("y", "x") else 1 for d, n in var.sizes.items())
            if fmt == "netcdf":
                enc.update(chunksizes=shape, zlib=True, complevel=_COMPRESSION, shuffle=True)
            else:
                enc["chunks"] = shape
        if name in ("time", "time_bnds"):
            enc["dtype"] = "float64"
        encoding[str(name)] = enc
    return encoding


def _require(module: str, extra: str, fmt: str) -> None:
    try:
        __import__(module)
    except ImportError as err:
        raise ParameterError(
            f"{fmt} needs the {module} package; install it with: pip install 'carbongeo[{extra}]'",
            param="format",
        ) from err


def write_datacube(ds: xr.Dataset, path: Path, fmt: Format, *, chunk: int = CHUNK) -> Path:
    """Write ``ds`` to ``path`` as netCDF-4 or Zarr, streaming chunk by chunk, atomically.

    A netCDF file is written under a temporary name and renamed over ``path``. A Zarr store is a
    folder: it is written under a temporary name and moved into place; an existing store at
    ``path`` is moved aside first and deleted afterwards, so ``path`` never holds a partial
    store.

    Raises:
        CarbongeoError: ``fmt`` is unknown or its package is missing.
        OutputError: The folder is not writable or the disk is full.
    """
    if fmt not in FORMATS:
        raise ParameterError(f"{fmt!r} is not one of {', '.join(FORMATS)}", param="format")
    _require("netCDF4" if fmt == "netcdf" else "zarr", "netcdf" if fmt == "netcdf" else "zarr", fmt)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(path, err) from err
    encoding = _encoding(ds, fmt, chunk)
    tmp = temp_path(path)
    try:
        if fmt == "netcdf":
            ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
        else:
            ds.to_zarr(tmp, mode="w-", encoding=encoding, consolidated=True, zarr_format=2)
    except BaseException as err:
        _remove_tree(tmp)
        if isinstance(err, OSError):
            raise output_error(path, err) from err
        raise
    if fmt == "netcdf":
        commit(tmp, path)
    else:
        _replace_tree(tmp, path)
    return path


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        remove_quietly(path)


def _replace_tree(tmp: Path, path: Path) -> None:
    old = path.with_name(f"{temp_path(path).name}-old")
    try:
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as err:
        _remove_tree(tmp)
        with contextlib.suppress(OSError):
            if old.exists() and not path.exists():
                os.replace(old, path)  # put the previous store back
        raise OutputError(
            f"cannot write {path}: {err.strerror or err} (check that the folder is writable)"
        ) from err
    _remove_tree(old)


def target_units(choice: str, predictions: xr.DataArray) -> EmissionUnits:
    """The units of ``choice`` for a run whose target units the predictions record.

    Raises:
        UnitsError: The target's units cannot be read, or ``choice`` is unknown.
    """
    target = parse_units(str(predictions.attrs.get("target_units", "")), "target.units")
    return choice_units(choice, target)
