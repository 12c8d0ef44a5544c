"""A run's predictions folder written directly, without a model: for the outputs tests.

:func:`write_predictions` writes what ``carbongeo tile`` and ``carbongeo mosaic`` leave behind for
the outputs package to read: ``tiles/index.json`` (the grid, years and units) and, per year,
``predictions/Pred_<year>.tif`` (a COG with the mosaic's tags) and ``Pred_<year>.npy`` holding the
same float32 array, with a nodata corner. :func:`mosaic_run` builds a real, tiny mosaic run
(cubes and an untrained checkpoint) for the tests that go through ``carbongeo mosaic``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from affine import Affine
from conftest import write_pipeline
from rasterio.crs import CRS

from carbongeo import __version__
from carbongeo.config import PipelineConfig
from carbongeo.grid import Grid
from carbongeo.io.cog import write_cog
from carbongeo.models.network import DSTCarbonFormer
from carbongeo.store.checkpoint import Checkpoint, save_checkpoint
from carbongeo.store.tiles import TileIndex, TileRecord
from carbongeo.store.tiles import write_index as write_tile_index
from carbongeo.training.normalization import Normalization

UTM_WKT = CRS.from_epsg(32650).to_wkt()
UTM_TRANSFORM = Affine(1000.0, 0.0, 300000.0, 0.0, -1000.0, 3012000.0)
UNITS = "t CO2 / cell / yr"
YEARS = (2019, 2020)  # 2020 is a leap year: flux conversions see 365 and 366 days
MODEL_ID = "0123456789abcdef"


def _config(root: Path, years: Sequence[int], units: str, tile: int, scale: int) -> PipelineConfig:
    """Write ``root/carbongeo.toml`` (workdir ``run``, one aux band, a tiny model) and load it."""
    return write_pipeline(
        root,
        f"""workdir = "run"
years = {list(years)}
[grid]
tile_size = {tile}
scale = {scale}
[target]
path = "co2_{{year}}.tif"
units = "{units}"
[[aux]]
name = "ntl"
path = "ntl_{{year}}.tif"
[model]
dim = 8
depth = 1
[mosaic]
overlap = 8
batch_size = 4
""",
    )


def write_index(config: PipelineConfig, grid: Grid, units: str) -> None:
    """Write ``tiles/index.json`` for ``grid`` (no cubes)."""
    index = TileIndex(
        grid=grid,
        years=list(config.years),
        bands=["ntl"],
        aux=[{"name": "ntl", "kind": "intensive", "transform": "none", "units": ""}],
        target={"units": units, "kind": "extensive"},
        has_coarse=False,
        tiles=[TileRecord(t.id, t.row, t.col, {}) for t in grid.tiles()],
        config_hash=config.data_hash(),
    )
    config.tiles_dir.mkdir(parents=True, exist_ok=True)
    config.tiles_dir.mkdir(parents=True, exist_ok=True)
    write_tile_index(config.tiles_dir, index)


def write_predictions(
    root: Path,
    *,
    crs: str = UTM_WKT,
    transform: Affine = UTM_TRANSFORM,
    height: int = 40,
    width: int = 56,
    years: Sequence[int] = YEARS,
    units: str = UNITS,
    tile: int = 16,
    scale: int = 4,
    seed: int = 0,
) -> PipelineConfig:
    """Write the index and the ``Pred_<year>`` pair of every year; return the run's config."""
    config = _config(root, years, units, tile, scale)
    grid = Grid(crs, transform, height, width, tile_size=tile, scale=scale)
    write_index(config, grid, units)
    rng = np.random.default_rng(seed)
    config.predictions_dir.mkdir(parents=True, exist_ok=True)
    for k, year in enumerate(years):
        values = rng.gamma(2.0, 50.0 * (k + 1), (height, width)).astype(np.float32)
        values[:5, :7] = np.nan  # a nodata corner
        tags = {
            "units": units,
            "year": str(year),
            "model_id": MODEL_ID,
            "checkpoint": "best.pt",
            "config_hash": config.data_hash(),
            "carbongeo_version": __version__,
            "input_years": f"{year},{year},{year}",
        }
        tif, npy = config.layout.prediction_tif(year), config.layout.prediction_npy(year)
        write_cog(
            tif,
            values,
            crs=crs,
            transform=transform,
            tags=tags,
            units=units,
            description=f"CO2 emissions {units}",
        )
        np.save(npy, values)
    return config


def mosaic_run(root: Path, *, height: int = 40, width: int = 48) -> PipelineConfig:
    """Tile cubes, index and an untrained tiny checkpoint, ready for ``mosaic_years``."""
    tile, scale = 16, 4
    config = _config(root, YEARS, UNITS, tile, scale)
    grid = Grid(UTM_WKT, UTM_TRANSFORM, height, width, tile_size=tile, scale=scale)
    write_index(config, grid, UNITS)
    rng = np.random.default_rng(3)
    rows, cols = grid.padded_shape
    for year in YEARS:
        for kind in ("X", "Y"):
            scene = np.full((1, rows, cols), np.nan, np.float32)
            scene[:, :height, :width] = rng.gamma(2.0, 5.0, (1, height, width))
            cube = np.stack(
                [scene[:, t.row : t.row + tile, t.col : t.col + tile] for t in grid.tiles()]
            )
            np.save(config.layout.tiles.cube(kind, year), cube)
    torch.manual_seed(0)
    model = DSTCarbonFormer(1, scale, dim=8, depth=1, value_scale=10.0)
    norm = Normalization(
        aux_mean=(10.0,),
        aux_std=(7.0,),
        value_scale=10.0,
        high_threshold=20.0,
        hotspot_threshold=40.0,
    )
    state = Checkpoint.for_inference(model, norm, config, bands=["ntl"], tile_size=tile)
    save_checkpoint(config.layout.best_checkpoint, state)
    return config
