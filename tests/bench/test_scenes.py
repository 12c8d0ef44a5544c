"""The bench's scene factory: complete scenes, atomic writes, reuse and stale-temp cleanup."""

from __future__ import annotations

import os
import time

import numpy as np
import rasterio

from carbongeo.bench.scenes import make_tile_scene, write_train_cubes
from carbongeo.bench.settings import BANDS, TILE, TRAIN_YEARS
from carbongeo.config import load_config
from carbongeo.io.atomic import FOREIGN_TEMP_MAX_AGE
from carbongeo.stages.tile import load_index


def test_tile_scene_has_one_source_of_each_kind(tmp_path) -> None:
    stale = tmp_path / ".co2.tmp-999999999.tif"  # left by a writer that died
    stale.write_bytes(b"partial")
    # An old-style name (no host) counts as abandoned only once it is old enough.
    old = time.time() - FOREIGN_TEMP_MAX_AGE - 60
    os.utime(stale, (old, old))
    config_path = make_tile_scene(tmp_path, 256)
    config = load_config(config_path, check_files=True)
    assert [s.kind for s in config.sources()] == [
        "extensive",
        "intensive",
        "extensive",
        "categorical",
    ]
    assert not stale.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    with rasterio.open(tmp_path / "water.tif") as src:
        classes = src.read(1)
        assert src.dtypes[0] == "uint8" and src.crs.to_epsg() == 3857
    assert set(np.unique(classes)) <= {1, 2, 3, 4, 5}
    with rasterio.open(tmp_path / "co2.tif") as src:
        assert (src.height, src.width) == (256, 256)
    before = config_path.stat().st_mtime_ns
    assert make_tile_scene(tmp_path, 256) == config_path  # kept, not rewritten
    assert config_path.stat().st_mtime_ns == before


def test_train_cubes_and_index(tmp_path) -> None:
    assert write_train_cubes(tmp_path, 3) == [0, 1, 2]
    index = load_index(tmp_path)
    assert index.years == list(TRAIN_YEARS) and index.bands == list(BANDS)
    assert len(index.tiles) == 3 and index.grid.tile_size == TILE
    x = np.load(tmp_path / f"X_{TRAIN_YEARS[0]}.npy", mmap_mode="r")
    assert x.shape == (3, len(BANDS), TILE, TILE)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
