"""Emissions: the true fine field of a year, the target raster and the coarse inventory."""

from __future__ import annotations

import numpy as np

from carbongeo.ops.blocks import block_sum
from carbongeo.synth import streams
from carbongeo.synth.city_fields import CityFields
from carbongeo.synth.fields import block_mean
from carbongeo.synth.grids import SUB
from carbongeo.synth.layers import TARGET_NODATA
from carbongeo.synth.sizes import SynthSize
from carbongeo.synth.timeline import emission_trend
from carbongeo.synth.world import World

# Rural residents emit about this much each (t CO2 per year).
_RURAL_PER_CAPITA = 0.8


def true_emission(world: World, year: int, cities: CityFields, rural: np.ndarray) -> np.ndarray:
    """The true fine emission field (t CO2 per 1 km pixel) over the whole target extent.

    Args:
        world: The static world.
        year: The year.
        cities: The cities' fields of `year`.
        rural: Rural persons per working cell in `year`.

    Returns:
        float64 array of the target's shape; zero on pixels mostly covered by water.
    """
    rows, cols = world.grids.target_window()
    trend = np.float32(emission_trend(year))
    # Land use adds a small background to the people's emissions.
    work = cities.emission[rows, cols] + trend * (
        _RURAL_PER_CAPITA * rural[rows, cols] + world.land_background[rows, cols]
    )
    work *= world.allocation_noise[rows, cols]
    road = world.roads.emission(world.layout.cities, year, world.shape)
    work += road[rows, cols].astype(np.float32)

    for point, cell in zip(world.layout.point_sources, world.point_cells, strict=True):
        r, c = divmod(int(cell), world.shape[1])
        work[r - rows.start, c - cols.start] += np.float32(point.emission(year))

    water = world.water[rows, cols]
    work[water] = 0.0
    fine = block_sum(work, SUB)
    fine[block_mean(water.astype(np.float32), SUB) >= 0.5] = 0.0
    rng = streams.rng(world.seed, streams.YEAR, year, streams.YEAR_TARGET)
    fine *= rng.lognormal(-0.00125, 0.05, fine.shape)
    return fine


def nodata_corner(spec: SynthSize) -> np.ndarray:
    """Mask of the target pixels outside the inventory domain: a staircase of whole coarse
    cells in the north-west corner, so every coarse cell is either fully valid or fully missing."""
    rows, cols = np.indices((spec.height, spec.width))
    return rows // spec.scale + cols // spec.scale < spec.nodata_blocks


def target_raster(fine: np.ndarray, spec: SynthSize) -> np.ndarray:
    """The target raster of a fine field: float32, nodata in the missing corner."""
    target = fine.astype(np.float32)
    target[nodata_corner(spec)] = TARGET_NODATA
    return target


def coarse_inventory(seed: int, year: int, fine: np.ndarray, scale: int) -> np.ndarray:
    """The coarse inventory-like product of a fine field (float32).

    Block sums of `scale` x `scale` pixels with a few percent of mean-preserving error per cell.
    """
    coarse = block_sum(fine, scale)
    rng = streams.rng(seed, streams.YEAR, year, streams.YEAR_INVENTORY)
    coarse *= rng.lognormal(-(0.03**2) / 2.0, 0.03, coarse.shape)
    return coarse.astype(np.float32)
