"""The auxiliary rasters as a sensor or a map maker would see the world, each on its own grid.

Every function returns the array of one layer on its output grid (see `layers`), ready to write.
The relations to the emissions are deliberately imperfect: night light blooms and saturates and
does not see power plants, NDVI has clouds, the elevation model has voids.
"""

from __future__ import annotations

import math

import numpy as np
from rasterio.warp import Resampling
from scipy import ndimage

from carbongeo.grid import Grid
from carbongeo.ops.blocks import block_sum
from carbongeo.synth import streams
from carbongeo.synth.city_fields import CityFields
from carbongeo.synth.fields import block_mean, fbm, normal, quantize, upsample
from carbongeo.synth.grids import CELL_KM2, SUB, coarsened, to_grid
from carbongeo.synth.layers import (
    CLASS_NODATA,
    ELEVATION_NODATA,
    FLOAT_NODATA,
    NDVI_NODATA,
)
from carbongeo.synth.roads import road_presence
from carbongeo.synth.surface import builtup_share
from carbongeo.synth.world import World

_NTL_CAP = 63.0
_EARTH_RADIUS_KM = 6371.0088


# --------------------------------------------------------------------------- yearly layers
def night_light(world: World, year: int, cities: CityFields, rural: np.ndarray) -> np.ndarray:
    """VIIRS-like radiance: blooming, saturation, noise, calibration drift; no plants."""
    source = cities.light + 0.25 * (rural / np.float32(CELL_KM2 * 100.0)) ** 0.75
    source += 0.3 * road_presence(world.road_length)
    source[world.water] = 0.0
    half = block_mean(source, 2).astype(np.float32)
    # Blooming at 500 m: a sharp glow plus a wide halo, both mass-preserving.
    bloom = 0.7 * ndimage.gaussian_filter(half, 2.0) + 0.3 * ndimage.gaussian_filter(half, 7.0)
    half_transform = coarsened(world.grids.work.transform, 2)
    radiance = to_grid(bloom, half_transform, world.grids.ntl, Resampling.average, FLOAT_NODATA)
    rng = streams.rng(world.seed, streams.YEAR, year, streams.YEAR_NIGHT_LIGHT)
    drift = np.float32(1.0 + rng.normal(0.0, 0.03))
    radiance *= drift * np.exp(np.float32(0.1) * normal(rng, radiance.shape))
    radiance += np.float32(0.15) + np.float32(0.12) * normal(rng, radiance.shape)
    return quantize(np.clip(radiance, 0.0, _NTL_CAP), 1.0 / 32.0)


def ndvi(world: World, year: int, cities: CityFields, rural: np.ndarray) -> np.ndarray:
    """Annual NDVI: vegetation thinned by built-up land, a yearly anomaly and cloud gaps."""
    rng = streams.rng(world.seed, streams.YEAR, year, streams.YEAR_NDVI)
    density = (cities.population + rural) / np.float32(CELL_KM2)
    builtup = np.clip(builtup_share(density, world.site_builtup), 0.0, 1.0)
    coarse_shape = (world.shape[0] // SUB, world.shape[1] // SUB)
    anomaly = rng.normal(0.0, 0.02) + 0.025 * upsample(fbm(rng, coarse_shape, 2.5))
    values = world.vegetation * (1.0 - builtup) + 0.1 * builtup + anomaly
    values = np.where(world.water, -0.12 + 0.3 * anomaly, values).astype(np.float32)
    grid = world.grids.ndvi
    out = to_grid(values, world.grids.work.transform, grid, Resampling.bilinear, NDVI_NODATA)
    # 1/64 steps: the precision of the product, and it keeps the files small.
    out = quantize(out, 1.0 / 64.0)
    for _ in range(int(rng.integers(1, 3))):
        _add_cloud(rng, out, NDVI_NODATA)
    return out


def _add_cloud(rng: np.random.Generator, image: np.ndarray, nodata: float) -> None:
    """Mask a lumpy blob covering around 1 % of the image as nodata."""
    height, width = image.shape
    radius = rng.uniform(0.03, 0.07) * min(height, width)
    cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
    p1, p2 = rng.uniform(0.0, 2.0 * math.pi, 2)
    reach = 1.4 * radius
    r0, r1 = max(0, math.floor(cy - reach)), min(height, math.ceil(cy + reach))
    c0, c1 = max(0, math.floor(cx - reach)), min(width, math.ceil(cx + reach))
    y = np.arange(r0, r1)[:, None] - cy
    x = np.arange(c0, c1)[None, :] - cx
    bearing = np.arctan2(y, x)
    edge = radius * (1.0 + 0.25 * np.sin(3.0 * bearing + p1) + 0.15 * np.sin(5.0 * bearing + p2))
    image[r0:r1, c0:c1][np.hypot(x, y) < edge] = nodata


def population_counts(world: World, cities: CityFields, rural: np.ndarray) -> np.ndarray:
    """Persons per geographic cell: density resampled, times each cell's area."""
    density = (cities.population + rural) / np.float32(CELL_KM2)
    grid = world.grids.population
    out = to_grid(density, world.grids.work.transform, grid, Resampling.average, FLOAT_NODATA)
    valid = out != FLOAT_NODATA
    counts = np.where(valid, out * _geographic_cell_area_km2(grid)[:, None], out)
    return np.where(valid, quantize(counts, 1.0 / 4.0), counts).astype(np.float32)


def _geographic_cell_area_km2(grid: Grid) -> np.ndarray:
    """Area of the cells of each row of a lon/lat grid on the authalic sphere (km2)."""
    res = grid.transform.a
    top = grid.transform.f
    lat_top = np.radians(top - np.arange(grid.height) * res)
    lat_bottom = np.radians(top - (np.arange(grid.height) + 1) * res)
    return _EARTH_RADIUS_KM**2 * math.radians(res) * (np.sin(lat_top) - np.sin(lat_bottom))


# --------------------------------------------------------------------------- static layers
def road_density(world: World) -> np.ndarray:
    """Mapped roads plus local streets, about 10 km/km2 in fully built-up land (km/km2)."""
    density = world.road_length / np.float32(CELL_KM2) + 10.0 * world.builtup
    grids = world.grids
    roads = to_grid(
        density.astype(np.float32),
        grids.work.transform,
        grids.roads,
        Resampling.average,
        FLOAT_NODATA,
    )
    return quantize(roads, 1.0 / 64.0)


def water_mask(world: World) -> np.ndarray:
    """1 on water, 0 on land (uint8)."""
    grids = world.grids
    return to_grid(
        world.water.astype(np.uint8),
        grids.work.transform,
        grids.water,
        Resampling.nearest,
        CLASS_NODATA,
    )


def builtup(world: World) -> np.ndarray:
    """The static built-up share."""
    grids = world.grids
    share = to_grid(
        world.builtup, grids.work.transform, grids.builtup, Resampling.average, FLOAT_NODATA
    )
    return quantize(share, 1.0 / 1024.0)


def elevation_model(world: World) -> np.ndarray:
    """Elevation in whole metres (int16), with voids on high ground as in radar-derived models."""
    grids = world.grids
    elevation = to_grid(
        world.elevation, grids.work.transform, grids.elevation, Resampling.average, FLOAT_NODATA
    )
    dem = np.where(elevation == FLOAT_NODATA, ELEVATION_NODATA, np.round(elevation))
    dem = dem.astype(np.int16)
    rng = streams.rng(world.seed, streams.SURFACE, streams.SURFACE_DEM_VOIDS)
    _add_dem_voids(rng, world.spec.n_dem_voids, dem)
    return dem


def _add_dem_voids(rng: np.random.Generator, count: int, dem: np.ndarray) -> None:
    """Small void patches on high ground."""
    rows, cols = np.nonzero(dem > 300)
    if rows.size == 0:
        rows, cols = np.nonzero(dem != ELEVATION_NODATA)
    for _ in range(count):
        i = int(rng.integers(rows.size))
        height, width = (int(v) for v in rng.integers(2, 5, 2))
        dem[rows[i] : rows[i] + height, cols[i] : cols[i] + width] = ELEVATION_NODATA


def landcover(world: World) -> np.ndarray:
    """Land-cover classes (uint8)."""
    grids = world.grids
    return to_grid(
        world.landcover, grids.work.transform, grids.landcover, Resampling.nearest, CLASS_NODATA
    )


def road_distance(world: World) -> np.ndarray:
    """Distance to the nearest road (km), measured on a 500 m grid."""
    has_road = block_sum(world.road_length, 2) > 0
    distance = ndimage.distance_transform_edt(~has_road).astype(np.float32) * 0.5
    half_transform = coarsened(world.grids.work.transform, 2)
    dist_roads = to_grid(
        distance, half_transform, world.grids.dist_roads, Resampling.average, FLOAT_NODATA
    )
    return quantize(dist_roads, 1.0 / 64.0)
