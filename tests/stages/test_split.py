"""Spatial block split with buffers and exclusion counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from rasterio.transform import from_origin

from carbongeo.config import SplitConfig, load_config
from carbongeo.errors import CarbongeoError
from carbongeo.grid import Grid
from carbongeo.stages.split import make_split, split_tiles
from carbongeo.store.split import load_split
from carbongeo.store.tiles import TileIndex, TileRecord, write_index


def grid_tiles(rows: int, cols: int, fraction: float = 1.0) -> list[dict]:
    return [
        {"id": r * cols + c, "tile_row": r, "tile_col": c, "valid_fraction": fraction}
        for r in range(rows)
        for c in range(cols)
    ]


def test_blocks_are_never_split_and_buffer_separates_subsets() -> None:
    tiles = grid_tiles(12, 12)
    params = SplitConfig(block_tiles=2, buffer_tiles=1, seed=3)
    split = make_split(tiles, params)
    where = {}
    for name in ("train", "val", "test"):
        for tile_id in split.ids(name):
            where[tile_id] = name
    assert split.val and split.test and split.train
    by_pos = {(t["tile_row"], t["tile_col"]): t["id"] for t in tiles}
    for (r, c), tile_id in by_pos.items():
        block = [(r // 2 * 2 + i, c // 2 * 2 + j) for i in range(2) for j in range(2)]
        held = {where.get(by_pos[p]) for p in block} - {None}
        if held & {"val", "test"}:
            assert len(held) == 1  # a val/test block is whole
        if where.get(tile_id) == "train":
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    neighbour = by_pos.get((r + dr, c + dc))
                    assert where.get(neighbour) in (None, "train")
    assert split.excluded["buffer"] == len(tiles) - len(where)


def test_split_is_seeded() -> None:
    tiles = grid_tiles(8, 8)
    a = make_split(tiles, SplitConfig(block_tiles=1, seed=1))
    b = make_split(tiles, SplitConfig(block_tiles=1, seed=1))
    c = make_split(tiles, SplitConfig(block_tiles=1, seed=2))
    assert a == b
    assert (a.val, a.test) != (c.val, c.test)


def test_ratios_roughly_respected_without_buffer() -> None:
    split = make_split(grid_tiles(10, 10), SplitConfig(block_tiles=1, buffer_tiles=0))
    assert (len(split.train), len(split.val), len(split.test)) == (80, 10, 10)


def test_invalid_tiles_are_excluded_and_counted() -> None:
    tiles = grid_tiles(3, 3)
    tiles[0]["valid_fraction"] = 0.0
    tiles[1]["valid_fraction"] = 0.2
    split = make_split(tiles, SplitConfig(block_tiles=1, buffer_tiles=0, min_valid_fraction=0.5))
    assert split.excluded == {"all_nodata": 1, "low_valid_fraction": 1}
    used = split.train + split.val + split.test
    assert 0 not in used and 1 not in used and len(used) == 7


def test_split_tiles_writes_json(tmp_path: Path) -> None:
    config_path = tmp_path / "c.toml"
    config_path.write_text(
        'years = "2014-2015"\n[target]\npath = "t_{year}.tif"\n'
        '[[aux]]\nname = "a"\npath = "a.tif"\n'
        "[split]\nblock_tiles = 1\nbuffer_tiles = 0\nholdout_year = 2015\n"
    )
    config = load_config(config_path)
    with pytest.raises(CarbongeoError, match="run 'carbongeo tile' first"):
        split_tiles(config)
    config.tiles_dir.mkdir(parents=True)
    grid = Grid("EPSG:32650", from_origin(0.0, 0.0, 1000.0, 1000.0), 256, 256, 64, 8)
    index = TileIndex(
        grid=grid,
        years=[2014, 2015],
        bands=["a"],
        aux=[{"name": "a", "kind": "intensive", "transform": "none", "units": ""}],
        target={"units": "t", "kind": "extensive"},
        has_coarse=False,
        tiles=[TileRecord(t.id, t.row, t.col, {2014: 1.0, 2015: 0.0}) for t in grid.tiles()],
    )
    write_index(config.tiles_dir, index)
    result = split_tiles(config)
    again = load_split(config.tiles_dir)
    assert again == result
    assert result.holdout_year == 2015
    assert sorted(result.train + result.val + result.test) == list(range(16))
