"""The sizes of the synthetic world and the checks of `generate_world`'s arguments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from carbongeo.errors import ConfigError
from carbongeo.synth.timeline import REFERENCE_YEAR


@dataclass(frozen=True, kw_only=True)
class SynthSize:
    """Dimensions and pipeline settings of one synthetic world size.

    Fields with a default are the same for most sizes; a size gives only what differs.

    Attributes:
        name: Size name, a key of `SIZES`.
        height: Target rows (1 km pixels).
        width: Target columns (1 km pixels).
        n_cities: Cities drawn (a few may not find room and are dropped).
        n_point_sources: Point sources (power plants, industry) drawn.
        n_rivers: Rivers flowing to the coast.
        n_lakes: Inland lakes.
        n_dem_voids: Void patches in the elevation raster.
        largest_city: Population of the largest city in the reference year.
        nodata_blocks: Size of the staircase of coarse cells missing in the target's NW corner.
        first_year: First year written when no years are given.
        last_year: Last year written when no years are given.
        tile_size: Tile side in target pixels, written to the pipeline file.
        scale: Fine pixels per coarse cell side.
        block_tiles: `[split] block_tiles` of the pipeline file.
        model_dim: `[model] dim` of the pipeline file.
        model_depth: `[model] depth` of the pipeline file.
        epochs: `[train] epochs` of the pipeline file.
        batch_size: `[train] batch_size` of the pipeline file.
        overlap: `[mosaic] overlap` of the pipeline file.
    """

    name: str
    height: int
    width: int
    n_cities: int
    n_point_sources: int
    n_rivers: int
    n_lakes: int
    n_dem_voids: int
    largest_city: float
    nodata_blocks: int
    first_year: int = REFERENCE_YEAR
    last_year: int = 2023
    tile_size: int = 64
    scale: int = 8
    block_tiles: int = 2
    model_dim: int = 16
    model_depth: int = 1
    epochs: int = 30
    batch_size: int = 16
    overlap: int = 16


SIZES: dict[str, SynthSize] = {
    size.name: size
    for size in (
        SynthSize(
            name="tiny",
            height=128,
            width=256,
            n_cities=8,
            n_point_sources=4,
            n_rivers=1,
            n_lakes=1,
            n_dem_voids=1,
            largest_city=1.2e6,
            nodata_blocks=3,
            last_year=2016,
            block_tiles=1,
            model_dim=8,
            epochs=2,
            batch_size=4,
        ),
        SynthSize(
            name="small",
            height=512,
            width=512,
            n_cities=40,
            n_point_sources=10,
            n_rivers=2,
            n_lakes=3,
            n_dem_voids=3,
            largest_city=3.0e6,
            nodata_blocks=5,
        ),
        SynthSize(
            name="medium",
            height=1024,
            width=1024,
            n_cities=120,
            n_point_sources=25,
            n_rivers=3,
            n_lakes=6,
            n_dem_voids=6,
            largest_city=6.0e6,
            nodata_blocks=8,
            tile_size=128,
            batch_size=8,
            overlap=32,
        ),
    )
}


def size_spec(size: str) -> SynthSize:
    """The `SIZES` entry named `size`.

    Raises:
        ConfigError: Unknown size.
    """
    if size not in SIZES:
        raise ConfigError(f"unknown synthetic world size {size!r}; choose one of {sorted(SIZES)}")
    return SIZES[size]


def check_seed(seed: int) -> None:
    """Refuse a seed that is not a non-negative integer.

    Raises:
        ConfigError: Bad seed.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"the seed must be a non-negative integer, got {seed!r}")


def year_list(spec: SynthSize, years: Sequence[int] | None) -> list[int]:
    """The sorted distinct years to write; the size's year range when `years` is None.

    Raises:
        ConfigError: No years, or a year that is not an integer in 1950-2100.
    """
    if years is None:
        return list(range(spec.first_year, spec.last_year + 1))
    result = sorted(set(years))
    if not result:
        raise ConfigError("no years given for the synthetic world")
    for year in result:
        if isinstance(year, bool) or not isinstance(year, int) or not 1950 <= year <= 2100:
            raise ConfigError(f"synthetic world years must be integers in 1950-2100, got {year!r}")
    return result
