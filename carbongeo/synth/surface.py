"""The land surface: rural people, built-up land, land cover, vegetation and land-use emissions.

All fields are on the working grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from carbongeo.synth import streams
from carbongeo.synth.cities import WorldLayout
from carbongeo.synth.fields import fbm, upsample
from carbongeo.synth.grids import CELL_KM2, SUB, around
from carbongeo.synth.layers import (
    LANDCOVER_BARE,
    LANDCOVER_CROPLAND,
    LANDCOVER_FOREST,
    LANDCOVER_URBAN,
    LANDCOVER_WATER,
)
from carbongeo.synth.roads import road_presence
from carbongeo.synth.terrain import Terrain


@dataclass(frozen=True)
class Rural:
    """The countryside's people and the error of the emission allocation.

    Attributes:
        density: Persons per km2 in the reference year (float32).
        allocation_noise: Static multiplicative error of the emission allocation (float32).
    """

    density: np.ndarray
    allocation_noise: np.ndarray


def rural(seed: int, terrain: Terrain) -> Rural:
    """Villages scattered over the land, denser in the lowlands; none on water."""
    water, elevation = terrain.water, terrain.elevation
    shape = water.shape
    coarse_shape = (shape[0] // SUB, shape[1] // SUB)
    rng = streams.rng(seed, streams.RURAL)
    n_villages = rng.poisson(water.size * CELL_KM2 / 8.0)
    village_cells = rng.integers(0, water.size, n_villages)
    villages = np.bincount(
        village_cells, weights=rng.lognormal(0.0, 0.6, n_villages), minlength=water.size
    ).astype(np.float32)
    villages = ndimage.gaussian_filter(villages.reshape(shape), 1.5)
    villages /= max(float(villages.mean()), 1e-12)
    rural_noise = upsample(fbm(rng, coarse_shape, 2.6))
    density = (
        120.0 * np.exp(-elevation / 350.0) * np.exp(0.5 * rural_noise) * (0.3 + 0.7 * villages)
    ).astype(np.float32)
    density[water] = 0.0
    # Drawn after the density from the same stream.
    allocation_noise = rng.lognormal(-0.06, 0.35, shape).astype(np.float32)
    return Rural(density=density, allocation_noise=allocation_noise)


def site_builtup(
    layout: WorldLayout,
    point_cells: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """Built-up share of the industrial parks and plant sites, where few people live."""
    sites = np.zeros(shape, dtype=np.float32)
    for city in layout.cities:
        for dx, dy, sigma, _ in city.parks:
            px, py = city.x + dx * 1000.0, city.y + dy * 1000.0
            win = around(xs, ys, px, py, 4.0 * sigma * 1000.0)
            if win is None:
                continue
            rows, cols, ox, oy = win
            patch = 0.85 * np.exp(-(ox**2 + oy**2) / (2.0 * sigma**2))
            sites[rows, cols] = np.maximum(sites[rows, cols], patch)
    for cell in point_cells:
        r, c = divmod(int(cell), shape[1])
        sites[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = 0.75
    return sites


def builtup_share(density: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Built-up share of land where `density` persons per km2 live, plus an `extra` share."""
    return 1.0 - np.exp(-density / 4000.0) + extra


def static_builtup(
    seed: int,
    density: np.ndarray,
    sites: np.ndarray,
    road_length: np.ndarray,
    water: np.ndarray,
) -> np.ndarray:
    """The static built-up share (float32, 0 on water): people, sites, roads and noise.

    Args:
        seed: The world's seed.
        density: Persons per km2 in the static year.
        sites: Built-up share of parks and plant sites.
        road_length: Km of road per working cell.
        water: The water mask.
    """
    builtup = builtup_share(density, sites)
    builtup += 0.2 * road_presence(road_length)
    builtup *= streams.rng(seed, streams.SURFACE).lognormal(0.0, 0.12, density.shape)
    builtup = np.clip(builtup, 0.0, 1.0).astype(np.float32)
    builtup[water] = 0.0
    return builtup


def landcover(terrain: Terrain, builtup: np.ndarray) -> np.ndarray:
    """Land-cover classes (uint8): forest, bare high ground, urban, water, else cropland."""
    texture = terrain.texture
    classes = np.full(builtup.shape, LANDCOVER_CROPLAND, dtype=np.uint8)
    classes[terrain.forest] = LANDCOVER_FOREST
    classes[((terrain.elevation > 850.0) & (texture > 0.7)) | (texture > 2.3)] = LANDCOVER_BARE
    classes[builtup >= 0.3] = LANDCOVER_URBAN
    classes[terrain.water] = LANDCOVER_WATER
    return classes


def vegetation(classes: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """NDVI of the vegetated surface by land-cover class, with the ground's texture."""
    ndvi = np.select(
        [classes == LANDCOVER_FOREST, classes == LANDCOVER_BARE],
        [np.float32(0.78), np.float32(0.12)],
        np.float32(0.58),
    ).astype(np.float32)
    ndvi += 0.05 * texture
    return ndvi


def land_background(classes: np.ndarray) -> np.ndarray:
    """Emissions not tied to people, by land-cover class (t CO2 per working cell per year)."""
    rate = np.select(
        [classes == LANDCOVER_FOREST, classes == LANDCOVER_BARE], [1.0, 0.6], 4.0
    ).astype(np.float32)
    return rate * np.float32(CELL_KM2)
