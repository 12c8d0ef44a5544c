"""Spatial train/val/test split of the tile grid.

Neighbouring tiles share structure (a city spans several of them), so a random split by tile
leaks. Tiles are grouped into square spatial blocks of ``block_tiles x block_tiles`` tiles; whole
blocks are assigned to train, val or test, and train tiles within ``buffer_tiles`` (Chebyshev
distance, in tiles) of a val or test tile are dropped. Tiles with too little valid target (under
coarse supervision: too little valid coarse product) are excluded, and every exclusion is counted
by reason.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any

from carbongeo.config import PipelineConfig, SplitConfig
from carbongeo.stages.freshness import check_tiles
from carbongeo.store.split import TileSplit, write_split
from carbongeo.store.tiles import load_index

__all__ = ["TileSplit", "make_split", "split_tiles"]
from carbongeo.errors import ConfigError


def make_split(tiles: list[dict[str, Any]], params: SplitConfig) -> TileSplit:
    """Assign tiles to train/val/test by spatial block (pure).

    Args:
        tiles: Tile records with ``id``, ``tile_row``, ``tile_col`` (tile indices, not pixels)
            and ``valid_fraction`` (the best valid fraction over the tiled years).
        params: The ``[split]`` settings.

    Returns:
        The split, with exclusion counts under ``all_nodata``, ``low_valid_fraction``, ``buffer``.
    """
    excluded: Counter[str] = Counter()
    usable = []
    for tile in tiles:
        if tile["valid_fraction"] <= 0:
            excluded["all_nodata"] += 1
        elif tile["valid_fraction"] < params.min_valid_fraction:
            excluded["low_valid_fraction"] += 1
        else:
            usable.append(tile)

    def block_of(tile: dict[str, Any]) -> tuple[int, int]:
        return tile["tile_row"] // params.block_tiles, tile["tile_col"] // params.block_tiles

    blocks = sorted({block_of(t) for t in usable})
    random.Random(params.seed).shuffle(blocks)
    n_val, n_test = _subset_counts(len(blocks), params.ratios)
    role = {b: "val" for b in blocks[:n_val]}
    role |= {b: "test" for b in blocks[n_val : n_val + n_test]}

    held_out = [(t["tile_row"], t["tile_col"]) for t in usable if block_of(t) in role]
    subsets: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for tile in usable:
        subset = role.get(block_of(tile), "train")
        if subset == "train" and _near(tile, held_out, params.buffer_tiles):
            excluded["buffer"] += 1
            continue
        subsets[subset].append(int(tile["id"]))
    return TileSplit(
        train=sorted(subsets["train"]),
        val=sorted(subsets["val"]),
        test=sorted(subsets["test"]),
        holdout_year=params.holdout_year,
        excluded=dict(excluded),
        block_tiles=params.block_tiles,
        buffer_tiles=params.buffer_tiles,
        seed=params.seed,
    )


def _subset_counts(n_blocks: int, ratios: tuple[float, float, float]) -> tuple[int, int]:
    """Blocks for val and test: by ratio, at least one each when there are three or more blocks."""
    _, val_ratio, test_ratio = ratios
    n_val = round(n_blocks * val_ratio)
    n_test = round(n_blocks * test_ratio)
    if n_blocks >= 3:
        n_val = max(n_val, 1 if val_ratio > 0 else 0)
        n_test = max(n_test, 1 if test_ratio > 0 else 0)
    while n_val + n_test >= n_blocks and n_val + n_test > 0:
        # Keep at least one block for training.
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _near(tile: dict[str, Any], others: list[tuple[int, int]], distance: int) -> bool:
    if distance <= 0:
        return False
    row, col = tile["tile_row"], tile["tile_col"]
    return any(max(abs(row - r), abs(col - c)) <= distance for r, c in others)


def split_tiles(config: PipelineConfig) -> TileSplit:
    """Read ``tiles/index.json``, split its tiles and write ``tiles/split.json`` atomically.

    A tile's valid fraction is its best over the years but the held-out one: of the target under
    fine supervision, of the coarse product under coarse supervision (which never looks at the
    target, so the split is the same with or without one).
    """
    index = load_index(config.tiles_dir)
    check_tiles(config, index)
    holdout = config.split.holdout_year
    coarse = config.supervision == "coarse"
    records = []
    for tile in index.tiles:
        valid = tile.coarse_valid_fraction if coarse else tile.valid_fraction
        fractions = [f for y, f in valid.items() if y != holdout]
        records.append(
            {
                "id": tile.id,
                "tile_row": tile.row // index.tile_size,
                "tile_col": tile.col // index.tile_size,
                "valid_fraction": max(fractions, default=0.0),
            }
        )
    result = make_split(records, config.split)
    if not result.train:
        raise ConfigError(
            "split: no tile is left for training; lower split.min_valid_fraction or "
            "split.buffer_tiles, or tile a larger area"
        )
    result = dataclasses.replace(result, inputs_hash=config.split_hash())
    write_split(config.tiles_dir, result)
    return result
