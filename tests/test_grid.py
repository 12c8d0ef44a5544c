"""Grid math: tiles, windows, coarse blocks, JSON round trip, half-pixel conventions."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin

from carbongeo.errors import GridError
from carbongeo.grid import Grid, Window

UTM = "EPSG:32650"


def make_grid(height: int = 200, width: int = 333, tile: int = 64, scale: int = 8) -> Grid:
    return Grid(UTM, from_origin(600000.0, 2800000.0, 1000.0, 1000.0), height, width, tile, scale)


def test_tiles_cover_odd_scene_exactly_once() -> None:
    grid = make_grid()
    assert (grid.tile_rows, grid.tile_cols) == (4, 6)
    assert grid.padded_shape == (256, 384)
    cover = np.zeros(grid.padded_shape, dtype=int)
    for tile in grid.tiles():
        cover[tile.window.slices()] += 1
    assert (cover == 1).all()
    assert [t.id for t in grid.tiles()] == list(range(24))


def test_tile_valid_window_clips_padding() -> None:
    grid = make_grid()
    last = grid.tiles()[-1]
    valid = grid.tile_valid_window(last)
    assert (valid.row, valid.col) == (192, 320)
    assert (valid.height, valid.width) == (8, 13)


def test_coarse_grid_nests_fine_grid() -> None:
    grid = make_grid()
    assert grid.coarse_shape == (32, 48)
    assert grid.coarse_transform == Affine(8000.0, 0, 600000.0, 0, -8000.0, 2800000.0)
    coarse = grid.coarse_grid()
    # The corner of coarse cell (2, 3) is the corner of fine pixel (16, 24).
    assert coarse.xy(2, 3, offset="corner") == grid.xy(16, 24, offset="corner")


def test_half_pixel_convention_matches_rasterio() -> None:
    grid = make_grid()
    for row, col in [(0, 0), (5, 7), (199, 332)]:
        assert grid.xy(row, col) == rasterio.transform.xy(grid.transform, row, col)
        assert grid.xy(row, col, offset="corner") == rasterio.transform.xy(
            grid.transform, row, col, offset="ul"
        )
        x, y = grid.xy(row, col)
        assert grid.rowcol(x, y) == (row, col)
        assert grid.rowcol(x, y) == rasterio.transform.rowcol(grid.transform, x, y)


def test_tile_transform_places_pixels() -> None:
    grid = make_grid()
    tile = grid.tiles()[7]  # tile row 1, col 1
    assert (tile.row, tile.col) == (64, 64)
    x, y = grid.tile_transform(tile) @ (0.5, 0.5)
    assert (x, y) == grid.xy(64, 64)


def test_json_round_trip() -> None:
    grid = make_grid()
    again = Grid.from_json(grid.to_json())
    assert again == grid
    assert again.same_geometry(grid)


def test_same_geometry_compares_crs_spellings() -> None:
    grid = make_grid()
    wkt = rasterio.crs.CRS.from_epsg(32650).to_wkt()
    other = Grid(wkt, grid.transform, grid.height, grid.width, grid.tile_size, grid.scale)
    assert grid.same_geometry(other)
    shifted = Grid(UTM, grid.transform @ Affine.translation(1, 0), grid.height, grid.width, 64, 8)
    assert not grid.same_geometry(shifted)


def test_from_bounds_covers_partial_pixels() -> None:
    grid = Grid.from_bounds(UTM, 1000.0, (0.0, 0.0, 10500.0, 20000.0), tile_size=64, scale=8)
    assert (grid.height, grid.width) == (20, 11)
    assert grid.bounds == (0.0, 0.0, 11000.0, 20000.0)


def test_from_raster(tmp_path) -> None:
    path = tmp_path / "r.tif"
    transform = from_origin(10.0, 50.0, 0.25, 0.25)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=7,
        width=9,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=transform,
    ) as dst:
        dst.write(np.zeros((1, 7, 9), dtype="float32"))
    grid = Grid.from_raster(path, tile_size=16, scale=4)
    assert (grid.height, grid.width, grid.transform) == (7, 9, transform)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile_size": 128, "scale": 3}, "does not divide"),
        ({"tile_size": 0, "scale": 1}, "positive"),
    ],
)
def test_invalid_grid(kwargs, message) -> None:
    with pytest.raises(GridError, match=message):
        Grid(UTM, from_origin(0, 0, 1, 1), 10, 10, **kwargs)


def test_rotated_transform_rejected() -> None:
    with pytest.raises(GridError, match="north-up"):
        Grid(UTM, Affine(1, 0.1, 0, 0, -1, 0), 10, 10, 8, 2)


@pytest.mark.parametrize(("height", "width"), [(200, 333), (64, 64), (40, 500), (129, 127)])
def test_sliding_windows_cover_scene_and_stay_aligned(height: int, width: int) -> None:
    grid = make_grid(height, width)
    windows = grid.sliding_windows(64, 16)
    cover = np.zeros((height + 64, width + 64), dtype=int)
    for w in windows:
        assert w.row % grid.scale == 0 and w.col % grid.scale == 0
        cover[w.slices()] += 1
    assert (cover[:height, :width] >= 1).all()
    # No window starts past the scene, and the last one ends at the scale-padded edge.
    assert max(w.row + w.height for w in windows) == max(64, -(-height // 8) * 8)
    assert max(w.col + w.width for w in windows) == max(64, -(-width // 8) * 8)


def test_window_clip() -> None:
    assert Window(-3, 5, 10, 10).clip(4, 12) == Window(0, 5, 4, 7)
    assert Window(20, 20, 5, 5).clip(10, 10).height == 0
