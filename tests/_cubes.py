"""Tiny synthetic tile cubes, tile index and split for the data and training tests.

The world is small enough for a training run of a few epochs in seconds: 32 x 32 tiles, scale 4,
two aux bands, three years. The target is a sparse field of Gaussian hotspots; aux band ``b0`` is
``log1p`` of the target (so it tells where the mass of each coarse cell sits) and ``b1`` is noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from carbongeo.config import PipelineConfig, parse_config

TILE = 32
SCALE = 4
YEARS = (2018, 2019, 2020)
BANDS = ("b0", "b1")


def _hotspots(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    field = np.zeros((size, size))
    for _ in range(count):
        r, c = rng.uniform(0, size, 2)
        width = rng.uniform(1.0, 3.0)
        field += rng.uniform(20, 200) * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / width**2)
    field[field < 2.0] = 0.0  # sparse, like real emissions
    return field


def write_cubes(
    tiles_dir: Path,
    *,
    n_tiles: int = 8,
    years: tuple[int, ...] = YEARS,
    tile: int = TILE,
    scale: int = SCALE,
    seed: int = 0,
    first_id: int = 100,
    with_nodata: bool = True,
) -> list[int]:
    """Write ``X_<year>.npy``, ``Y_<year>.npy`` and ``index.json``; return the tile ids."""
    tiles_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [first_id + i for i in range(n_tiles)]
    base = [_hotspots(rng, tile, 6) for _ in ids]
    fractions: dict[int, dict[str, float]] = {i: {} for i in ids}
    for k, year in enumerate(years):
        x = np.empty((n_tiles, len(BANDS), tile, tile), dtype=np.float32)
        y = np.empty((n_tiles, 1, tile, tile), dtype=np.float32)
        for i, field in enumerate(base):
            target = field * (1.0 + 0.1 * k) + rng.uniform(0, 1, field.shape) * (field > 0)
            y[i, 0] = target
            x[i, 0] = np.log1p(target)
            x[i, 1] = rng.normal(3.0, 2.0, field.shape)
        if with_nodata:
            y[0, 0, :3, :5] = np.nan  # target nodata
            x[1, 1, 10:12, 20:24] = np.nan  # aux nodata
        np.save(tiles_dir / f"X_{year}.npy", x)
        np.save(tiles_dir / f"Y_{year}.npy", y)
        for i, tile_id in enumerate(ids):
            fractions[tile_id][str(year)] = float(np.isfinite(y[i]).mean())
    cols = 4
    index = {
        "version": 1,
        "grid": {
            "crs": "EPSG:3857",
            "transform": [100.0, 0.0, 0.0, 0.0, -100.0, 0.0],
            "height": tile * ((n_tiles + cols - 1) // cols),
            "width": tile * cols,
            "tile_size": tile,
            "scale": scale,
        },
        "years": list(years),
        "bands": list(BANDS),
        "aux": [{"name": b, "kind": "intensive", "transform": "none", "units": ""} for b in BANDS],
        "target": {"units": "t", "kind": "extensive"},
        "has_coarse": False,
        "tiles": [
            {
                "id": tile_id,
                "row": (i // cols) * tile,
                "col": (i % cols) * tile,
                "valid_fraction": fractions[tile_id],
            }
            for i, tile_id in enumerate(ids)
        ],
    }
    (tiles_dir / "index.json").write_text(json.dumps(index))
    return ids


def write_split(
    tiles_dir: Path, train: list[int], val: list[int], holdout_year: int | None = None
) -> None:
    """Write ``split.json`` in the format of :mod:`carbongeo.stages.split`."""
    split = {
        "version": 1,
        "train": train,
        "val": val,
        "test": [],
        "holdout_year": holdout_year,
        "excluded": {},
        "block_tiles": 1,
        "buffer_tiles": 0,
        "seed": 0,
    }
    (tiles_dir / "split.json").write_text(json.dumps(split))


def make_config(root: Path, *, years: tuple[int, ...] = YEARS, **train: Any) -> PipelineConfig:
    """A pipeline whose workdir is ``root / "run"``, with a tiny model and quick training."""
    settings: dict[str, Any] = {
        "epochs": 2,
        "batch_size": 6,
        "lr": 3e-3,
        "warmup_epochs": 0,
        "patience": 0,
        "num_workers": 0,
        "amp": False,
        "seed": 0,
    }
    settings.update(train)
    raw = {
        "workdir": "run",
        "years": list(years),
        "grid": {"tile_size": TILE, "scale": SCALE},
        "target": {"path": "data/co2_{year}.tif"},
        "aux": [{"name": name, "path": f"data/{name}_{{year}}.tif"} for name in BANDS],
        "model": {"dim": 8, "depth": 1},
        "train": settings,
        "mosaic": {"overlap": 8},
    }
    return parse_config(raw, root)


def make_world(
    root: Path,
    *,
    n_tiles: int = 8,
    n_val: int = 2,
    holdout_year: int | None = None,
    **train: Any,
) -> PipelineConfig:
    """Cubes, index, split (the last ``n_val`` tiles are val) and a config, under ``root``."""
    config = make_config(root, **train)
    ids = write_cubes(config.tiles_dir, n_tiles=n_tiles)
    write_split(config.tiles_dir, ids[: n_tiles - n_val], ids[n_tiles - n_val :], holdout_year)
    return config
