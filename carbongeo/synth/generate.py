"""`generate_world`: build a world and write its rasters and pipeline file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from carbongeo.config import DEFAULT_CONFIG_NAME
from carbongeo.errors import ConfigError, OutputError
from carbongeo.io.atomic import write_text_atomic
from carbongeo.synth import auxiliary, layers
from carbongeo.synth.cities import WorldLayout
from carbongeo.synth.emissions import coarse_inventory, target_raster, true_emission
from carbongeo.synth.pipeline_file import world_config_text
from carbongeo.synth.rasters import write_layer
from carbongeo.synth.sizes import check_seed, size_spec, year_list
from carbongeo.synth.world import World, build_world, year_fields

CONFIG_NAME = DEFAULT_CONFIG_NAME


def generate_world(
    out_dir: Path,
    *,
    seed: int = 0,
    size: str = "small",
    years: Sequence[int] | None = None,
    target_years: Sequence[int] | None = None,
) -> Path:
    """Write the synthetic world's rasters under out_dir and out_dir/'carbongeo.toml'.

    Files: `emissions/co2_{year}.tif` (target), `coarse/edgar_like_{year}.tif` (coarse
    product) and `aux/*.tif` (auxiliary rasters). The pipeline file is written last and
    atomically; an existing one is removed first, so a run that stops half-way leaves no config
    pointing at a mix of old and new rasters. The output is fully determined by `seed`, `size`
    and the years: a year's rasters do not depend on which other years are written.

    Args:
        out_dir: Folder to write into; created if needed.
        seed: Non-negative random seed.
        size: A key of `SIZES`: "tiny", "small" or "medium".
        years: Years to write; default the size's year range.
        target_years: The years the pipeline file gives a target (`target.years`); None: every
            year; empty: no `[target]` (the truth rasters are written all the same, for
            evaluation and tests).

    Returns:
        The path of the pipeline file.

    Raises:
        ConfigError: Unknown size, negative seed or invalid years (or target years outside them).
        OutputError: The folder or a file cannot be written.
    """
    spec = size_spec(size)
    year_values = year_list(spec, years)
    check_seed(seed)
    outside = [y for y in target_years or () if y not in year_values]
    if outside:
        raise ConfigError(f"target years: {outside[0]} is not one of the world's years")
    out_dir = Path(out_dir)
    config_path = out_dir / CONFIG_NAME
    try:
        for folder in (out_dir, out_dir / "emissions", out_dir / "coarse", out_dir / "aux"):
            folder.mkdir(parents=True, exist_ok=True)
        config_path.unlink(missing_ok=True)
        world = build_world(seed, spec)
        _write_static(world, out_dir)
        for year in year_values:
            _write_year(world, year, out_dir)
        write_text_atomic(config_path, world_config_text(spec, year_values, target_years))
    except OSError as exc:
        raise OutputError(f"cannot write the synthetic world to {out_dir}: {exc}") from exc
    return config_path


def world_layout(seed: int = 0, size: str = "small") -> WorldLayout:
    """Return the cities and point sources of the world `generate_world` makes from these args.

    Args:
        seed: Non-negative random seed.
        size: A key of `SIZES`.

    Returns:
        The world's layout, in target-CRS coordinates.

    Raises:
        ConfigError: Unknown size or negative seed.
    """
    spec = size_spec(size)
    check_seed(seed)
    return build_world(seed, spec).layout


def _write_static(world: World, out_dir: Path) -> None:
    grids = world.grids
    write_layer(out_dir, layers.ROADS, auxiliary.road_density(world), grids.roads)
    write_layer(out_dir, layers.WATER, auxiliary.water_mask(world), grids.water)
    write_layer(out_dir, layers.BUILTUP, auxiliary.builtup(world), grids.builtup)
    write_layer(out_dir, layers.ELEVATION, auxiliary.elevation_model(world), grids.elevation)
    write_layer(out_dir, layers.LANDCOVER, auxiliary.landcover(world), grids.landcover)
    write_layer(out_dir, layers.DIST_ROADS, auxiliary.road_distance(world), grids.dist_roads)


def _write_year(world: World, year: int, out_dir: Path) -> None:
    grids = world.grids
    spec = world.spec
    cities, rural = year_fields(world, year)
    fine = true_emission(world, year, cities, rural)
    coarse = coarse_inventory(world.seed, year, fine, spec.scale)
    write_layer(out_dir, layers.TARGET, target_raster(fine, spec), grids.target, year)
    write_layer(out_dir, layers.COARSE, coarse, grids.coarse, year)
    night_light = auxiliary.night_light(world, year, cities, rural)
    write_layer(out_dir, layers.NTL, night_light, grids.ntl, year)
    ndvi = auxiliary.ndvi(world, year, cities, rural)
    write_layer(out_dir, layers.NDVI, ndvi, grids.ndvi, year)
    population = auxiliary.population_counts(world, cities, rural)
    write_layer(out_dir, layers.POPULATION, population, grids.population, year)
