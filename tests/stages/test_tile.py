"""``carbongeo tile``: aligned year cubes, the tile index, atomicity and parallel execution."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from affine import Affine
from conftest import UTM50, WGS84, utm_transform, write_netcdf, write_pipeline, write_raster
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds

from carbongeo.config import PipelineConfig
from carbongeo.errors import CarbongeoError, ConfigError, InputDataError
from carbongeo.grid import Grid, Window
from carbongeo.io.sources import RasterSource, align_window, validate_source
from carbongeo.stages.tile import build_grid, plan_blocks, tile_years
from carbongeo.store.layout import TilesLayout
from carbongeo.store.tiles import TileIndex, load_index, open_cube, read_window

HEIGHT, WIDTH = 200, 333  # odd scene: 4 x 6 tiles of 64 px, padded to 256 x 384
YEARS = (2014, 2015)
NTL_TRANSFORM = Affine(0.01, 0.0, 116.98, 0.0, -0.01, 29.83)  # covers the UTM scene


def _target(year: int) -> np.ndarray:
    rng = np.random.default_rng(year)
    values = rng.gamma(0.6, 30.0, (HEIGHT, WIDTH)).astype(np.float32)
    values[10:20, 30:40] = -9999.0  # declared nodata
    values[50:52, 60:70] = np.nan  # NaN without declaration
    values[0, 0] = 0.0  # a real zero stays a zero
    return values


def _world(tmp_path: Path, *, extra: str = "", grid: str = "", years: str = "2014-2015") -> Path:
    """Write the rasters of a small world and its pipeline file; returns the file's folder."""
    data = tmp_path / "data"
    for year in YEARS:
        write_raster(
            data / f"co2_{year}.tif", _target(year), UTM50, utm_transform(), nodata=-9999.0
        )
        rng = np.random.default_rng(year + 100)
        write_raster(data / f"ntl_{year}.tif", rng.random((50, 70)) * 60, WGS84, NTL_TRANSFORM)
    rng = np.random.default_rng(7)
    classes = rng.choice(np.array([1, 2, 5], dtype=np.uint8), (HEIGHT * 2, WIDTH * 2))
    write_raster(data / "lc.tif", classes, UTM50, utm_transform(res=500.0), nodata=0)
    pop = rng.random((HEIGHT, WIDTH)).astype(np.float32) * 100
    pop[100:110, 100:110] = -999.0  # undeclared nodata, given in the config
    write_raster(data / "pop.tif", pop, UTM50, utm_transform())
    (tmp_path / "carbongeo.toml").write_text(
        f"""
workdir = "run"
years = "{years}"
[grid]
tile_size = 64
scale = 8
{grid}
[target]
path = "data/co2_{{year}}.tif"
units = "t CO2 / cell / yr"
{extra}
[[aux]]
name = "ntl"
path = "data/ntl_{{year}}.tif"
transform = "log1p"
units = "nW/cm2/sr"
[[aux]]
name = "lc"
path = "data/lc.tif"
kind = "categorical"
[[aux]]
name = "pop"
path = "data/pop.tif"
kind = "extensive"
nodata = -999.0
""",
        encoding="utf-8",
    )
    return tmp_path


def _config(folder: Path) -> PipelineConfig:
    return write_pipeline(folder, (folder / "carbongeo.toml").read_text())


def _tile(config: PipelineConfig, years: tuple[int, ...] = YEARS, **kwargs: Any) -> TileIndex:
    return tile_years(config, years, progress=False, block_tiles=2, **kwargs)


def _scene(cube: np.ndarray, grid: Grid) -> np.ndarray:
    return read_window(cube, grid, Window(0, 0, grid.height, grid.width))


def _outputs(tiles_dir: Path) -> list[str]:
    if not tiles_dir.exists():
        return []
    return sorted(p.name for p in tiles_dir.iterdir() if p.name != ".index.lock")


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    """The small world tiled once for both years (shared by the read-only tests)."""
    config = _config(_world(tmp_path_factory.mktemp("world")))
    _tile(config)
    return config


# --------------------------------------------------------------------------- outputs
def test_cubes_and_index(tiled: PipelineConfig) -> None:
    tiles = tiled.tiles_dir
    assert _outputs(tiles) == sorted(["index.json"] + [f"{k}_{y}.npy" for k in "XY" for y in YEARS])
    index = json.loads((tiles / "index.json").read_text())
    assert index["version"] == 1
    assert index["years"] == list(YEARS)
    assert index["target_years"] == list(YEARS)  # every tiled year has a target
    assert index["bands"] == ["ntl", "lc", "pop"]
    assert index["aux"][0] == {
        "name": "ntl",
        "kind": "intensive",
        "transform": "log1p",
        "units": "nW/cm2/sr",
    }
    assert index["target"] == {"units": "t CO2 / cell / yr", "kind": "extensive"}
    assert index["has_coarse"] is False and index["nodata"] == "NaN"
    assert index["config_hash"] == tiled.tiles_hash()
    grid = Grid.from_dict(index["grid"])
    assert (grid.height, grid.width, grid.tile_size, grid.scale) == (HEIGHT, WIDTH, 64, 8)
    assert len(index["tiles"]) == 24
    assert index["tiles"][7] == {
        "id": 7,
        "row": 64,
        "col": 64,
        "valid_fraction": {"2014": 1.0, "2015": 1.0},
    }
    for year in YEARS:
        x = open_cube(tiles, "X", year)
        y = open_cube(tiles, "Y", year)
        assert x.shape == (24, 3, 64, 64) and y.shape == (24, 1, 64, 64)
        assert x.dtype == np.float32 and y.dtype == np.float32
    loaded = load_index(tiles)
    assert loaded.to_dict() == index
    fractions = loaded.valid_fractions(2014)
    y = open_cube(tiles, "Y", 2014)
    np.testing.assert_allclose(fractions, np.isfinite(y).mean(axis=(1, 2, 3)))


def test_target_is_copied_exactly_with_nodata_as_nan(tiled: PipelineConfig) -> None:
    index = load_index(tiled.tiles_dir)
    for year in YEARS:
        y = open_cube(tiled.tiles_dir, "Y", year)
        scene = _scene(y, index.grid)[0]
        expected = _target(year)
        expected[expected == -9999.0] = np.nan
        np.testing.assert_array_equal(scene, expected)  # NaN positions included
        assert scene[0, 0] == 0.0
        assert not np.any(scene[10:20, 30:40] == 0) and not np.any(scene[50:52, 60:70] == 0)
        assert np.isnan(y[:, :, :, :]).sum() > 0
        padded = read_window(y, index, Window(0, 0, 256, 384))[0]
        assert np.isnan(padded[HEIGHT:]).all() and np.isnan(padded[:, WIDTH:]).all()
        totals = index.totals[year]
        assert totals["target_source"] == pytest.approx(float(np.nansum(expected, dtype=float)))
        assert totals["target_aligned"] == pytest.approx(totals["target_source"], rel=1e-6)


def test_aux_bands(tiled: PipelineConfig) -> None:
    index = load_index(tiled.tiles_dir)
    grid = index.grid
    x14 = open_cube(tiled.tiles_dir, "X", 2014)
    x15 = open_cube(tiled.tiles_dir, "X", 2015)
    # log1p after alignment, not normalised.
    source = RasterSource("ntl", str(tiled.aux[0].path_for(2014)), "intensive")
    raw = align_window(source, validate_source(source, grid), grid, Window(0, 0, HEIGHT, WIDTH))
    np.testing.assert_allclose(_scene(x14, grid)[0], np.log1p(raw), rtol=1e-6)
    # categorical: only source classes; static: identical in every year.
    lc = _scene(x14, grid)[1]
    assert set(np.unique(lc).tolist()) <= {1.0, 2.0, 5.0}
    np.testing.assert_array_equal(x14[:, 1:], x15[:, 1:])
    assert not np.array_equal(x14[:, 0], x15[:, 0])
    # config nodata override (-999, undeclared) is NaN, never a number.
    pop = _scene(x14, grid)[2]
    assert np.isnan(pop[100:110, 100:110]).all()
    assert np.isfinite(pop[:100]).all()


def test_spike_is_placed_by_the_index_transform(tmp_path: Path) -> None:
    folder = _world(tmp_path, years="2014")
    spike = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    spike[150, 271] = 42.0
    write_raster(folder / "data" / "co2_2014.tif", spike, UTM50, utm_transform())
    # A 0.001 degree spike in the aux band, at a known lon/lat.
    ntl = np.zeros((300, 400), dtype=np.float32)
    ntl[123, 234] = 1000.0
    ntl_transform = Affine(0.001, 0.0, 117.1, 0.0, -0.001, 29.7)
    write_raster(folder / "data" / "ntl_2014.tif", ntl, WGS84, ntl_transform)
    config = _config(folder)
    tile_years(config, [2014], progress=False, block_tiles=1)

    index = json.loads((config.tiles_dir / "index.json").read_text())
    grid = Grid.from_dict(index["grid"])
    y = np.asarray(open_cube(config.tiles_dir, "Y", 2014))
    tile_id, _, row, col = (int(v) for v in np.argwhere(y == 42.0)[0])
    tile = index["tiles"][tile_id]
    tile_transform = grid.tile_transform(grid.tiles()[tile_id])
    assert tuple(tile_transform)[:6] == pytest.approx(
        tuple(
            Affine(
                1000.0,
                0,
                500_000.0 + tile["col"] * 1000.0,
                0,
                -1000.0,
                3_300_000.0 - tile["row"] * 1000.0,
            )
        )[:6]
    )
    assert tile_transform @ (col + 0.5, row + 0.5) == utm_transform() @ (271.5, 150.5)

    x = np.asarray(open_cube(config.tiles_dir, "X", 2014))
    lon, lat = ntl_transform @ (234.5, 123.5)
    (px,), (py,) = warp_transform(WGS84, UTM50, [lon], [lat])
    tile_id, row, col = (int(v) for v in np.argwhere(x[:, 0] == np.nanmax(x[:, 0]))[0])
    x0, y0 = grid.tile_transform(grid.tiles()[tile_id]) @ (col, row)
    assert x0 <= px < x0 + 1000.0 and y0 - 1000.0 < py <= y0


# --------------------------------------------------------------------------- totals
def test_geographic_target_on_utm_grid_keeps_total(tmp_path: Path) -> None:
    folder = _world(tmp_path, years="2014")
    rng = np.random.default_rng(5)
    emissions = rng.gamma(0.5, 50.0, (60, 80)).astype(np.float32)
    emissions[5:8, 5:9] = -1.0
    geo = Affine(0.005, 0.0, 117.05, 0.0, -0.005, 29.78)  # about 500 m
    write_raster(folder / "data" / "co2_2014.tif", emissions, WGS84, geo, nodata=-1.0)
    xmin, ymin, xmax, ymax = transform_bounds(
        WGS84, UTM50, 117.05, 29.78 - 0.3, 117.05 + 0.4, 29.78, densify_pts=50
    )
    grid_toml = (
        f'crs = "{UTM50}"\nresolution = 2000.0\n'
        f"bounds = [{xmin - 5000}, {ymin - 5000}, {xmax + 5000}, {ymax + 5000}]"
    )
    config = _config(_world_with_grid(folder, grid_toml))
    index = tile_years(config, [2014], progress=False, block_tiles=1)
    expected = float(np.sum(emissions[emissions >= 0], dtype=np.float64))
    totals = index.totals[2014]
    assert totals["target_source"] == pytest.approx(expected, rel=1e-9)
    assert abs(totals["target_aligned"] / expected - 1) < 1e-4
    y = open_cube(config.tiles_dir, "Y", 2014)
    assert abs(float(np.nansum(y, dtype=np.float64)) / expected - 1) < 1e-4
    assert index.grid.resolution == (2000.0, 2000.0)


def _world_with_grid(folder: Path, grid_toml: str) -> Path:
    path = folder / "carbongeo.toml"
    path.write_text(path.read_text().replace("scale = 8\n", f"scale = 8\n{grid_toml}\n"))
    return folder


def test_coarse_product_keeps_totals_on_the_coarse_grid(tmp_path: Path) -> None:
    folder = _world(tmp_path, extra='[coarse]\npath = "data/edgar_{year}.tif"')
    rng = np.random.default_rng(9)
    expected = {}
    for year in YEARS:
        # A 0.1 degree product inside the scene: disaggregated onto 8 km coarse cells.
        edgar = rng.random((12, 20)).astype(np.float32) * 1e4
        expected[year] = float(edgar.sum(dtype=np.float64))
        write_raster(
            folder / "data" / f"edgar_{year}.tif",
            edgar,
            WGS84,
            Affine(0.1, 0.0, 117.1, 0.0, -0.1, 29.72),
        )
    config = _config(folder)
    index = _tile(config)
    assert index.has_coarse
    for year in YEARS:
        c = open_cube(config.tiles_dir, "C", year)
        assert c.shape == (24, 1, 8, 8) and c.dtype == np.float32
        totals = index.totals[year]
        assert totals["coarse_source"] == pytest.approx(expected[year], rel=1e-9)
        assert abs(totals["coarse_aligned"] / totals["coarse_source"] - 1) < 1e-4
        assert float(np.nansum(c, dtype=np.float64)) == pytest.approx(
            totals["coarse_aligned"], rel=1e-6
        )
        # Coarse cells entirely in the padding stay NaN.
        coarse = read_window(c, index, Window(0, 0, 32, 48))[0]
        assert np.isnan(coarse[25:]).all() and np.isnan(coarse[:, 42:]).all()


def test_coarse_on_coarse_lattice_is_exact(tmp_path: Path) -> None:
    folder = _world(tmp_path, extra='[coarse]\npath = "data/coarse.tif"', years="2014")
    coarse = np.arange(25 * 42, dtype=np.float32).reshape(25, 42)
    write_raster(folder / "data" / "coarse.tif", coarse, UTM50, utm_transform(res=8000.0))
    config = _config(folder)
    index = tile_years(config, [2014], progress=False)
    c = np.asarray(open_cube(config.tiles_dir, "C", 2014))
    # The scene (333 px) ends 5 px into the last coarse column: it keeps 5/8 of its mass.
    inside = coarse * np.where(np.arange(42) == 41, 5 / 8, 1.0).astype(np.float32)
    np.testing.assert_array_equal(read_window(c, index, Window(0, 0, 25, 42))[0], inside)
    assert index.totals[2014]["coarse_source"] == pytest.approx(float(coarse.sum()))


# --------------------------------------------------------------------------- blocks
def test_plan_blocks_cover_every_tile_once() -> None:
    grid = Grid(UTM50, utm_transform(), HEIGHT, WIDTH, 64, 8)
    for size in (1, 2, 3, 10):
        covered = np.zeros((grid.tile_rows, grid.tile_cols), dtype=int)
        for block in plan_blocks(grid, size):
            covered[block.r0 : block.r1, block.c0 : block.c1] += 1
        assert (covered == 1).all()


# --------------------------------------------------------------------------- years and index
def test_second_year_is_merged_and_other_settings_refused(tmp_path: Path) -> None:
    config = _config(_world(tmp_path))
    _tile(config, (2014,))
    index = _tile(config, (2015,))
    assert index.years == [2014, 2015]
    assert load_index(config.tiles_dir).target_years == [2014, 2015]
    assert set(index.tiles[0].valid_fraction) == {2014, 2015}
    assert set(load_index(config.tiles_dir).totals) == {2014, 2015}

    toml = tmp_path / "carbongeo.toml"
    original = toml.read_text()
    toml.write_text(original.replace("scale = 8", "scale = 4"))
    with pytest.raises(ConfigError, match="another grid") as err:
        _tile(_config(tmp_path), (2015,))
    assert "\n" not in str(err.value) and "delete" in str(err.value)
    toml.write_text(original.replace('name = "pop"', 'name = "people"'))
    with pytest.raises(ConfigError, match="other bands"):
        _tile(_config(tmp_path), (2015,))
    assert load_index(config.tiles_dir).years == [2014, 2015]


def test_build_grid_from_target_or_config(tmp_path: Path) -> None:
    config = _config(_world(tmp_path))
    grid = build_grid(config)
    assert (grid.height, grid.width, grid.transform) == (HEIGHT, WIDTH, utm_transform())
    grid_toml = f'crs = "{UTM50}"\nresolution = 500.0\nbounds = [500000, 3200000, 560000, 3300000]'
    grid = build_grid(_config(_world_with_grid(tmp_path, grid_toml)))
    assert (grid.height, grid.width) == (200, 120)
    assert "PROJCS" in grid.crs or "PROJCRS" in grid.crs


def test_netcdf_aux(tmp_path: Path) -> None:
    folder = _world(tmp_path, years="2014")
    values = np.random.default_rng(3).random((40, 60)).astype(np.float32)
    write_netcdf(folder / "data" / "ntl.nc", values, west=116.98, north=29.83, res=0.01)
    toml = folder / "carbongeo.toml"
    toml.write_text(toml.read_text().replace("data/ntl_{year}.tif", "data/ntl.nc"))
    config = _config(folder)
    tile_years(config, [2014], progress=False)
    x = open_cube(config.tiles_dir, "X", 2014)
    ntl = np.expm1(x[:, 0])
    finite = ntl[np.isfinite(ntl)]
    assert finite.size > 0 and finite.min() >= 0 and finite.max() <= 1.0 + 1e-5


# --------------------------------------------------------------------------- bad inputs
def _break_missing(folder: Path) -> None:
    (folder / "data" / "ntl_2015.tif").unlink()


def _break_no_crs(folder: Path) -> None:
    write_raster(folder / "data" / "co2_2015.tif", _target(2015), crs=None)


def _break_no_overlap(folder: Path) -> None:
    far = Affine(0.01, 0.0, 10.0, 0.0, -0.01, 50.0)
    write_raster(folder / "data" / "ntl_2015.tif", np.ones((10, 10)), WGS84, far)


def _break_band(folder: Path) -> None:
    toml = folder / "carbongeo.toml"
    toml.write_text(toml.read_text().replace('name = "lc"', 'name = "lc"\nband = 2'))


def _break_corrupt(folder: Path) -> None:
    (folder / "data" / "co2_2015.tif").write_bytes(np.random.default_rng(0).bytes(5000))


@pytest.mark.parametrize(
    ("breaker", "error", "words"),
    [
        (_break_missing, ConfigError, ["aux", "ntl", "2015"]),
        (_break_no_crs, InputDataError, ["co2_2015.tif", "no CRS"]),
        (_break_no_overlap, InputDataError, ["ntl_2015.tif", "does not overlap"]),
        (_break_band, InputDataError, ["lc.tif", "band 2"]),
        (_break_corrupt, InputDataError, ["co2_2015.tif", "target.path"]),
    ],
)
def test_bad_input_raises_and_writes_nothing(
    tmp_path: Path, breaker: Callable[[Path], None], error: type[CarbongeoError], words: list[str]
) -> None:
    folder = _world(tmp_path)
    breaker(folder)
    config = _config(folder)
    with pytest.raises(error) as info:
        _tile(config)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert _outputs(config.tiles_dir) == []


def test_failure_while_writing_keeps_previous_tiles_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(_world(tmp_path))
    _tile(config, (2014,))
    before = {name: (config.tiles_dir / name).read_bytes() for name in _outputs(config.tiles_dir)}

    import carbongeo.stages.tile as tiling

    calls = {"n": 0}
    real = tiling.align_window

    def flaky(*args: Any, **kwargs: Any) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 9:
            raise InputDataError("target.path: read failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(tiling, "align_window", flaky)
    with pytest.raises(InputDataError):
        _tile(config, YEARS)
    after = {name: (config.tiles_dir / name).read_bytes() for name in _outputs(config.tiles_dir)}
    assert after == before  # same files, same bytes: no temp, no partial cube


# --------------------------------------------------------------------------- parallel
def test_cubes_do_not_depend_on_block_size(tmp_path: Path) -> None:
    folder = _world(tmp_path, years="2014")
    toml = folder / "carbongeo.toml"
    original = toml.read_text()
    cubes = []
    for block_tiles in (1, 3):
        toml.write_text(original.replace('workdir = "run"', f'workdir = "run_{block_tiles}"'))
        config = _config(folder)
        tile_years(config, [2014], progress=False, block_tiles=block_tiles)
        cubes.append([TilesLayout(config.tiles_dir).cube(k, 2014).read_bytes() for k in ("X", "Y")])
    assert cubes[0] == cubes[1]


def test_distributed_cluster_gives_identical_cubes(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    folder = _world(tmp_path, extra='[coarse]\npath = "data/coarse.tif"')
    write_raster(
        folder / "data" / "coarse.tif",
        np.random.default_rng(1).random((6, 9)).astype(np.float32),
        WGS84,
        Affine(0.1, 0.0, 117.05, 0.0, -0.1, 29.75),
    )
    threaded = _config(folder)
    _tile(threaded, scheduler="threads", workers=2)
    toml = folder / "carbongeo.toml"
    toml.write_text(toml.read_text().replace('workdir = "run"', 'workdir = "run_dist"'))
    distributed = _config(folder)
    _tile(distributed, workers=2)  # a local cluster of 2 processes
    names = _outputs(threaded.tiles_dir)
    assert names == _outputs(distributed.tiles_dir)
    for name in names:
        if name.endswith(".npy"):
            a = (threaded.tiles_dir / name).read_bytes()
            assert a == (distributed.tiles_dir / name).read_bytes(), name
    assert load_index(threaded.tiles_dir).to_dict() == load_index(distributed.tiles_dir).to_dict()


def test_a_target_for_some_years_only(tmp_path: Path) -> None:
    from carbongeo.config import load_config
    from carbongeo.stages.mosaic import mosaic_years
    from carbongeo.stages.split import split_tiles
    from carbongeo.stages.train import train
    from carbongeo.synth import generate_world

    config = load_config(generate_world(tmp_path, size="tiny", target_years=(2014,)))
    full = load_config(generate_world(tmp_path / "full", size="tiny"))
    assert build_grid(config).same_geometry(build_grid(full))
    # Without a target, the default grid is the coarse product's refined by scale.
    no_target = load_config(generate_world(tmp_path / "none", size="tiny", target_years=()))
    assert build_grid(no_target).same_geometry(build_grid(full))

    index = tile_years(config, config.years, progress=False, scheduler="synchronous")
    tiles = TilesLayout(config.tiles_dir)
    assert index.target_years == [2014] and index.years == [2014, 2015, 2016]
    assert tiles.cube("Y", 2014).exists() and not tiles.cube("Y", 2015).exists()
    assert all(tiles.cube(k, y).exists() for k in ("X", "C") for y in index.years)
    record = max(index.tiles, key=lambda t: t.coarse_valid_fraction[2016])
    assert set(record.valid_fraction) == {2014} and 0 < record.coarse_valid_fraction[2016] <= 1
    assert index.totals[2015]["target_aligned"] is None
    assert index.totals[2015]["coarse_aligned"] > 0

    # auto is fine (2014 has a target), training reads only 2014; every year is mosaicked.
    split_tiles(config)
    result = train(config, epochs=1, device="cpu", progress=False, max_steps_per_epoch=1)
    assert result.epochs_run == 1
    done = mosaic_years(config, config.years, progress=False)
    assert [r.year for r in done] == [2014, 2015, 2016]
