"""Tests of the embedded synthetic world (tiny size)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, reproject, transform, transform_bounds

from carbongeo.errors import ConfigError
from carbongeo.synth import (
    SIZES,
    TARGET_CRS,
    TARGET_NODATA,
    generate_world,
    world_layout,
)

YEARS = [2014, 2015, 2016]
ARC_SECONDS_15 = 1.0 / 240.0
ARC_SECONDS_30 = 1.0 / 120.0

# Relative path -> (CRS, pixel size, dtype, nodata); "{year}" expands to every year.
EXPECTED = {
    "emissions/co2_{year}.tif": ("EPSG:32650", 1000.0, "float32", TARGET_NODATA),
    "coarse/edgar_like_{year}.tif": ("EPSG:32650", 8000.0, "float32", -9999.0),
    "aux/ntl_{year}.tif": ("EPSG:4326", ARC_SECONDS_15, "float32", -9999.0),
    "aux/roads.tif": ("EPSG:32650", 500.0, "float32", -9999.0),
    "aux/water.tif": ("EPSG:32650", 250.0, "uint8", 255),
    "aux/ndvi_{year}.tif": ("EPSG:3857", 250.0, "float32", -3.0),
    "aux/population_{year}.tif": ("EPSG:4326", 0.005, "float32", -9999.0),
    "aux/builtup.tif": ("EPSG:32650", 1000.0, "float32", -9999.0),
    "aux/elevation.tif": ("EPSG:4326", ARC_SECONDS_30, "int16", -32768),
    "aux/landcover.tif": ("EPSG:32650", 300.0, "uint8", 255),
    "aux/dist_roads.tif": ("EPSG:32650", 1000.0, "float32", -9999.0),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = generate_world(tmp_path_factory.mktemp("world_a"), seed=0, size="tiny")
    return config.parent


@pytest.fixture(scope="module")
def world_again(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = generate_world(tmp_path_factory.mktemp("world_b"), seed=0, size="tiny")
    return config.parent


@pytest.fixture(scope="module")
def other_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = generate_world(
        tmp_path_factory.mktemp("world_c"), seed=1, size="tiny", years=[2014, 2016]
    )
    return config.parent


def _paths(pattern: str, years: list[int] = YEARS) -> list[str]:
    if "{year}" in pattern:
        return [pattern.format(year=year) for year in years]
    return [pattern]


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _read_masked(path: Path) -> np.ma.MaskedArray:
    with rasterio.open(path) as src:
        return src.read(1, masked=True)


def _sample(path: Path, xs: list[float], ys: list[float]) -> np.ndarray:
    """Values of a raster at target-CRS points."""
    with rasterio.open(path) as src:
        px, py = transform(TARGET_CRS, src.crs, xs, ys)
        return np.array([value[0] for value in src.sample(list(zip(px, py, strict=True)))])


def test_sizes_match_the_pipeline_grid() -> None:
    for spec in SIZES.values():
        assert spec.height % spec.tile_size == 0
        assert spec.width % spec.tile_size == 0
        assert spec.tile_size % spec.scale == 0
    assert (SIZES["tiny"].height, SIZES["tiny"].width) == (128, 256)
    assert (SIZES["small"].height, SIZES["small"].width) == (512, 512)
    assert (SIZES["medium"].height, SIZES["medium"].width) == (1024, 1024)


def test_config_parses_and_references_existing_files(world: Path) -> None:
    config = tomllib.loads((world / "carbongeo.toml").read_text())
    assert set(config) == {
        "workdir",
        "years",
        "grid",
        "target",
        "coarse",
        "aux",
        "split",
        "model",
        "train",
        "mosaic",
    }
    assert config["years"] == "2014-2016"
    assert config["grid"] == {"tile_size": 64, "scale": 8}
    assert config["model"] == {"dim": 8, "depth": 1}
    assert config["train"]["epochs"] == 2
    assert config["train"]["batch_size"] == 4
    assert config["target"]["kind"] == "extensive"
    names = [entry["name"] for entry in config["aux"]]
    assert names == [
        "ntl",
        "roads",
        "water",
        "ndvi",
        "population",
        "builtup",
        "elevation",
        "landcover",
        "dist_roads",
    ]
    kinds = {entry["name"]: (entry["kind"], entry["transform"]) for entry in config["aux"]}
    assert kinds["population"] == ("extensive", "log1p")
    assert kinds["water"] == ("categorical", "none")
    assert kinds["landcover"] == ("categorical", "none")
    for entry in config["aux"]:
        keys = {"name", "path", "kind", "transform", "units"}
        # The water mask declares its water class a hard zero.
        assert set(entry) == (keys | {"zero_classes"} if entry["name"] == "water" else keys)
    patterns = [config["target"]["path"], config["coarse"]["path"]]
    patterns += [entry["path"] for entry in config["aux"]]
    assert set(patterns) == set(EXPECTED)
    for pattern in patterns:
        for relative in _paths(pattern):
            assert (world / relative).is_file(), relative
    assert not list(world.rglob(".*.partial"))


def test_same_seed_gives_identical_files(world: Path, world_again: Path) -> None:
    files = sorted(p.relative_to(world) for p in world.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(world_again) for p in world_again.rglob("*") if p.is_file()
    )
    for relative in files:
        assert (world / relative).read_bytes() == (world_again / relative).read_bytes(), relative
    for pattern in EXPECTED:
        for relative in _paths(pattern):
            np.testing.assert_array_equal(_read(world / relative), _read(world_again / relative))


def test_different_seed_gives_a_different_world(world: Path, other_world: Path) -> None:
    for pattern in ("emissions/co2_{year}.tif", "aux/ntl_{year}.tif", "aux/water.tif"):
        relative = _paths(pattern, [2014])[0]
        assert not np.array_equal(_read(world / relative), _read(other_world / relative))


def test_years_override_is_written_as_a_list(other_world: Path) -> None:
    config = tomllib.loads((other_world / "carbongeo.toml").read_text())
    assert config["years"] == [2014, 2016]
    assert (other_world / "emissions" / "co2_2016.tif").is_file()
    assert not (other_world / "emissions" / "co2_2015.tif").exists()


def test_a_year_does_not_depend_on_the_other_years(world: Path, tmp_path: Path) -> None:
    generate_world(tmp_path, seed=0, size="tiny", years=[2016])
    for relative in ("emissions/co2_2016.tif", "aux/ntl_2016.tif", "aux/ndvi_2016.tif"):
        assert (tmp_path / relative).read_bytes() == (world / relative).read_bytes()


def test_crs_resolution_dtype_and_nodata(world: Path) -> None:
    crss, resolutions = set(), set()
    with rasterio.open(world / "emissions" / "co2_2014.tif") as target:
        target_bounds = target.bounds
    for pattern, (crs, res, dtype, nodata) in EXPECTED.items():
        for relative in _paths(pattern):
            with rasterio.open(world / relative) as src:
                assert src.crs == rasterio.crs.CRS.from_string(crs), relative
                assert src.res == pytest.approx((res, res), rel=1e-9), relative
                assert src.dtypes[0] == dtype, relative
                assert src.nodata == nodata, relative
                assert src.transform.b == 0.0 and src.transform.d == 0.0
                assert src.tags(1)["units"]
                assert src.descriptions[0]
                if relative.startswith("aux/"):
                    # Every auxiliary source covers a little more than the target.
                    left, bottom, right, top = transform_bounds(
                        TARGET_CRS, src.crs, *target_bounds, densify_pts=21
                    )
                    assert src.bounds.left < left and src.bounds.right > right, relative
                    assert src.bounds.bottom < bottom and src.bounds.top > top, relative
                crss.add(src.crs.to_string())
                resolutions.add((src.crs.to_string(), round(src.res[0], 9)))
    assert len(crss) >= 3
    assert len(resolutions) >= 4


def test_builtup_grid_is_offset_by_half_a_pixel(world: Path) -> None:
    with rasterio.open(world / "aux" / "builtup.tif") as src:
        assert src.transform.c % 1000.0 == pytest.approx(500.0)
        assert src.transform.f % 1000.0 == pytest.approx(500.0)


def test_target_grid_and_nodata(world: Path) -> None:
    spec = SIZES["tiny"]
    for year in YEARS:
        with rasterio.open(world / "emissions" / f"co2_{year}.tif") as src:
            assert (src.height, src.width) == (spec.height, spec.width)
            assert src.crs.to_string() == TARGET_CRS
            assert src.nodata == TARGET_NODATA
            data = src.read(1)
        missing = data == TARGET_NODATA
        assert 0 < missing.sum() < 0.05 * data.size
        assert missing[0, 0]
        assert (data[~missing] >= 0).all()


def test_coarse_product_keeps_totals_with_small_errors(world: Path) -> None:
    scale = SIZES["tiny"].scale
    for year in YEARS:
        with rasterio.open(world / "emissions" / f"co2_{year}.tif") as src:
            fine = src.read(1, masked=True)
            fine_res, fine_bounds = src.res, tuple(src.bounds)
        with rasterio.open(world / "coarse" / f"edgar_like_{year}.tif") as src:
            coarse = src.read(1)
            assert src.res == (fine_res[0] * scale, fine_res[1] * scale)
            assert tuple(src.bounds) == pytest.approx(fine_bounds)
        h, w = coarse.shape
        assert (h * scale, w * scale) == fine.shape
        blocks = fine.filled(0.0).reshape(h, scale, w, scale).sum(axis=(1, 3), dtype=np.float64)
        complete = ~np.ma.getmaskarray(fine).reshape(h, scale, w, scale).any(axis=(1, 3))
        ratio = coarse[complete].sum() / blocks[complete].sum()
        assert ratio == pytest.approx(1.0, abs=0.03)
        positive = complete & (blocks > 0)
        relative_error = coarse[positive] / blocks[positive] - 1.0
        assert 0.005 < relative_error.std() < 0.1  # inventory error, not a plain aggregate


def test_target_is_zero_over_water(world: Path) -> None:
    with rasterio.open(world / "emissions" / "co2_2014.tif") as src:
        target_transform, target_crs, shape = src.transform, src.crs, src.shape
    with rasterio.open(world / "aux" / "water.tif") as src:
        water_fraction = np.zeros(shape, dtype=np.float32)
        reproject(
            src.read(1).astype(np.float32),
            water_fraction,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=target_transform,
            dst_crs=target_crs,
            resampling=Resampling.average,
        )
    all_water = water_fraction >= 0.999
    assert all_water.sum() > 100
    for year in YEARS:
        target = _read(world / "emissions" / f"co2_{year}.tif")
        assert (target[all_water] == 0.0).all()


def test_night_light_does_not_show_point_sources(world: Path) -> None:
    layout = world_layout(seed=0, size="tiny")
    assert layout.point_sources and layout.cities
    with rasterio.open(world / "emissions" / "co2_2014.tif") as src:
        left, bottom, right, top = src.bounds
    inside = [c for c in layout.cities if left < c.x < right and bottom < c.y < top]
    for year in YEARS:
        active = [p for p in layout.point_sources if p.emission(year) > 0]
        strongest = max(active, key=lambda p: p.emission(year))
        ntl = world / "aux" / f"ntl_{year}.tif"
        at_plant = _sample(ntl, [strongest.x], [strongest.y])[0]
        at_core = _sample(ntl, [inside[0].x], [inside[0].y])[0]
        assert at_plant < 0.2 * at_core
        # ...while the plant dominates its target pixel.
        target = _sample(world / "emissions" / f"co2_{year}.tif", [strongest.x], [strongest.y])[0]
        assert target >= 0.8 * strongest.emission(year)


def test_emissions_are_heavy_tailed(world: Path) -> None:
    for year in YEARS:
        values = _read_masked(world / "emissions" / f"co2_{year}.tif").compressed()
        land = values[values > 0]
        assert values.max() > 1e4
        assert values.max() / np.median(land) > 100.0
        assert (values == 0).sum() > 0


def test_auxiliary_value_ranges(world: Path) -> None:
    ndvi = _read_masked(world / "aux" / "ndvi_2014.tif")
    assert np.ma.getmaskarray(ndvi).any()  # a cloud gap
    assert -1.0 <= ndvi.min() < 0.0 < ndvi.max() <= 1.0
    ntl = _read_masked(world / "aux" / "ntl_2014.tif")
    assert ntl.min() >= 0.0
    builtup = _read_masked(world / "aux" / "builtup.tif")
    assert builtup.min() >= 0.0
    assert builtup.max() <= 1.0
    assert set(np.unique(_read(world / "aux" / "water.tif"))) <= {0, 1}
    assert set(np.unique(_read(world / "aux" / "landcover.tif"))) <= {1, 2, 3, 4, 5}
    population = _read_masked(world / "aux" / "population_2014.tif")
    assert population.min() >= 0.0 and population.sum() > 1e6
    elevation = _read_masked(world / "aux" / "elevation.tif")
    assert elevation.max() > 100


def test_invalid_arguments_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        generate_world(tmp_path, size="huge")
    with pytest.raises(ConfigError):
        generate_world(tmp_path, seed=-1, size="tiny")
    with pytest.raises(ConfigError):
        generate_world(tmp_path, size="tiny", years=[])
