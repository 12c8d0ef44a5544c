"""Writing a world's layers as GeoTIFFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from carbongeo.grid import Grid
from carbongeo.io.atomic import atomic_path
from carbongeo.synth.layers import Layer


def write_layer(
    world_dir: Path, layer: Layer, data: np.ndarray, grid: Grid, year: int | None = None
) -> None:
    """Write one layer of the world (of `year` for a yearly layer) under `world_dir`."""
    write_raster(
        world_dir / layer.path_for(year),
        data,
        grid,
        nodata=layer.nodata,
        units=layer.units,
        description=layer.description_for(year),
    )


def write_raster(
    path: Path, data: np.ndarray, grid: Grid, *, nodata: float, units: str, description: str
) -> None:
    """Write one band as a deflate-compressed GeoTIFF, atomically.

    Args:
        path: The file to write.
        data: The band, of the grid's shape; its dtype is the file's.
        grid: Georeferencing of the band.
        nodata: The file's nodata value.
        units: Units tag of the dataset and the band.
        description: Band description.

    Raises:
        OSError: The file cannot be written.
    """
    floating = np.issubdtype(data.dtype, np.floating)
    profile: dict[str, object] = {
        "driver": "GTiff",
        "height": grid.height,
        "width": grid.width,
        "count": 1,
        "dtype": data.dtype.name,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "compress": "deflate",
        "predictor": 3 if floating else 2,
        "zlevel": 3,
    }
    block = _block_size(grid.height, grid.width)
    if block is not None:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data, 1)
        dst.set_band_description(1, description)
        dst.update_tags(units=units)
        dst.update_tags(1, units=units)


def _block_size(height: int, width: int) -> int | None:
    """The largest internal tile side (256 or 128) that fits the raster; None: strips."""
    for block in (256, 128):
        if height >= block and width >= block:
            return block
    return None
