"""A run's predictions and tile cubes as lazy, georeferenced xarray objects.

:func:`open_predictions` stacks the yearly COGs into one dask-backed ``(year, y, x)`` DataArray;
:func:`open_tiles` wraps a year's tile cube as ``(tile, band, y, x)``. Both carry the grid's CRS
(``.rio.crs``) and, where the data lie on one regular grid, its exact transform
(``.rio.transform()``); x and y are pixel centres, nodata is NaN, and nothing is read until the
values are computed.

Example::

    import carbongeo

    pred = carbongeo.open_predictions("carbongeo.toml")       # all years with a COG
    pred.sel(year=2020).sum().compute()                      # the 2020 total, in pred.units
    pred.rio.crs, pred.rio.transform()                       # the grid
    aux = carbongeo.open_tiles("carbongeo.toml", 2020)        # (tile, band, y, x)
    carbongeo.select_tile(aux, aux.tile[0]).rio.transform()  # one tile, georeferenced
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import dask.array
import numpy as np
import rasterio
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from carbongeo.config import PipelineConfig
from carbongeo.errors import (
    InputDataError,
    MissingRunFileError,
    ParameterError,
    RunFileError,
)
from carbongeo.grid import Grid
from carbongeo.outputs.files import RunFiles, run_files

CHUNK = 1024
"""Side in pixels of the dask chunks of a prediction (a multiple of the COG's 512 px blocks)."""

# Tags that differ from year to year or describe one file's writing, not the run.
_YEARLY_TAGS = {
    "year",
    "input_years",
    "mass_unplaced",
    "mass_worst_cell_rel_error",
    "TIFFTAG_SOFTWARE",
    "AREA_OR_POINT",
}


def pixel_centres(grid: Grid, *, coarse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The x (columns) and y (rows) coordinates of the pixel centres of the grid.

    Args:
        grid: The grid.
        coarse: Coarse cells (``scale x scale`` pixels over the padded grid) instead of pixels.

    Returns:
        float64 ``(x [width], y [height])``.
    """
    transform = grid.coarse_transform if coarse else grid.transform
    height, width = grid.coarse_shape if coarse else (grid.height, grid.width)
    a, _, c, _, e, f = transform[:6]
    return c + a * (np.arange(width) + 0.5), f + e * (np.arange(height) + 0.5)


def _georeference(array: xr.DataArray, crs: str, transform: object | None) -> xr.DataArray:
    array = array.rio.write_crs(CRS.from_user_input(crs).to_wkt())
    if transform is not None:
        array = array.rio.write_transform(transform)
    return array


def _check_geometry(path: Path, src: rasterio.io.DatasetReader, grid: Grid) -> None:
    if (src.height, src.width) != (grid.height, grid.width) or src.transform != grid.transform:
        raise InputDataError(
            f"{path} is not on the run's grid ({src.height} x {src.width}, {src.transform[:6]}); "
            "rerun: carbongeo mosaic --overwrite"
        )
    if src.crs is None or src.crs != CRS.from_user_input(grid.crs):
        raise InputDataError(f"{path} has another CRS than the run's grid; rerun mosaic")


def _chosen_years(files: RunFiles, years: Sequence[int] | None) -> list[int]:
    if years is None:
        chosen = [y for y in files.years if files.tifs[y].is_file()]
        if not chosen:
            raise MissingRunFileError(
                f"no prediction in {files.predictions_dir}; run: carbongeo mosaic"
            )
        return chosen
    chosen = sorted(dict.fromkeys(int(y) for y in years))
    for year in chosen:
        if year not in files.tifs:
            raise ParameterError(f"{year} is not a year of the run ({files.years})", param="years")
        if not files.tifs[year].is_file():
            raise MissingRunFileError(
                f"{files.tifs[year]} not found; run: carbongeo mosaic --years {year}"
            )
    return chosen


def open_predictions(
    config_or_workdir: PipelineConfig | str | Path,
    years: Sequence[int] | None = None,
    *,
    chunks: int = CHUNK,
) -> xr.DataArray:
    """The prediction COGs of a run as one lazy ``(year, y, x)`` DataArray.

    Args:
        config_or_workdir: A pipeline (object or file), a folder with ``carbongeo.toml``, or a
            run's workdir.
        years: Years to open; default every year of the run that has a COG.
        chunks: Side in pixels of the dask chunks (each chunk is one year).

    Returns:
        float32 emissions, NaN = nodata, dims ``(year, y, x)``; x/y are pixel centres in the
        grid's CRS, ``.rio.crs`` and ``.rio.transform()`` are the grid's. Attributes: ``units``
        (the COGs' units, see ``carbongeo mosaic --units``), ``long_name``, the provenance tags
        shared by every year (``model_id``, ``config_hash``, ``carbongeo_version``, ...) and
        ``target_units``.

    Raises:
        CarbongeoError: No COG (or a requested year's COG) exists, a COG is not on the run's
            grid, or the years' COGs are in different units.
    """
    import rioxarray

    files = run_files(config_or_workdir)
    grid = files.index.grid
    chosen = _chosen_years(files, years)
    layers, tags = [], []
    for year in chosen:
        path = files.tifs[year]
        with rasterio.open(path) as src:
            _check_geometry(path, src, grid)
            tags.append(src.tags())
        layer = rioxarray.open_rasterio(
            path, chunks={"band": 1, "y": chunks, "x": chunks}, masked=True, lock=False
        )
        layers.append(layer.data[0])
    units = {t.get("units", "") for t in tags}
    if len(units) > 1:
        raise RunFileError(
            f"the COGs of years {chosen} are in different units ({', '.join(sorted(units))}); "
            "rerun: carbongeo mosaic --overwrite --units ... for all years"
        )
    shared = {
        k: v
        for k, v in tags[0].items()
        if k not in _YEARLY_TAGS and all(t.get(k) == v for t in tags)
    }
    shared.setdefault("target_units", shared.get("units", ""))
    x, y = pixel_centres(grid)
    array = xr.DataArray(
        dask.array.stack(layers),
        dims=("year", "y", "x"),
        coords={"year": chosen, "y": y, "x": x},
        name="emissions",
        attrs={**shared, "long_name": "CO2 emissions", "units": units.pop()},
    )
    array.encoding["_FillValue"] = np.float32(np.nan)
    return _georeference(array, grid.crs, grid.transform)


_BAND_NAMES = {"Y": "target", "C": "coarse"}


def open_tiles(
    config_or_workdir: PipelineConfig | str | Path,
    year: int,
    kind: Literal["X", "Y", "C"] = "X",
) -> xr.DataArray:
    """A year's tile cube as a lazy ``(tile, band, y, x)`` DataArray.

    The cube stays memory-mapped; each tile is one dask chunk. Tiles do not share coordinates,
    so the pixel centres are the 2-D coordinates ``x_coord (tile, x)`` and ``y_coord (tile, y)``;
    :func:`select_tile` turns one tile into a georeferenced ``(band, y, x)`` array.

    Args:
        config_or_workdir: As in :func:`open_predictions`.
        year: The tiled year.
        kind: ``X`` (aux bands, after their ``transform``), ``Y`` (the target) or ``C`` (the
            coarse product, on coarse cells of ``scale x scale`` pixels).

    Returns:
        float32 values, NaN = nodata, with coordinates ``tile`` (tile ids), ``band`` (band
        names), ``band_units`` (band), ``row``/``col`` (each tile's offset in pixels of the
        cube) and the CRS (``.rio.crs``).

    Raises:
        CarbongeoError: The year has not been tiled, or the cube is missing.
    """
    if kind not in ("X", "Y", "C"):
        raise ParameterError(f"{kind!r} is not one of X, Y, C", param="kind")
    files = run_files(config_or_workdir)
    index = files.index
    path = files.cubes[kind].get(int(year))
    if path is None or int(year) not in index.years or not path.is_file():
        raise MissingRunFileError(
            f"no {kind} cube of {year} in the run; run: carbongeo tile --year {year}"
        )
    cube = np.load(path, mmap_mode="r")
    grid = index.grid
    coarse = kind == "C"
    step = grid.scale if coarse else 1
    size = cube.shape[-1]
    if kind == "X":
        bands, units = list(index.bands), [a.get("units", "") for a in index.aux]
    else:
        bands, units = [_BAND_NAMES[kind]], [index.target.get("units", "")]
    a, _, c, _, e, f = grid.transform[:6]
    rows = np.array([t.row // step for t in index.tiles])
    cols = np.array([t.col // step for t in index.tiles])
    offsets = np.arange(size) + 0.5
    x_coord = c + a * step * (cols[:, None] + offsets[None, :])
    y_coord = f + e * step * (rows[:, None] + offsets[None, :])
    array = xr.DataArray(
        dask.array.from_array(cube, chunks=(1, -1, -1, -1), name=False),
        dims=("tile", "band", "y", "x"),
        coords={
            "tile": [t.id for t in index.tiles],
            "band": bands,
            "band_units": ("band", units),
            "row": ("tile", rows),
            "col": ("tile", cols),
            "x_coord": (("tile", "x"), x_coord),
            "y_coord": (("tile", "y"), y_coord),
        },
        name=f"{kind}_{year}",
        attrs={
            "year": int(year),
            "kind": kind,
            "config_hash": index.config_hash,
            "cube_transform": list((grid.coarse_transform if coarse else grid.transform)[:6]),
        },
    )
    return _georeference(array, grid.crs, None)


def select_tile(tiles: xr.DataArray, tile_id: int) -> xr.DataArray:
    """One tile of :func:`open_tiles` as a georeferenced ``(band, y, x)`` DataArray.

    Its x/y are the tile's pixel centres and ``.rio.transform()`` is exactly the tile's transform
    (:meth:`carbongeo.grid.Grid.tile_transform` for fine cubes).
    """
    tile = tiles.sel(tile=int(tile_id))
    transform = Affine(*tiles.attrs["cube_transform"]) @ Affine.translation(
        int(tile.col), int(tile.row)
    )
    tile = tile.assign_coords(x=tile.x_coord.values, y=tile.y_coord.values)
    tile = tile.drop_vars(["x_coord", "y_coord", "row", "col"])
    return tile.rio.write_transform(transform)
