"""The scene factory: every synthetic input the bench measures on, and nothing else writes them.

* tile scenes: a target in UTM 50N at 100 m (on the grid: copied), an intensive band in EPSG:4326
  (warped), an extensive one at 200 m (split by area) and a categorical one in EPSG:3857 at 250 m
  (warped, nearest), as tiled DEFLATE GeoTIFFs, and their pipeline file;
* training cubes: ``X``/``Y`` of three years and the tile index;
* mosaic scenes: the cubes and index of one year, an untrained checkpoint and a pipeline file.

Each maker keeps a complete scene that is already there (the file written last marks it
complete) and removes temporaries left by writers that died. Every file is written under a
temporary name and renamed (:mod:`carbongeo.io.atomic`).

The tile index, the cubes' names and the checkpoint come from the store
(:mod:`carbongeo.store`), like every run file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from carbongeo.bench.settings import BANDS, SCALE, SCENE_YEAR, TILE, TRAIN_YEARS
from carbongeo.config import DEFAULT_CONFIG_NAME, load_config
from carbongeo.grid import Grid
from carbongeo.io.atomic import (
    AtomicGroup,
    atomic_path,
    remove_stale_temps,
    write_text_atomic,
)
from carbongeo.synth.pipeline_file import pipeline_text

UTM = "EPSG:32650"
ORIGIN = (400_000.0, 3_400_000.0)
RESOLUTION = 100.0
# Rows per generated strip.
STRIP = 1024
_FLOAT_NODATA = -9999.0
_CLASS_NODATA = 255
_N_CLASSES = 5


# --------------------------------------------------------------------------- tile scenes
def _field(rows: np.ndarray, cols: np.ndarray, seed: int, scale: float) -> np.ndarray:
    """A smooth positive field plus noise (compresses like real data, not like white noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(rows.astype(np.float32), cols.astype(np.float32), indexing="ij")
    smooth = (np.sin(xx / (300 * scale)) * np.cos(yy / (250 * scale)) + 1.5) * 10
    return (smooth + rng.random(smooth.shape, dtype=np.float32)).astype(np.float32)


def _classes(field: np.ndarray) -> np.ndarray:
    """Classes 1-5 from a field of `_field` (which lies in [5, 26))."""
    return np.clip(field // 5, 1, _N_CLASSES).astype(np.uint8)


def _write_scene_raster(path: Path, grid: Grid, seed: int, *, categorical: bool = False) -> None:
    """Write a field (float32, or uint8 classes) on `grid` strip by strip, atomically."""
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": 1,
        "dtype": "uint8" if categorical else "float32",
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": _CLASS_NODATA if categorical else _FLOAT_NODATA,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    scale = max(grid.width, grid.height) / 4096
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, grid.height, STRIP):
            rows = np.arange(row, min(row + STRIP, grid.height))
            data = _field(rows, np.arange(grid.width), seed + row, scale)
            if categorical:
                data = _classes(data)
            dst.write(data, 1, window=Window(0, row, grid.width, len(rows)))


def _covering(crs: str, res: float, size: int) -> Grid:
    """A north-up grid of `res` in `crs` covering the UTM extent of a `size` px scene."""
    x0, y0 = ORIGIN
    extent = size * RESOLUTION
    west, south, east, north = transform_bounds(UTM, crs, x0, y0 - extent, x0 + extent, y0)
    width, height = math.ceil((east - west) / res), math.ceil((north - south) / res)
    return Grid(crs, Affine(res, 0.0, west, 0.0, -res, north), height, width)


def make_tile_scene(folder: Path, size: int) -> Path:
    """Write a ``size x size`` tile scene and its pipeline file (kept when already there).

    ``co2.tif`` (target, UTM 50N, 100 m: copied), ``ntl.tif`` (intensive, EPSG:4326 at 0.001
    degree: warped), ``pop.tif`` (extensive, UTM 50N at 200 m: split by area) and ``water.tif``
    (categorical, EPSG:3857 at 250 m: nearest class).

    Returns:
        The pipeline file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / DEFAULT_CONFIG_NAME
    if config.exists():
        return config
    remove_stale_temps(folder)
    x0, y0 = ORIGIN
    target = Grid(UTM, Affine(RESOLUTION, 0, x0, 0, -RESOLUTION, y0), size, size)
    pop = Grid(UTM, Affine(2 * RESOLUTION, 0.0, x0, 0.0, -2 * RESOLUTION, y0), size // 2, size // 2)
    _write_scene_raster(folder / "co2.tif", target, 1)
    _write_scene_raster(folder / "ntl.tif", _covering("EPSG:4326", 0.001, size), 2)
    _write_scene_raster(folder / "pop.tif", pop, 3)
    water = _covering("EPSG:3857", 250.0, size)
    _write_scene_raster(folder / "water.tif", water, 4, categorical=True)
    text = pipeline_text(
        {"workdir": "run", "years": [SCENE_YEAR]},
        [
            ("[grid]", {"tile_size": TILE, "scale": SCALE}),
            ("[target]", {"path": "co2.tif", "units": "t"}),
            ("[[aux]]", {"name": "ntl", "path": "ntl.tif", "kind": "intensive"}),
            ("[[aux]]", {"name": "pop", "path": "pop.tif", "kind": "extensive"}),
            ("[[aux]]", {"name": "water", "path": "water.tif", "kind": "categorical"}),
        ],
    )
    write_text_atomic(config, text)  # last: marks the scene complete
    return config


# --------------------------------------------------------------------------- store files
def scene_grid(height: int, width: int) -> Grid:
    """A UTM 50N grid at 100 m of ``height x width`` pixels, tiles of 128, scale 8."""
    return Grid(
        CRS.from_epsg(32650).to_wkt(),
        Affine(100.0, 0.0, 300000.0, 0.0, -100.0, 2600000.0),
        height,
        width,
        tile_size=TILE,
        scale=SCALE,
    )


def _write_index(tiles_dir: Path, grid: Grid, years: Sequence[int], n_tiles: int) -> None:
    """Write ``index.json`` for the first ``n_tiles`` tiles of ``grid`` (the cubes' rows)."""
    from carbongeo.store.tiles import TileIndex, TileRecord, write_index

    index = TileIndex(
        grid=grid,
        years=list(years),
        bands=list(BANDS),
        aux=[{"name": b, "kind": "intensive", "transform": "none", "units": ""} for b in BANDS],
        target={"units": "t CO2 / cell / yr", "kind": "extensive"},
        has_coarse=False,
        tiles=[TileRecord(t.id, t.row, t.col, {}) for t in islice(grid.iter_tiles(), n_tiles)],
    )
    write_index(tiles_dir, index)


def _save_untrained_checkpoint(
    path: Path, config_path: Path, dim: int, depth: int, seed: int
) -> None:
    """An untrained network of ``dim``/``depth`` and a plausible normalisation, as a checkpoint."""
    import torch

    from carbongeo.models.network import DSTCarbonFormer
    from carbongeo.store.checkpoint import Checkpoint, save_checkpoint
    from carbongeo.training.normalization import Normalization

    config = load_config(config_path)
    torch.manual_seed(seed)
    model = DSTCarbonFormer(len(BANDS), SCALE, dim=dim, depth=depth, value_scale=10.0)
    norm = Normalization(
        aux_mean=(3.0,) * len(BANDS),
        aux_std=(1.0,) * len(BANDS),
        value_scale=10.0,
        high_threshold=20.0,
        hotspot_threshold=40.0,
    )
    save_checkpoint(path, Checkpoint.for_inference(model, norm, config, bands=list(BANDS)))


# --------------------------------------------------------------------------- training cubes
def write_train_cubes(folder: Path, n_tiles: int, seed: int = 0) -> list[int]:
    """Write ``X``/``Y`` cubes of three years and ``index.json`` (kept when already there).

    Returns:
        The tile ids.
    """
    from carbongeo.store.layout import TilesLayout

    layout = TilesLayout(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(range(n_tiles))
    if layout.index.is_file():
        return ids
    remove_stale_temps(folder)
    rng = np.random.default_rng(seed)
    for year in TRAIN_YEARS:
        x = rng.normal(0.0, 1.0, (n_tiles, len(BANDS), TILE, TILE)).astype(np.float32)
        sparse = rng.random((n_tiles, 1, TILE, TILE)) < 0.3
        y = np.where(sparse, rng.lognormal(2.0, 1.5, (n_tiles, 1, TILE, TILE)), 0.0)
        with atomic_path(layout.cube("X", year)) as tmp:
            np.save(tmp, x)
        with atomic_path(layout.cube("Y", year)) as tmp:
            np.save(tmp, y.astype(np.float32))
    cols = math.ceil(math.sqrt(n_tiles))
    grid = scene_grid(TILE * math.ceil(n_tiles / cols), TILE * cols)
    _write_index(folder, grid, TRAIN_YEARS, n_tiles)  # last: marks the cubes complete
    return ids


# --------------------------------------------------------------------------- mosaic scenes
def make_mosaic_scene(folder: Path, size: int, dim: int = 8, depth: int = 1, seed: int = 0) -> Path:
    """Write cubes, index, an untrained checkpoint and a pipeline file (kept when already there).

    One year of a ``size x size`` scene with 9 aux bands and a nodata corner.

    Returns:
        The pipeline file.
    """
    config_path = folder / DEFAULT_CONFIG_NAME
    folder.mkdir(parents=True, exist_ok=True)
    text = pipeline_text(
        {"workdir": "run", "years": [SCENE_YEAR]},
        [
            ("[grid]", {"tile_size": TILE, "scale": SCALE}),
            ("[target]", {"path": "data/co2_{year}.tif", "units": "t CO2 / cell / yr"}),
            *(("[[aux]]", {"name": name, "path": f"data/{name}_{{year}}.tif"}) for name in BANDS),
            ("[model]", {"dim": dim, "depth": depth}),
            ("[mosaic]", {"overlap": 32, "batch_size": 8}),
        ],
    )
    write_text_atomic(config_path, text)
    config = load_config(config_path)
    tiles_dir = config.tiles_dir
    tiles = config.layout.tiles
    checkpoint = config.layout.best_checkpoint
    if tiles.index.is_file() and checkpoint.is_file():
        return config_path
    grid = scene_grid(size, size)
    tiles_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(tiles_dir)
    n = grid.tile_rows * grid.tile_cols
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:TILE, 0:TILE]
    with AtomicGroup() as group:
        x = np.lib.format.open_memmap(
            group.add(tiles.cube("X", SCENE_YEAR)),
            "w+",
            np.float32,
            (n, len(BANDS), TILE, TILE),
        )
        y = np.lib.format.open_memmap(
            group.add(tiles.cube("Y", SCENE_YEAR)), "w+", np.float32, (n, 1, TILE, TILE)
        )
        for tile in grid.iter_tiles():
            sea = (tile.row + rows) + (tile.col + cols) < size // 4  # a nodata corner
            aux = np.log1p(rng.uniform(0.0, 50.0, (len(BANDS), TILE, TILE))).astype(np.float32)
            target = rng.gamma(2.0, 5.0, (1, TILE, TILE)).astype(np.float32)
            aux[:, sea] = np.nan
            target[:, sea] = np.nan
            x[tile.id] = aux
            y[tile.id] = target
        x.flush()
        y.flush()
        del x, y
    _save_untrained_checkpoint(checkpoint, config_path, dim, depth, seed)
    _write_index(tiles_dir, grid, [SCENE_YEAR], n)  # last: marks the scene complete
    return config_path
