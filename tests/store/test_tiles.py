"""Tests of carbongeo.store.tiles: the tile index, the cubes, their readers and the tile store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from carbongeo.config import PipelineConfig, parse_config
from carbongeo.errors import InputDataError
from carbongeo.grid import Grid, Window
from carbongeo.store.layout import TilesLayout
from carbongeo.store.tiles import (
    TileIndex,
    TileRecord,
    TileStore,
    check_cubes,
    create_cube,
    cube_shapes,
    load_index,
    open_aux_target,
    open_cube,
    open_year,
    read_window,
    write_block,
    write_index,
)

TS, S = 16, 4
GRID = Grid("EPSG:32650", Affine(1000.0, 0, 300000.0, 0, -1000.0, 4000000.0), 28, 40, TS, S)
YEARS = (2020, 2021)
BANDS = ("ntl", "water")


def cut(scene: np.ndarray, size: int) -> np.ndarray:
    """Cut a padded scene ``[C, rows, cols]`` into a cube ``[N, C, size, size]`` (row-major)."""
    _, rows, cols = scene.shape
    return np.stack(
        [
            scene[:, r : r + size, c : c + size]
            for r in range(0, rows, size)
            for c in range(0, cols, size)
        ]
    )


def make_index(target_years: list[int] | None = None, *, has_coarse: bool = True) -> TileIndex:
    return TileIndex(
        grid=GRID,
        years=list(YEARS),
        bands=list(BANDS),
        aux=[
            {"name": "ntl", "kind": "intensive", "transform": "log1p", "units": ""},
            {"name": "water", "kind": "categorical", "transform": "none", "units": ""},
        ],
        target={"units": "t", "kind": "extensive"},
        has_coarse=has_coarse,
        tiles=[TileRecord(t.id, t.row, t.col, {y: 1.0 for y in YEARS}) for t in GRID.tiles()],
        target_years=target_years,
    )


class Run:
    """A two-year run on a 28 x 40 scene (2 x 3 tiles): the scenes and their cubes on disk."""

    def __init__(self, root: Path, *, target_years: list[int], has_coarse: bool) -> None:
        raw = {
            "workdir": "run",
            "years": f"{YEARS[0]}-{YEARS[-1]}",
            "grid": {"tile_size": TS, "scale": S},
            "mosaic": {"overlap": 4},
            "target": {"path": "co2_{year}.tif", "units": "t"},
            "aux": [
                {"name": "ntl", "path": "ntl_{year}.tif", "transform": "log1p"},
                {"name": "water", "path": "water.tif", "kind": "categorical"},
            ],
        }
        self.config: PipelineConfig = parse_config(raw, root)
        self.tiles_dir = self.config.tiles_dir
        self.tiles_dir.mkdir(parents=True)
        tiles = TilesLayout(self.tiles_dir)
        rows, cols = GRID.padded_shape
        rng = np.random.default_rng(0)
        self.truth: dict[int, np.ndarray] = {}
        self.ntl: dict[int, np.ndarray] = {}
        self.coarse: dict[int, np.ndarray] = {}
        self.pred: dict[int, np.ndarray] = {}
        for year in YEARS:
            truth = np.full((rows, cols), np.nan, dtype=np.float32)
            truth[: GRID.height, : GRID.width] = rng.gamma(0.5, 10.0, (GRID.height, GRID.width))
            truth[3:5, 7:9] = np.nan  # target nodata inside the scene
            ntl = np.full((rows, cols), np.nan, dtype=np.float32)
            ntl[: GRID.height, : GRID.width] = rng.uniform(0, 20, (GRID.height, GRID.width))
            water = np.full((rows, cols), np.nan, dtype=np.float32)
            water[: GRID.height, : GRID.width] = 0.0
            water[:, :3] = 1.0
            aux = np.stack([np.log1p(ntl), water])
            coarse = rng.uniform(1, 5, (1, rows // S, cols // S)).astype(np.float32)
            np.save(tiles.cube("X", year), cut(aux, TS))
            if year in target_years:
                np.save(tiles.cube("Y", year), cut(truth[None], TS))
            if has_coarse:
                np.save(tiles.cube("C", year), cut(coarse, TS // S))
            pred = rng.uniform(0, 3, (GRID.height, GRID.width)).astype(np.float32)
            self.config.predictions_dir.mkdir(parents=True, exist_ok=True)
            np.save(self.config.layout.prediction_npy(year), pred)
            self.truth[year], self.ntl[year], self.coarse[year] = truth, ntl, coarse[0]
            self.pred[year] = pred
        self.index = make_index(target_years, has_coarse=has_coarse)
        write_index(self.tiles_dir, self.index)


@pytest.fixture
def run(tmp_path: Path) -> Run:
    """2021 has aux and coarse cubes but no target cube."""
    return Run(tmp_path, target_years=[2020], has_coarse=True)


# --------------------------------------------------------------------------- the index
def test_index_round_trip_keeps_the_years_with_a_target(tmp_path: Path) -> None:
    index = make_index([2020])
    data = index.to_dict()
    assert data["years"] == [2020, 2021] and data["target_years"] == [2020]
    again = TileIndex.from_dict(json.loads(json.dumps(data)))
    assert again == index
    assert again.has_target(2020) and not again.has_target(2021)
    assert again.cube_kinds(2020) == ("X", "Y", "C") and again.cube_kinds(2021) == ("X", "C")
    assert make_index([2020], has_coarse=False).cube_kinds(2021) == ("X",)
    write_index(tmp_path, index)
    assert load_index(tmp_path) == index


def test_an_index_without_target_years_has_a_target_every_year() -> None:
    data = make_index().to_dict()
    assert data["target_years"] == list(YEARS)  # the default: every tiled year
    del data["target_years"]  # an index written before the key existed
    index = TileIndex.from_dict(data)
    assert index.target_years == list(YEARS)
    assert all(index.has_target(y) for y in YEARS) and not index.has_target(2019)


def test_target_years_outside_the_tiled_years_are_damage() -> None:
    data = make_index().to_dict()
    data["target_years"] = [2019]
    with pytest.raises(InputDataError, match="damaged"):
        TileIndex.from_dict(data)


def test_load_index_errors(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="index.json not found; run 'carbongeo tile' first"):
        load_index(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(InputDataError, match="not valid JSON"):
        load_index(tmp_path)
    (tmp_path / "index.json").write_text('{"version": 1}')
    with pytest.raises(InputDataError, match="damaged"):
        load_index(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({**make_index().to_dict(), "version": 9}))
    with pytest.raises(InputDataError, match="version 9 is not supported"):
        load_index(tmp_path)


def test_a_year_that_is_not_tiled_names_the_tile_command() -> None:
    index = make_index()
    with pytest.raises(
        InputDataError, match=r"2019 has not been tiled.*carbongeo tile --year 2019"
    ):
        index.valid_fractions(2019)
    np.testing.assert_array_equal(index.valid_fractions(2020), np.ones(6))


# --------------------------------------------------------------------------- windows
def test_read_window_straddling_four_tiles() -> None:
    grid = Grid("EPSG:32650", GRID.transform, 200, 333, 64, 8)  # 4 x 6 tiles, padded 256 x 384
    rows, cols = grid.padded_shape
    scene = np.arange(2 * rows * cols, dtype=np.float32).reshape(2, rows, cols)
    cube = cut(scene, 64)
    window = Window(40, 50, 50, 30)  # rows 40-89, cols 50-79: tiles (0,0) (0,1) (1,0) (1,1)
    np.testing.assert_array_equal(read_window(cube, grid, window), scene[:, 40:90, 50:80])
    np.testing.assert_array_equal(read_window(cube, grid, Window(0, 0, rows, cols)), scene)
    # Outside the padded grid: fill.
    outside = read_window(cube, grid, Window(-5, 380, 10, 10), fill=-1.0)[0]
    assert (outside[:5] == -1).all() and (outside[:, 4:] == -1).all()
    np.testing.assert_array_equal(outside[5:, :4], scene[0, :5, 380:])
    # A coarse cube: the window is in coarse cells, the tiles are tile_size / scale wide.
    coarse = scene[:, ::8, ::8]
    np.testing.assert_array_equal(
        read_window(cut(coarse, 8), grid, Window(3, 5, 9, 7)), coarse[:, 3:12, 5:12]
    )
    with pytest.raises(ValueError, match="tiles but the grid"):
        read_window(cube[:-1], grid, window)


def test_blocks_written_into_new_cubes_reassemble_the_scene(tmp_path: Path) -> None:
    shapes = cube_shapes(GRID, 2, has_coarse=True)
    assert shapes == {"X": (6, 2, 16, 16), "Y": (6, 1, 16, 16), "C": (6, 1, 4, 4)}
    rows, cols = GRID.padded_shape
    scene = np.random.default_rng(1).random((2, rows, cols)).astype(np.float32)
    cells = scene[:1, ::S, ::S].copy()
    x_path, c_path = tmp_path / "X.npy", tmp_path / "C.npy"
    create_cube(x_path, shapes["X"])
    create_cube(c_path, shapes["C"])
    # Two blocks: tiles (0..1, 0..1) and tiles (0..1, 2).
    write_block(x_path, scene[:, :, :32], 0, 0, GRID.tile_cols)
    write_block(x_path, scene[:, :, 32:], 0, 2, GRID.tile_cols)
    write_block(c_path, cells[:, :, :8], 0, 0, GRID.tile_cols)
    write_block(c_path, cells[:, :, 8:], 0, 2, GRID.tile_cols)
    whole = Window(0, 0, rows, cols)
    np.testing.assert_array_equal(read_window(np.load(x_path), GRID, whole), scene)
    coarse_whole = Window(0, 0, rows // S, cols // S)
    np.testing.assert_array_equal(read_window(np.load(c_path), GRID, coarse_whole), cells)


# --------------------------------------------------------------------------- opening a year
def test_open_year_opens_the_cubes_the_index_lists(run: Run) -> None:
    full = open_year(run.tiles_dir, run.index, 2020)
    assert full.target is not None and full.coarse is not None
    assert full.aux.shape == (6, 2, TS, TS) and isinstance(full.aux, np.memmap)
    np.testing.assert_array_equal(
        read_window(full.target, run.index, Window(0, 0, 32, 48))[0], run.truth[2020]
    )
    no_target = open_year(run.tiles_dir, run.index, 2021)
    assert no_target.target is None and no_target.coarse is not None
    bare = open_year(run.tiles_dir, run.index, 2020, target=False, coarse=False)
    assert bare.target is None and bare.coarse is None
    check_cubes(run.tiles_dir, run.index, YEARS)  # what the index lists is there


def test_a_year_without_a_target_cube_gives_no_target(run: Run) -> None:
    assert not TilesLayout(run.tiles_dir).cube("Y", 2021).exists()
    message = r"2021 was tiled without a target.*target\.path.*'carbongeo tile --year 2021'"
    with pytest.raises(InputDataError, match=message):
        open_year(run.tiles_dir, run.index, 2021, target=True)
    with pytest.raises(InputDataError, match=message):
        check_cubes(run.tiles_dir, run.index, YEARS, target=True)
    with pytest.raises(InputDataError, match=message):
        open_aux_target(run.tiles_dir, run.index, 2021)
    aux, target = open_aux_target(run.tiles_dir, run.index, 2020)
    assert aux.shape == (6, 2, TS, TS) and target.shape == (6, 1, TS, TS)
    store = TileStore(run.config)
    tile = store.load(2021, 1)
    assert tile.truth is None
    np.testing.assert_array_equal(tile.coarse, run.coarse[2021][:4, 4:8])
    with pytest.raises(InputDataError, match=message):
        store.truth_total(2021, 1)
    with pytest.raises(InputDataError, match=message):
        store.truth_range(YEARS, [0, 1])


@pytest.mark.parametrize("kind", ["X", "C"])
def test_a_missing_cube_names_the_tile_command(run: Run, kind: str) -> None:
    path = TilesLayout(run.tiles_dir).cube(kind, 2021)  # type: ignore[arg-type]
    path.unlink()
    message = f"{kind}_2021.npy not found; run 'carbongeo tile --year 2021' first"
    with pytest.raises(InputDataError, match=message):
        open_year(run.tiles_dir, run.index, 2021)
    with pytest.raises(InputDataError, match=message):
        check_cubes(run.tiles_dir, run.index, YEARS)
    with pytest.raises(InputDataError, match=message):
        open_cube(run.tiles_dir, kind, 2021)  # type: ignore[arg-type]
    with pytest.raises(InputDataError, match=message):
        TileStore(run.config).load(2021, 0)
    open_year(run.tiles_dir, run.index, 2020)  # the other year is untouched


def test_other_missing_inputs_name_their_command(run: Run) -> None:
    with pytest.raises(InputDataError, match="2019 has not been tiled.*tile --year 2019"):
        open_year(run.tiles_dir, run.index, 2019)
    with pytest.raises(InputDataError, match="2019 has not been tiled.*tile --year 2019"):
        check_cubes(run.tiles_dir, run.index, [2019, 2020])
    without = make_index([2020, 2021], has_coarse=False)
    with pytest.raises(InputDataError, match=r"without a \[coarse\] product"):
        open_year(run.tiles_dir, without, 2020, coarse=True)


def test_open_year_refuses_an_aux_cube_with_other_bands(run: Run) -> None:
    path = TilesLayout(run.tiles_dir).cube("X", 2020)
    np.save(path, np.load(path)[:, :1])
    with pytest.raises(
        InputDataError, match=r"X_2020\.npy: .* does not fit the tile index .* 2 band\(s\)"
    ):
        open_year(run.tiles_dir, run.index, 2020)


# --------------------------------------------------------------------------- the tile store
def test_tile_store_reads_truth_aux_coarse_and_prediction(run: Run) -> None:
    store = TileStore(run.config)
    assert store.tile_ids == list(range(6)) and store.bands == BANDS
    assert store.log1p_bands == [True, False]
    tile = store.load(2020, 5)  # the lower-right tile: rows 16-31, cols 32-47, partly outside
    window = Window(16, 32, 16, 16)
    assert tile.window == window
    inside = np.zeros((16, 16), dtype=bool)
    inside[:12, :8] = True  # the scene is 28 x 40
    np.testing.assert_array_equal(tile.inside, inside)
    assert tile.truth is not None and tile.prediction is not None
    expected = np.where(inside, run.truth[2020][window.slices()], np.nan)
    np.testing.assert_array_equal(tile.truth, expected)
    np.testing.assert_allclose(
        tile.band("ntl")[inside], run.ntl[2020][window.slices()][inside], rtol=1e-5
    )
    np.testing.assert_array_equal(tile.coarse, run.coarse[2020][4:8, 8:12])
    prediction = np.full((16, 16), np.nan)
    prediction[:12, :8] = run.pred[2020][16:28, 32:40]
    np.testing.assert_array_equal(tile.prediction, prediction)
    np.testing.assert_array_equal(tile.domain, inside)
    assert tile.water is not None and not tile.water[inside].any()  # water is cols 0-2
    assert store.truth_total(2020, 5) == pytest.approx(float(np.nansum(expected)))
    assert store.load(2020, 5, with_prediction=False).prediction is None


def test_tile_store_sums_the_truth_without_a_coarse_product(tmp_path: Path) -> None:
    run = Run(tmp_path, target_years=list(YEARS), has_coarse=False)
    tile = TileStore(run.config).load(2021, 0, with_prediction=False)
    assert tile.truth is not None
    blocks = np.nan_to_num(tile.truth).reshape(4, S, 4, S).sum(axis=(1, 3))
    np.testing.assert_allclose(tile.coarse, blocks)


def test_tile_store_missing_or_wrong_prediction_names_the_mosaic_command(run: Run) -> None:
    path = run.config.layout.prediction_npy(2020)
    np.save(path, np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(InputDataError, match=r"shape \(3, 3\).*'carbongeo mosaic --year 2020'"):
        TileStore(run.config).load(2020, 0)
    path.unlink()
    store = TileStore(run.config)
    assert not store.has_prediction(2020) and store.has_prediction(2021)
    with pytest.raises(InputDataError, match="Pred_2020.npy not found; run 'carbongeo mosaic"):
        store.load(2020, 0)
