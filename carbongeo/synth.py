"""The embedded synthetic world: a reproducible stand-in for real emission and auxiliary data.

`generate_world` writes a complete, self-consistent data set for the pipeline: a "true" fine
CO2 emission raster per year (the training target), a coarse inventory-like product derived from
it with a few percent of error, nine auxiliary rasters in different CRSs and resolutions, and the
pipeline file that ties them together.

The world is built on a 250 m working grid in the target's UTM CRS that covers every output, and
each output is derived from it: the target by block sums, other grids by `rasterio.warp.reproject`.
The relations between the layers are realistic and deliberately imperfect: night light blooms and
saturates and does not see power plants, population and emissions follow different profiles,
per-capita emissions and lighting differ between cities, and every source carries its own noise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine
from rasterio.warp import Resampling, reproject, transform_bounds
from scipy import ndimage

from carbongeo.errors import ConfigError, OutputError
from carbongeo.grid import Grid
from carbongeo.ops.blocks import block_sum

__all__ = [
    "CONFIG_NAME",
    "City",
    "PointSource",
    "SIZES",
    "SynthSize",
    "TARGET_CRS",
    "TARGET_NODATA",
    "WorldLayout",
    "generate_world",
    "world_layout",
]

CONFIG_NAME = "carbongeo.toml"
TARGET_CRS = "EPSG:32650"
TARGET_RES = 1000.0
TARGET_X0 = 300000.0
TARGET_Y0 = 3012000.0
TARGET_NODATA = -9999.0
FLOAT_NODATA = -9999.0
NDVI_NODATA = -3.0
ELEVATION_NODATA = -32768
CLASS_NODATA = 255
REFERENCE_YEAR = 2014
# Static layers (built-up share, land cover, road density) describe this year.
STATIC_YEAR = 2018

LANDCOVER_URBAN = 1
LANDCOVER_CROPLAND = 2
LANDCOVER_FOREST = 3
LANDCOVER_WATER = 4
LANDCOVER_BARE = 5

_WORK_RES = 250.0
_SUB = int(TARGET_RES / _WORK_RES)
_CELL_KM2 = (_WORK_RES / 1000.0) ** 2
_AUX_PAD_M = 4000.0
_NTL_CAP = 63.0
_EARTH_RADIUS_KM = 6371.0088

# Independent random streams, so that adding draws to one part leaves the others unchanged.
_S_TERRAIN = 1
_S_WATER = 2
_S_CITIES = 3
_S_POINTS = 4
_S_ROADS = 5
_S_RURAL = 6
_S_SURFACE = 7
_S_YEAR = 100


@dataclass(frozen=True)
class SynthSize:
    """Dimensions and pipeline settings of one synthetic world size.

    Attributes:
        name: Size name, a key of `SIZES`.
        height: Target rows (1 km pixels).
        width: Target columns (1 km pixels).
        first_year: First year written when no years are given.
        last_year: Last year written when no years are given.
        tile_size: Tile side in target pixels, written to the pipeline file.
        scale: Fine pixels per coarse cell side.
        n_cities: Cities drawn (a few may not find room and are dropped).
        n_point_sources: Point sources (power plants, industry) drawn.
        n_rivers: Rivers flowing to the coast.
        n_lakes: Inland lakes.
        n_dem_voids: Void patches in the elevation raster.
        largest_city: Population of the largest city in the reference year.
        nodata_blocks: Size of the staircase of coarse cells missing in the target's NW corner.
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
    first_year: int
    last_year: int
    tile_size: int
    scale: int
    n_cities: int
    n_point_sources: int
    n_rivers: int
    n_lakes: int
    n_dem_voids: int
    largest_city: float
    nodata_blocks: int
    block_tiles: int
    model_dim: int
    model_depth: int
    epochs: int
    batch_size: int
    overlap: int


SIZES: dict[str, SynthSize] = {
    "tiny": SynthSize(
        name="tiny",
        height=128,
        width=256,
        first_year=2014,
        last_year=2016,
        tile_size=64,
        scale=8,
        n_cities=8,
        n_point_sources=4,
        n_rivers=1,
        n_lakes=1,
        n_dem_voids=1,
        largest_city=1.2e6,
        nodata_blocks=3,
        block_tiles=1,
        model_dim=8,
        model_depth=1,
        epochs=2,
        batch_size=4,
        overlap=16,
    ),
    "small": SynthSize(
        name="small",
        height=512,
        width=512,
        first_year=2014,
        last_year=2023,
        tile_size=64,
        scale=8,
        n_cities=40,
        n_point_sources=10,
        n_rivers=2,
        n_lakes=3,
        n_dem_voids=3,
        largest_city=3.0e6,
        nodata_blocks=5,
        block_tiles=2,
        model_dim=16,
        model_depth=1,
        epochs=30,
        batch_size=16,
        overlap=16,
    ),
    "medium": SynthSize(
        name="medium",
        height=1024,
        width=1024,
        first_year=2014,
        last_year=2023,
        tile_size=128,
        scale=8,
        n_cities=120,
        n_point_sources=25,
        n_rivers=3,
        n_lakes=6,
        n_dem_voids=6,
        largest_city=6.0e6,
        nodata_blocks=8,
        block_tiles=2,
        model_dim=16,
        model_depth=1,
        epochs=30,
        batch_size=8,
        overlap=32,
    ),
}


@dataclass(frozen=True)
class City:
    """One city of the synthetic world.

    Attributes:
        x: Centre easting in the target CRS (m).
        y: Centre northing in the target CRS (m).
        population: Population in the reference year (2014).
        growth: Annual population growth rate (negative for shrinking cities).
        scale_km: Population decay length of the core in the reference year (km).
        axis_ratio: Minor/major axis ratio of the elliptical core.
        angle: Orientation of the major axis (radians).
        per_capita: Urban emissions per person (t CO2 per year).
        light: Night-light brightness factor (richer cities shine more).
        subcenters: (dx km, dy km, population share) of secondary centres.
        parks: (dx km, dy km, sigma km, emission share) of industrial parks.
    """

    x: float
    y: float
    population: float
    growth: float
    scale_km: float
    axis_ratio: float
    angle: float
    per_capita: float
    light: float
    subcenters: tuple[tuple[float, float, float], ...]
    parks: tuple[tuple[float, float, float, float], ...]

    def population_in(self, year: int) -> float:
        """Return the city's population in `year`."""
        return self.population * (1.0 + self.growth) ** (year - REFERENCE_YEAR)

    @property
    def reach_km(self) -> float:
        """Distance from the centre beyond which the city adds nothing noticeable (km)."""
        extra = [math.hypot(dx, dy) for dx, dy, _ in self.subcenters]
        extra += [math.hypot(dx, dy) + 4.0 * sigma for dx, dy, sigma, _ in self.parks]
        return 10.0 * self.scale_km + max(extra, default=0.0)


@dataclass(frozen=True)
class PointSource:
    """A strong point source (power plant or heavy industry) that emits no night light.

    Attributes:
        x: Easting in the target CRS (m), the centre of a 250 m working cell.
        y: Northing in the target CRS (m).
        base_emission: Emission at full capacity (t CO2 per year).
        first_year: First operating year.
        last_year: Last operating year.
        phase: Phase of the year-to-year capacity-factor cycle (radians).
    """

    x: float
    y: float
    base_emission: float
    first_year: int
    last_year: int
    phase: float

    def emission(self, year: int) -> float:
        """Return the emission in `year` (t CO2), zero when not operating."""
        if not self.first_year <= year <= self.last_year:
            return 0.0
        return self.base_emission * (0.88 + 0.12 * math.sin(self.phase + 1.3 * (year - 2014)))


@dataclass(frozen=True)
class WorldLayout:
    """The discrete features of a synthetic world, largest first.

    Attributes:
        cities: Cities, by decreasing reference-year population.
        point_sources: Point sources, by decreasing base emission.
    """

    cities: tuple[City, ...]
    point_sources: tuple[PointSource, ...]


@dataclass(frozen=True)
class _Grids:
    target: Grid
    coarse: Grid
    work: Grid
    ntl: Grid
    roads: Grid
    water: Grid
    ndvi: Grid
    population: Grid
    builtup: Grid
    elevation: Grid
    landcover: Grid
    dist_roads: Grid
    # Position of the target's top-left pixel on the working grid.
    row0: int
    col0: int

    def target_window(self) -> tuple[slice, slice]:
        rows = slice(self.row0, self.row0 + self.target.height * _SUB)
        cols = slice(self.col0, self.col0 + self.target.width * _SUB)
        return rows, cols


@dataclass
class _World:
    seed: int
    spec: SynthSize
    grids: _Grids
    layout: WorldLayout
    xs: np.ndarray  # working-cell centre eastings (m)
    ys: np.ndarray  # working-cell centre northings (m)
    water: np.ndarray  # bool
    elevation: np.ndarray  # m
    rural_density: np.ndarray  # persons / km2 in the reference year
    land_background: np.ndarray  # t CO2 per working cell per year, not tied to people
    allocation_noise: np.ndarray  # static multiplicative error of the emission allocation
    road_length: np.ndarray  # km of road per working cell
    road_cells: np.ndarray  # flat working-cell index of every road sample
    road_weights: np.ndarray  # t CO2 per year of every road sample in the reference year
    road_edges: np.ndarray  # edge index of every road sample
    edge_ends: np.ndarray  # (n_edges, 2) city indices of each edge, -1 for a point source
    site_builtup: np.ndarray  # built-up share of industrial parks and plant sites
    builtup: np.ndarray  # static built-up share
    landcover: np.ndarray  # uint8 classes
    vegetation: np.ndarray  # NDVI of the vegetated surface
    point_cells: np.ndarray  # flat working-cell index of each point source

    @property
    def shape(self) -> tuple[int, int]:
        return self.water.shape


@dataclass
class _CityFields:
    population: np.ndarray  # persons per working cell
    emission: np.ndarray  # t CO2 per working cell per year
    light: np.ndarray  # night-light source radiance before blooming


def generate_world(
    out_dir: Path,
    *,
    seed: int = 0,
    size: str = "small",
    years: Sequence[int] | None = None,
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

    Returns:
        The path of the pipeline file.

    Raises:
        ConfigError: Unknown size, negative seed or invalid years.
        OutputError: The folder or a file cannot be written.
    """
    spec = _size_spec(size)
    year_list = _year_list(spec, years)
    _check_seed(seed)
    out_dir = Path(out_dir)
    config_path = out_dir / CONFIG_NAME
    try:
        for folder in (out_dir, out_dir / "emissions", out_dir / "coarse", out_dir / "aux"):
            folder.mkdir(parents=True, exist_ok=True)
        config_path.unlink(missing_ok=True)
        world = _build_world(seed, spec)
        _write_static(world, out_dir / "aux")
        for year in year_list:
            _write_year(world, seed, year, out_dir)
        _write_text_atomic(config_path, _config_text(spec, year_list))
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
    spec = _size_spec(size)
    _check_seed(seed)
    return _build_world(seed, spec).layout


def _size_spec(size: str) -> SynthSize:
    if size not in SIZES:
        raise ConfigError(f"unknown synthetic world size {size!r}; choose one of {sorted(SIZES)}")
    return SIZES[size]


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"the seed must be a non-negative integer, got {seed!r}")


def _year_list(spec: SynthSize, years: Sequence[int] | None) -> list[int]:
    if years is None:
        return list(range(spec.first_year, spec.last_year + 1))
    result = sorted(set(years))
    if not result:
        raise ConfigError("no years given for the synthetic world")
    for year in result:
        if isinstance(year, bool) or not isinstance(year, int) or not 1950 <= year <= 2100:
            raise ConfigError(f"synthetic world years must be integers in 1950-2100, got {year!r}")
    return result


def _rng(seed: int, stream: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *extra])


def _trend(year: int) -> float:
    """National emission trend: growth that levels off, with a dip in 2020."""
    t = year - REFERENCE_YEAR
    factor = max(0.4, 1.0 + 0.03 * t - 0.0022 * t * t)
    return factor * (0.94 if year == 2020 else 1.0)


# ---------------------------------------------------------------------------------------------
# Grids


def _snapped_grid(
    crs: str, bounds: tuple[float, float, float, float], res: float, offset: float = 0.0
) -> Grid:
    """Smallest grid of pixel size `res` (origin at `offset` modulo res) covering `bounds`."""
    left = math.floor((bounds[0] - offset) / res)
    bottom = math.floor((bounds[1] - offset) / res)
    right = math.ceil((bounds[2] - offset) / res)
    top = math.ceil((bounds[3] - offset) / res)
    transform = Affine(res, 0.0, left * res + offset, 0.0, -res, top * res + offset)
    return Grid(crs, transform, top - bottom, right - left)


def _make_grids(spec: SynthSize) -> _Grids:
    target = Grid(
        TARGET_CRS,
        Affine(TARGET_RES, 0.0, TARGET_X0, 0.0, -TARGET_RES, TARGET_Y0),
        spec.height,
        spec.width,
    )
    coarse_res = TARGET_RES * spec.scale
    coarse = Grid(
        TARGET_CRS,
        Affine(coarse_res, 0.0, TARGET_X0, 0.0, -coarse_res, TARGET_Y0),
        spec.height // spec.scale,
        spec.width // spec.scale,
    )
    left, bottom, right, top = target.bounds
    padded = (left - _AUX_PAD_M, bottom - _AUX_PAD_M, right + _AUX_PAD_M, top + _AUX_PAD_M)
    geographic = transform_bounds(TARGET_CRS, "EPSG:4326", *padded, densify_pts=21)
    mercator = transform_bounds(TARGET_CRS, "EPSG:3857", *padded, densify_pts=21)
    aux = {
        "ntl": _snapped_grid("EPSG:4326", geographic, 1.0 / 240.0),
        "roads": _snapped_grid(TARGET_CRS, padded, 500.0),
        "water": _snapped_grid(TARGET_CRS, padded, 250.0),
        "ndvi": _snapped_grid("EPSG:3857", mercator, 250.0),
        "population": _snapped_grid("EPSG:4326", geographic, 0.005),
        "builtup": _snapped_grid(TARGET_CRS, padded, 1000.0, offset=500.0),
        "elevation": _snapped_grid("EPSG:4326", geographic, 1.0 / 120.0),
        "landcover": _snapped_grid(TARGET_CRS, padded, 300.0),
        "dist_roads": _snapped_grid(TARGET_CRS, padded, 1000.0),
    }
    # The working grid covers every output grid, aligned to the target's 1 km pixels.
    xmin, ymin, xmax, ymax = target.bounds
    for grid in aux.values():
        b = transform_bounds(grid.crs, TARGET_CRS, *grid.bounds, densify_pts=21)
        xmin, ymin = min(xmin, b[0]), min(ymin, b[1])
        xmax, ymax = max(xmax, b[2]), max(ymax, b[3])
    margin = 2.0 * TARGET_RES
    work_km = _snapped_grid(
        TARGET_CRS, (xmin - margin, ymin - margin, xmax + margin, ymax + margin), TARGET_RES
    )
    work = Grid(
        TARGET_CRS,
        Affine(_WORK_RES, 0.0, work_km.transform.c, 0.0, -_WORK_RES, work_km.transform.f),
        work_km.height * _SUB,
        work_km.width * _SUB,
    )
    row0 = round((work.transform.f - TARGET_Y0) / _WORK_RES)
    col0 = round((TARGET_X0 - work.transform.c) / _WORK_RES)
    return _Grids(target=target, coarse=coarse, work=work, row0=row0, col0=col0, **aux)


# ---------------------------------------------------------------------------------------------
# Array helpers


def _fbm(rng: np.random.Generator, shape: tuple[int, int], beta: float = 3.0) -> np.ndarray:
    """Standardised fractal noise with a power spectrum falling as frequency**-beta."""
    height, width = shape
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    freq = np.hypot(fx, fy)
    freq[0, 0] = 1.0
    amplitude = freq ** (-beta / 2.0)
    amplitude[0, 0] = 0.0
    spectrum = np.fft.rfft2(rng.standard_normal(shape)) * amplitude
    field = np.fft.irfft2(spectrum, s=shape)
    field -= field.mean()
    field /= field.std()
    return field.astype(np.float32)


def _upsample(field: np.ndarray) -> np.ndarray:
    """Bilinear upsampling of a 1 km field onto the 250 m working grid (edges held constant)."""

    def taps(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = (np.arange(n * _SUB) + 0.5) / _SUB - 0.5
        low = np.floor(position)
        weight = (position - low).astype(np.float32)
        first = np.clip(low.astype(np.int64), 0, n - 1)
        return first, np.minimum(first + 1, n - 1), weight

    field = field.astype(np.float32)
    r0, r1, wr = taps(field.shape[0])
    c0, c1, wc = taps(field.shape[1])
    rows = field[r0] * (1.0 - wr)[:, None] + field[r1] * wr[:, None]
    # Column gathers come back in Fortran order; mixing orders slows every later operation.
    return np.ascontiguousarray(rows[:, c0] * (1.0 - wc) + rows[:, c1] * wc)


def _coarsened(transform: Affine, factor: int) -> Affine:
    """Transform of a north-up grid whose pixels are `factor` times larger, same origin."""
    return Affine(transform.a * factor, 0.0, transform.c, 0.0, transform.e * factor, transform.f)


def _decay(exponent: np.ndarray) -> np.ndarray:
    """exp(-exponent), exactly zero where negligible.

    Far tails would otherwise become float32 subnormals, which make every later array
    operation on them many times slower.
    """
    return np.where(exponent < 60.0, np.exp(-np.minimum(exponent, 60.0)), 0.0)


def _block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    return block_sum(array, factor) / float(factor * factor)


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 noise (float64 draws would double the cost of large arrays)."""
    return rng.standard_normal(shape, dtype=np.float32)


def _quantize(array: np.ndarray, step: float) -> np.ndarray:
    """Round to multiples of a power-of-two step; keeps float32 mantissas short (compresses)."""
    return (np.rint(array * np.float32(1.0 / step)) * np.float32(step)).astype(np.float32)


def _window(
    world_xs: np.ndarray, world_ys: np.ndarray, x: float, y: float, radius_m: float
) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """Working-grid window around (x, y) with cell-centre offsets in km, or None if outside."""
    left = world_xs[0] - _WORK_RES / 2.0
    top = world_ys[0] + _WORK_RES / 2.0
    c0 = max(0, math.floor((x - radius_m - left) / _WORK_RES))
    c1 = min(world_xs.size, math.ceil((x + radius_m - left) / _WORK_RES))
    r0 = max(0, math.floor((top - (y + radius_m)) / _WORK_RES))
    r1 = min(world_ys.size, math.ceil((top - (y - radius_m)) / _WORK_RES))
    if c0 >= c1 or r0 >= r1:
        return None
    dx = ((world_xs[c0:c1] - x) / 1000.0)[None, :]
    dy = ((world_ys[r0:r1] - y) / 1000.0)[:, None]
    return slice(r0, r1), slice(c0, c1), dx, dy


def _cells(grid: Grid, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat working-cell indices of points and a mask of those inside the grid."""
    cols = np.floor((x - grid.transform.c) / _WORK_RES).astype(np.int64)
    rows = np.floor((grid.transform.f - y) / _WORK_RES).astype(np.int64)
    inside = (rows >= 0) & (rows < grid.height) & (cols >= 0) & (cols < grid.width)
    return rows * grid.width + cols, inside


def _meander(
    rng: np.random.Generator, start: np.ndarray, end: np.ndarray, levels: int, roughness: float
) -> np.ndarray:
    """Polyline from start to end bent by recursive random midpoint displacement."""
    points = np.array([start, end], dtype=np.float64)
    for _ in range(levels):
        seg = np.diff(points, axis=0)
        length = np.hypot(seg[:, 0], seg[:, 1])
        normal = np.stack([-seg[:, 1], seg[:, 0]], axis=1) / np.maximum(length, 1e-9)[:, None]
        shift = rng.standard_normal(len(seg)) * roughness * length
        mids = (points[1:] + points[:-1]) / 2.0 + normal * shift[:, None]
        merged = np.empty((len(points) + len(mids), 2))
        merged[0::2] = points
        merged[1::2] = mids
        points = merged
    return points


def _sample_line(points: np.ndarray, step_m: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Points spaced about step_m along a polyline, and the spacing actually used (m)."""
    seg = np.hypot(*np.diff(points, axis=0).T)
    cumulative = np.concatenate([[0.0], np.cumsum(seg)])
    total = float(cumulative[-1])
    count = max(1, round(total / step_m))
    spacing = total / count
    along = (np.arange(count) + 0.5) * spacing
    x = np.interp(along, cumulative, points[:, 0])
    y = np.interp(along, cumulative, points[:, 1])
    return x, y, spacing


# ---------------------------------------------------------------------------------------------
# The static world


def _build_world(seed: int, spec: SynthSize) -> _World:
    grids = _make_grids(spec)
    work = grids.work
    shape = (work.height, work.width)
    coarse_shape = (work.height // _SUB, work.width // _SUB)
    xs = work.transform.c + (np.arange(work.width) + 0.5) * _WORK_RES
    ys = work.transform.f - (np.arange(work.height) + 0.5) * _WORK_RES

    # Terrain is shaped on the 1 km grid and interpolated onto the working grid.
    rng = _rng(seed, _S_TERRAIN)
    coast_noise = _fbm(rng, coarse_shape, 3.2)
    relief = _fbm(rng, coarse_shape, 3.0)
    hills = _fbm(rng, coarse_shape, 2.4)
    texture_km = _fbm(rng, coarse_shape, 2.0)

    # Sea towards the east-south-east; u runs from about -1 inland to +1 offshore.
    left, bottom, right, top = grids.target.bounds
    xc, yc = (left + right) / 2.0, (bottom + top) / 2.0
    half_diagonal = math.hypot(right - left, top - bottom) / 2.0
    theta = math.radians(-35.0 + rng.uniform(-20.0, 20.0))
    xs_km, ys_km = xs.reshape(-1, _SUB).mean(axis=1), ys.reshape(-1, _SUB).mean(axis=1)
    u = (
        (xs_km[None, :] - xc) * math.cos(theta) + (ys_km[:, None] - yc) * math.sin(theta)
    ) / half_diagonal
    offshore = u - (0.5 + 0.1 * coast_noise)
    inland_km = np.clip(-offshore / 1.3, 0.0, 1.0)
    elevation_km = (
        4.0
        + 1500.0 * inland_km**1.6 * (0.45 + 0.55 / (1.0 + np.exp(-1.5 * relief)))
        + 90.0 * inland_km * hills
        + 6.0 * texture_km
    )
    sea = _upsample(offshore) > 0.0
    elevation = np.maximum(_upsample(elevation_km), 1.0)
    texture = _upsample(texture_km)
    forest = _upsample(elevation_km - 140.0 * hills) > 220.0

    water_rng = _rng(seed, _S_WATER)
    rivers = _rivers(water_rng, spec, grids, xs_km, ys_km, u)
    lakes = _lakes(water_rng, spec, grids, xs, ys, inland_km, texture, elevation, sea | rivers)
    water = sea | rivers | lakes
    elevation[sea] = 0.0

    water_km = block_sum(water.astype(np.float32), _SUB) > 0
    water_distance_km = ndimage.distance_transform_edt(~water_km)
    elevation_km = _block_mean(elevation, _SUB)  # with the lakes' flat surfaces

    cities = _place_cities(_rng(seed, _S_CITIES), spec, grids, water_distance_km, elevation_km)
    points = _place_point_sources(_rng(seed, _S_POINTS), spec, grids, cities, water_distance_km)
    layout = WorldLayout(cities=tuple(cities), point_sources=tuple(points))

    (
        road_cells,
        road_weights,
        road_edges,
        edge_ends,
    ) = _roads(_rng(seed, _S_ROADS), grids, cities, points)
    road_length = np.bincount(road_cells, minlength=water.size).astype(np.float32)
    road_length = (road_length * 0.025).reshape(shape)  # samples are 25 m apart

    rural_rng = _rng(seed, _S_RURAL)
    n_villages = rural_rng.poisson(water.size * _CELL_KM2 / 8.0)
    village_cells = rural_rng.integers(0, water.size, n_villages)
    villages = np.bincount(
        village_cells, weights=rural_rng.lognormal(0.0, 0.6, n_villages), minlength=water.size
    ).astype(np.float32)
    villages = ndimage.gaussian_filter(villages.reshape(shape), 1.5)
    villages /= max(float(villages.mean()), 1e-12)
    rural_noise = _upsample(_fbm(rural_rng, coarse_shape, 2.6))
    rural_density = (
        120.0 * np.exp(-elevation / 350.0) * np.exp(0.5 * rural_noise) * (0.3 + 0.7 * villages)
    ).astype(np.float32)
    rural_density[water] = 0.0
    allocation_noise = rural_rng.lognormal(-0.06, 0.35, shape).astype(np.float32)

    site_builtup = np.zeros(shape, dtype=np.float32)
    for city in cities:
        for dx, dy, sigma, _ in city.parks:
            px, py = city.x + dx * 1000.0, city.y + dy * 1000.0
            win = _window(xs, ys, px, py, 4.0 * sigma * 1000.0)
            if win is None:
                continue
            rows, cols, ox, oy = win
            patch = 0.85 * np.exp(-(ox**2 + oy**2) / (2.0 * sigma**2))
            site_builtup[rows, cols] = np.maximum(site_builtup[rows, cols], patch)
    point_cells = np.array(
        [_cells(work, np.array([p.x]), np.array([p.y]))[0][0] for p in points], dtype=np.int64
    )
    for cell in point_cells:
        r, c = divmod(int(cell), work.width)
        site_builtup[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = 0.75

    static_fields = _city_fields_for(cities, STATIC_YEAR, xs, ys, shape)
    density = (static_fields.population / _CELL_KM2) + rural_density * 0.99 ** (
        STATIC_YEAR - REFERENCE_YEAR
    )
    builtup = 1.0 - np.exp(-density / 4000.0) + site_builtup
    builtup += 0.2 * np.minimum(road_length / 0.25, 1.0)
    surface_rng = _rng(seed, _S_SURFACE)
    builtup *= surface_rng.lognormal(0.0, 0.12, shape)
    builtup = np.clip(builtup, 0.0, 1.0).astype(np.float32)
    builtup[water] = 0.0

    landcover = np.full(shape, LANDCOVER_CROPLAND, dtype=np.uint8)
    landcover[forest] = LANDCOVER_FOREST
    landcover[((elevation > 850.0) & (texture > 0.7)) | (texture > 2.3)] = LANDCOVER_BARE
    landcover[builtup >= 0.3] = LANDCOVER_URBAN
    landcover[water] = LANDCOVER_WATER

    vegetation = np.select(
        [landcover == LANDCOVER_FOREST, landcover == LANDCOVER_BARE],
        [np.float32(0.78), np.float32(0.12)],
        np.float32(0.58),
    ).astype(np.float32)
    vegetation += 0.05 * texture

    background_rate = np.select(
        [landcover == LANDCOVER_FOREST, landcover == LANDCOVER_BARE], [1.0, 0.6], 4.0
    ).astype(np.float32)
    land_background = background_rate * np.float32(_CELL_KM2)

    return _World(
        seed=seed,
        spec=spec,
        grids=grids,
        layout=layout,
        xs=xs,
        ys=ys,
        water=water,
        elevation=elevation,
        rural_density=rural_density,
        land_background=land_background,
        allocation_noise=allocation_noise,
        road_length=road_length,
        road_cells=road_cells,
        road_weights=road_weights,
        road_edges=road_edges,
        edge_ends=edge_ends,
        site_builtup=site_builtup,
        builtup=builtup,
        landcover=landcover,
        vegetation=vegetation,
        point_cells=point_cells,
    )


def _rivers(
    rng: np.random.Generator,
    spec: SynthSize,
    grids: _Grids,
    xs_km: np.ndarray,
    ys_km: np.ndarray,
    u: np.ndarray,
) -> np.ndarray:
    """Meandering rivers from the inland part of the target area to the sea, widening downstream.

    `u` is the 1 km coast coordinate (larger offshore) at centres `xs_km`, `ys_km`.
    """
    work = grids.work
    mask = np.zeros((work.height, work.width), dtype=bool)
    r_lo, c_lo = grids.row0 // _SUB, grids.col0 // _SUB
    u_target = u[r_lo : r_lo + grids.target.height, c_lo : c_lo + grids.target.width]
    inland_rows, inland_cols = np.nonzero(u_target < np.quantile(u_target, 0.15))
    sea_rows, sea_cols = np.nonzero(u > 0.75)
    if inland_rows.size == 0 or sea_rows.size == 0:
        return mask
    for _ in range(spec.n_rivers):
        i = rng.integers(inland_rows.size)
        j = rng.integers(sea_rows.size)
        start = np.array([xs_km[c_lo + inland_cols[i]], ys_km[r_lo + inland_rows[i]]])
        end = np.array([xs_km[sea_cols[j]], ys_km[sea_rows[j]]])
        line = _meander(rng, start, end, levels=7, roughness=0.18)
        x, y, _ = _sample_line(line, 100.0)
        flat, inside = _cells(work, x, y)
        downstream = np.linspace(0.0, 1.0, x.size)
        half_width = 60.0 + 500.0 * downstream**1.5
        flat, half_width = flat[inside], half_width[inside]
        if flat.size == 0:
            continue
        rows, cols = np.divmod(flat, work.width)
        pad = 4
        r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, work.height)
        c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, work.width)
        centre = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        width_at = np.zeros((r1 - r0, c1 - c0), dtype=np.float64)
        centre[rows - r0, cols - c0] = True
        np.maximum.at(width_at, (rows - r0, cols - c0), half_width)
        distance, (near_r, near_c) = ndimage.distance_transform_edt(~centre, return_indices=True)
        reach = np.maximum(width_at[near_r, near_c], _WORK_RES / 2.0)
        mask[r0:r1, c0:c1] |= distance * _WORK_RES <= reach
    return mask


def _lakes(
    rng: np.random.Generator,
    spec: SynthSize,
    grids: _Grids,
    xs: np.ndarray,
    ys: np.ndarray,
    inland_km: np.ndarray,
    texture: np.ndarray,
    elevation: np.ndarray,
    water: np.ndarray,
) -> np.ndarray:
    """Irregular elliptical lakes on low inland ground; their surface is flat.

    `inland_km` (0 at the coast, 1 far inland) is on the 1 km grid; the rest on the working grid.
    """
    mask = np.zeros(water.shape, dtype=bool)
    left, bottom, right, top = grids.target.bounds
    placed = 0
    for _ in range(200 * spec.n_lakes):
        if placed == spec.n_lakes:
            break
        x = rng.uniform(left + 10_000.0, right - 10_000.0)
        y = rng.uniform(bottom + 10_000.0, top - 10_000.0)
        r = int((ys[0] + _WORK_RES / 2.0 - y) // _WORK_RES)
        c = int((x - xs[0] + _WORK_RES / 2.0) // _WORK_RES)
        if water[r, c] or not 0.1 < inland_km[r // _SUB, c // _SUB] < 0.6:
            continue
        semi_major = rng.uniform(1.5, 5.0)
        semi_minor = semi_major * rng.uniform(0.4, 0.9)
        angle = rng.uniform(0.0, math.pi)
        win = _window(xs, ys, x, y, 1.6 * semi_major * 1000.0)
        if win is None:
            continue
        rows, cols, dx, dy = win
        along = dx * math.cos(angle) + dy * math.sin(angle)
        across = -dx * math.sin(angle) + dy * math.cos(angle)
        radius = np.sqrt((along / semi_major) ** 2 + (across / semi_minor) ** 2)
        lake = radius < 1.0 + 0.25 * texture[rows, cols]
        mask[rows, cols] |= lake
        elevation[rows, cols][lake] = elevation[r, c]
        placed += 1
    return mask


def _place_cities(
    rng: np.random.Generator,
    spec: SynthSize,
    grids: _Grids,
    water_distance_km: np.ndarray,
    elevation_km: np.ndarray,
) -> list[City]:
    """Zipf-sized cities on low dry land, largest first, kept apart from each other."""
    ranks = np.arange(1, spec.n_cities + 1)
    populations = np.sort(spec.largest_city * ranks**-1.05 * rng.lognormal(0.0, 0.15, ranks.size))
    left, bottom, right, top = grids.target.bounds
    work_left, work_bottom, work_right, work_top = grids.work.bounds
    # Cities may lie a little outside the target: their light and people spill into it.
    margin = 8000.0
    x_lo, x_hi = max(left - margin, work_left + 1000.0), min(right + margin, work_right - 1000.0)
    y_lo, y_hi = max(bottom - margin, work_bottom + 1000.0), min(top + margin, work_top - 1000.0)
    km_left = grids.work.transform.c
    km_top = grids.work.transform.f
    cities: list[City] = []
    for population in populations[::-1]:
        scale_km = 2.4 * (population / 1e6) ** 0.35
        for _ in range(400):
            x = rng.uniform(x_lo, x_hi)
            y = rng.uniform(y_lo, y_hi)
            r = int((km_top - y) // TARGET_RES)
            c = int((x - km_left) // TARGET_RES)
            if water_distance_km[r, c] < 1.5:
                continue
            if rng.random() > math.exp(-float(elevation_km[r, c]) / 300.0):
                continue
            if any(
                math.hypot(x - o.x, y - o.y) < 1000.0 * (2.5 * (scale_km + o.scale_km) + 4.0)
                for o in cities
            ):
                continue
            cities.append(_new_city(rng, float(x), float(y), float(population), scale_km))
            break
    return cities


def _new_city(
    rng: np.random.Generator, x: float, y: float, population: float, scale_km: float
) -> City:
    n_sub = int(rng.integers(0, 4 if population > 3e5 else 2))
    subcenters = []
    for _ in range(n_sub):
        distance = rng.uniform(1.5, 3.5) * scale_km
        bearing = rng.uniform(0.0, 2.0 * math.pi)
        share = rng.uniform(0.05, 0.15)
        subcenters.append((distance * math.cos(bearing), distance * math.sin(bearing), share))
    parks = []
    if population > 2e5:
        for _ in range(int(rng.integers(1, 4))):
            distance = rng.uniform(2.5, 4.5) * scale_km
            bearing = rng.uniform(0.0, 2.0 * math.pi)
            sigma = rng.uniform(0.4, 1.0)
            share = rng.uniform(0.05, 0.15)
            parks.append((distance * math.cos(bearing), distance * math.sin(bearing), sigma, share))
    return City(
        x=x,
        y=y,
        population=population,
        growth=float(np.clip(rng.normal(0.02, 0.025), -0.03, 0.07)),
        scale_km=scale_km,
        axis_ratio=rng.uniform(0.55, 1.0),
        angle=rng.uniform(0.0, math.pi),
        per_capita=float(rng.lognormal(math.log(1.0), 0.35)),
        light=float(rng.lognormal(math.log(7.0), 0.3)),
        subcenters=tuple(subcenters),
        parks=tuple(parks),
    )


def _nodata_corner(spec: SynthSize) -> np.ndarray:
    """Mask of the target pixels outside the inventory domain: a staircase of whole coarse
    cells in the north-west corner, so every coarse cell is either fully valid or fully missing."""
    rows, cols = np.indices((spec.height, spec.width))
    return rows // spec.scale + cols // spec.scale < spec.nodata_blocks


def _place_point_sources(
    rng: np.random.Generator,
    spec: SynthSize,
    grids: _Grids,
    cities: list[City],
    water_distance_km: np.ndarray,
) -> list[PointSource]:
    """Plants away from cities, often near water (cooling), inside the target's valid area."""
    emissions = np.sort(np.exp(rng.uniform(math.log(2.5e4), math.log(1.5e5), spec.n_point_sources)))
    left, bottom, right, top = grids.target.bounds
    margin = 5000.0
    km_left = grids.work.transform.c
    km_top = grids.work.transform.f
    cell_x0 = math.ceil((left + margin - km_left) / _WORK_RES)
    cell_x1 = math.floor((right - margin - km_left) / _WORK_RES)
    cell_y0 = math.ceil((km_top - (top - margin)) / _WORK_RES)
    cell_y1 = math.floor((km_top - (bottom + margin)) / _WORK_RES)
    points: list[PointSource] = []
    for index, base in enumerate(emissions[::-1]):
        for _ in range(2000):
            # A working-cell centre, so the source sits in exactly one cell.
            x = km_left + (rng.integers(cell_x0, cell_x1) + 0.5) * _WORK_RES
            y = km_top - (rng.integers(cell_y0, cell_y1) + 0.5) * _WORK_RES
            target_row = int((TARGET_Y0 - y) // TARGET_RES)
            target_col = int((x - TARGET_X0) // TARGET_RES)
            # Keep one coarse cell clear of the target's missing corner.
            if target_row // spec.scale + target_col // spec.scale <= spec.nodata_blocks:
                continue
            distance_water = float(
                water_distance_km[int((km_top - y) // TARGET_RES), int((x - km_left) // TARGET_RES)]
            )
            if distance_water < 1.0:
                continue
            if rng.random() > (0.9 if distance_water < 8.0 else 0.3):
                continue
            if any(
                math.hypot(x - c.x, y - c.y) < 1000.0 * (c.reach_km * 0.7 + 6.0) for c in cities
            ):
                continue
            if any(math.hypot(x - p.x, y - p.y) < 10_000.0 for p in points):
                continue
            first_year, last_year = 1990, 2100
            if index > 0:
                draw = rng.random()
                if draw < 0.25:
                    first_year = int(rng.integers(2015, 2022))
                elif draw < 0.5:
                    last_year = int(rng.integers(2015, 2023))
            points.append(
                PointSource(
                    x=x,
                    y=y,
                    base_emission=float(base),
                    first_year=first_year,
                    last_year=last_year,
                    phase=float(rng.uniform(0.0, 2.0 * math.pi)),
                )
            )
            break
    return points


def _roads(
    rng: np.random.Generator, grids: _Grids, cities: list[City], points: list[PointSource]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Road network: a spanning tree of the cities plus links to near neighbours, and an access
    road from every point source to its nearest city. Traffic follows a gravity model."""
    edges: set[tuple[int, int]] = set()
    n = len(cities)
    if n > 1:
        xy = np.array([[c.x, c.y] for c in cities])
        dist = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
        in_tree = [0]
        best = dist[0].copy()
        parent = np.zeros(n, dtype=np.int64)
        best[0] = np.inf
        for _ in range(n - 1):
            nxt = int(np.argmin(np.where(np.isin(np.arange(n), in_tree), np.inf, best)))
            edges.add((min(nxt, int(parent[nxt])), max(nxt, int(parent[nxt]))))
            in_tree.append(nxt)
            closer = dist[nxt] < best
            best = np.where(closer, dist[nxt], best)
            parent = np.where(closer, nxt, parent)
        for i in range(n):
            for j in np.argsort(dist[i])[1:3]:
                if dist[i, j] < 120_000.0:
                    edges.add((min(i, int(j)), max(i, int(j))))
    links: list[tuple[np.ndarray, np.ndarray, float, int, int]] = []
    for a, b in sorted(edges):
        ca, cb = cities[a], cities[b]
        rate = float(np.clip(2500.0 * math.sqrt(ca.population * cb.population) / 1e6, 150, 6000))
        links.append((np.array([ca.x, ca.y]), np.array([cb.x, cb.y]), rate, a, b))
    for point in points:
        if not cities:
            break
        nearest = min(
            range(n), key=lambda i: math.hypot(cities[i].x - point.x, cities[i].y - point.y)
        )
        city = cities[nearest]
        links.append((np.array([point.x, point.y]), np.array([city.x, city.y]), 60.0, -1, nearest))

    cells, weights, edge_ids, ends = [], [], [], []
    for edge, (start, end, rate, a, b) in enumerate(links):
        line = _meander(rng, start, end, levels=4, roughness=0.1)
        x, y, spacing = _sample_line(line, 25.0)
        flat, inside = _cells(grids.work, x, y)
        cells.append(flat[inside])
        weights.append(np.full(int(inside.sum()), rate * spacing / 1000.0))
        edge_ids.append(np.full(int(inside.sum()), edge, dtype=np.int64))
        ends.append((a, b))
    if not cells:
        empty = np.zeros(0, dtype=np.int64)
        return empty, np.zeros(0), empty, np.zeros((0, 2), dtype=np.int64)
    return (
        np.concatenate(cells),
        np.concatenate(weights),
        np.concatenate(edge_ids),
        np.array(ends, dtype=np.int64),
    )


def _city_fields_for(
    cities: Sequence[City], year: int, xs: np.ndarray, ys: np.ndarray, shape: tuple[int, int]
) -> _CityFields:
    """Population, emission and light source of every city in `year` on the working grid.

    Population decays exponentially from the core; emissions are more concentrated (shorter
    decay) and partly sit in industrial parks where few people live but lights are on.
    """
    population = np.zeros(shape, dtype=np.float32)
    emission = np.zeros(shape, dtype=np.float32)
    light = np.zeros(shape, dtype=np.float32)
    trend = _trend(year)
    for city in cities:
        people = city.population_in(year)
        grow = (people / city.population) ** 0.35
        scale = city.scale_km * grow
        scale_e = 0.7 * scale
        total_emission = city.per_capita * people * trend
        win = _window(xs, ys, city.x, city.y, city.reach_km * grow * 1000.0)
        if win is None:
            continue
        rows, cols, dx, dy = win
        cos_a, sin_a = math.cos(city.angle), math.sin(city.angle)
        along = dx * cos_a + dy * sin_a
        across = (-dx * sin_a + dy * cos_a) / city.axis_ratio
        radius = np.sqrt(along**2 + across**2)
        main_share = 1.0 - sum(share for _, _, share in city.subcenters)
        norm = 2.0 * math.pi * city.axis_ratio
        pop_kernel = main_share * _decay(radius / scale) / (norm * scale**2)
        em_kernel = main_share * _decay(radius / scale_e) / (norm * scale_e**2)
        for ox, oy, share in city.subcenters:
            sub_radius = np.hypot(dx - ox, dy - oy)
            sub_scale, sub_scale_e = 0.45 * scale, 0.45 * scale_e
            pop_kernel += share * _decay(sub_radius / sub_scale) / (2 * math.pi * sub_scale**2)
            em_kernel += share * _decay(sub_radius / sub_scale_e) / (2 * math.pi * sub_scale_e**2)
        park_total = sum(share for _, _, _, share in city.parks)
        em_kernel *= 1.0 - park_total
        park_light = np.zeros_like(radius)
        for ox, oy, sigma, share in city.parks:
            bump = _decay(((dx - ox) ** 2 + (dy - oy) ** 2) / (2.0 * sigma**2))
            em_kernel += share * bump / (2.0 * math.pi * sigma**2)
            park_light += 8.0 * bump
        city_pop = people * pop_kernel * _CELL_KM2
        population[rows, cols] += city_pop.astype(np.float32)
        emission[rows, cols] += (total_emission * em_kernel * _CELL_KM2).astype(np.float32)
        density = city_pop / _CELL_KM2
        light[rows, cols] += (city.light * (density / 1000.0) ** 0.75 + park_light).astype(
            np.float32
        )
    return _CityFields(population=population, emission=emission, light=light)


# ---------------------------------------------------------------------------------------------
# Per-year fields


def _year_fields(world: _World, year: int) -> tuple[_CityFields, np.ndarray]:
    """City fields and rural population (persons per working cell) of `year`."""
    cities = _city_fields_for(world.layout.cities, year, world.xs, world.ys, world.shape)
    rural = world.rural_density * np.float32(_CELL_KM2 * 0.99 ** (year - REFERENCE_YEAR))
    return cities, rural


def _true_emission(
    world: _World, seed: int, year: int, cities: _CityFields, rural: np.ndarray
) -> np.ndarray:
    """The true fine emission field (t CO2 per 1 km pixel) over the whole target extent."""
    rows, cols = world.grids.target_window()
    trend = np.float32(_trend(year))
    # Rural residents emit about 0.8 t each; land use adds a small background.
    work = cities.emission[rows, cols] + trend * (
        0.8 * rural[rows, cols] + world.land_background[rows, cols]
    )
    work *= world.allocation_noise[rows, cols]

    # Traffic grows with the cities a road links; access roads of plants follow the trend.
    # The trailing 1.0 is picked by the -1 end of plant access roads.
    growth = np.array([c.population_in(year) / c.population for c in world.layout.cities] + [1.0])
    ends = world.edge_ends
    edge_factor = np.sqrt(growth[ends[:, 0]] * growth[ends[:, 1]]) * _trend(year)
    road = np.bincount(
        world.road_cells,
        weights=world.road_weights * edge_factor[world.road_edges],
        minlength=world.water.size,
    ).reshape(world.shape)
    work += road[rows, cols].astype(np.float32)

    for point, cell in zip(world.layout.point_sources, world.point_cells, strict=True):
        r, c = divmod(int(cell), world.shape[1])
        work[r - rows.start, c - cols.start] += np.float32(point.emission(year))

    water = world.water[rows, cols]
    work[water] = 0.0
    fine = block_sum(work, _SUB)
    fine[_block_mean(water.astype(np.float32), _SUB) >= 0.5] = 0.0
    rng = _rng(seed, _S_YEAR, year, 1)
    fine *= rng.lognormal(-0.00125, 0.05, fine.shape)
    return fine


def _night_light(
    world: _World, seed: int, year: int, cities: _CityFields, rural: np.ndarray
) -> np.ndarray:
    """VIIRS-like radiance: blooming, saturation, noise, calibration drift; no plants."""
    source = cities.light + 0.25 * (rural / np.float32(_CELL_KM2 * 100.0)) ** 0.75
    source += 0.3 * np.minimum(world.road_length / 0.25, 1.0)
    source[world.water] = 0.0
    half = _block_mean(source, 2).astype(np.float32)
    # Blooming at 500 m: a sharp glow plus a wide halo, both mass-preserving.
    bloom = 0.7 * ndimage.gaussian_filter(half, 2.0) + 0.3 * ndimage.gaussian_filter(half, 7.0)
    grid = world.grids.ntl
    half_transform = _coarsened(world.grids.work.transform, 2)
    radiance = _reproject(bloom, half_transform, grid, Resampling.average, FLOAT_NODATA)
    rng = _rng(seed, _S_YEAR, year, 2)
    drift = np.float32(1.0 + rng.normal(0.0, 0.03))
    radiance *= drift * np.exp(np.float32(0.1) * _normal(rng, radiance.shape))
    radiance += np.float32(0.15) + np.float32(0.12) * _normal(rng, radiance.shape)
    return _quantize(np.clip(radiance, 0.0, _NTL_CAP), 1.0 / 32.0)


def _ndvi(
    world: _World, seed: int, year: int, cities: _CityFields, rural: np.ndarray
) -> np.ndarray:
    """Annual NDVI: vegetation thinned by built-up land, a yearly anomaly and cloud gaps."""
    rng = _rng(seed, _S_YEAR, year, 3)
    density = (cities.population + rural) / np.float32(_CELL_KM2)
    builtup = np.clip(1.0 - np.exp(-density / 4000.0) + world.site_builtup, 0.0, 1.0)
    coarse_shape = (world.shape[0] // _SUB, world.shape[1] // _SUB)
    anomaly = rng.normal(0.0, 0.02) + 0.025 * _upsample(_fbm(rng, coarse_shape, 2.5))
    ndvi = world.vegetation * (1.0 - builtup) + 0.1 * builtup + anomaly
    ndvi = np.where(world.water, -0.12 + 0.3 * anomaly, ndvi).astype(np.float32)
    grid = world.grids.ndvi
    out = _reproject(ndvi, world.grids.work.transform, grid, Resampling.bilinear, NDVI_NODATA)
    # 1/64 steps: the precision of the product, and it keeps the files small.
    out = _quantize(out, 1.0 / 64.0)
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


def _population_counts(world: _World, cities: _CityFields, rural: np.ndarray) -> np.ndarray:
    """Persons per geographic cell: density resampled, times each cell's area."""
    density = (cities.population + rural) / np.float32(_CELL_KM2)
    grid = world.grids.population
    out = _reproject(density, world.grids.work.transform, grid, Resampling.average, FLOAT_NODATA)
    valid = out != FLOAT_NODATA
    counts = np.where(valid, out * _geographic_cell_area_km2(grid)[:, None], out)
    return np.where(valid, _quantize(counts, 1.0 / 4.0), counts).astype(np.float32)


def _geographic_cell_area_km2(grid: Grid) -> np.ndarray:
    """Area of the cells of each row of a lon/lat grid on the authalic sphere (km2)."""
    res = grid.transform.a
    top = grid.transform.f
    lat_top = np.radians(top - np.arange(grid.height) * res)
    lat_bottom = np.radians(top - (np.arange(grid.height) + 1) * res)
    return _EARTH_RADIUS_KM**2 * math.radians(res) * (np.sin(lat_top) - np.sin(lat_bottom))


def _reproject(
    source: np.ndarray,
    source_transform: Affine,
    grid: Grid,
    resampling: Resampling,
    nodata: float,
) -> np.ndarray:
    dtype = source.dtype
    out = np.full((grid.height, grid.width), nodata, dtype=dtype)
    reproject(
        source=source,
        destination=out,
        src_transform=source_transform,
        src_crs=TARGET_CRS,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        dst_nodata=nodata,
        resampling=resampling,
        num_threads=2,
    )
    return out


# ---------------------------------------------------------------------------------------------
# Writing


def _write_static(world: _World, aux_dir: Path) -> None:
    grids = world.grids
    work_transform = grids.work.transform

    # Mapped roads plus local streets, about 10 km/km2 in fully built-up land.
    density = world.road_length / np.float32(_CELL_KM2) + 10.0 * world.builtup
    roads = _reproject(
        density.astype(np.float32), work_transform, grids.roads, Resampling.average, FLOAT_NODATA
    )
    _write_raster(
        aux_dir / "roads.tif",
        _quantize(roads, 1.0 / 64.0),
        grids.roads,
        nodata=FLOAT_NODATA,
        units="km/km2",
        description="road density",
    )

    water = _reproject(
        world.water.astype(np.uint8),
        work_transform,
        grids.water,
        Resampling.nearest,
        CLASS_NODATA,
    )
    _write_raster(
        aux_dir / "water.tif",
        water,
        grids.water,
        nodata=CLASS_NODATA,
        units="class",
        description="water mask (1 water, 0 land)",
    )

    builtup = _reproject(
        world.builtup, work_transform, grids.builtup, Resampling.average, FLOAT_NODATA
    )
    _write_raster(
        aux_dir / "builtup.tif",
        _quantize(builtup, 1.0 / 1024.0),
        grids.builtup,
        nodata=FLOAT_NODATA,
        units="fraction",
        description="built-up share",
    )

    elevation = _reproject(
        world.elevation, work_transform, grids.elevation, Resampling.average, FLOAT_NODATA
    )
    dem = np.where(elevation == FLOAT_NODATA, ELEVATION_NODATA, np.round(elevation))
    dem = dem.astype(np.int16)
    _add_dem_voids(_rng(world.seed, _S_SURFACE, 1), world.spec.n_dem_voids, dem)
    _write_raster(
        aux_dir / "elevation.tif",
        dem,
        grids.elevation,
        nodata=ELEVATION_NODATA,
        units="m",
        description="elevation above sea level",
    )

    landcover = _reproject(
        world.landcover, work_transform, grids.landcover, Resampling.nearest, CLASS_NODATA
    )
    _write_raster(
        aux_dir / "landcover.tif",
        landcover,
        grids.landcover,
        nodata=CLASS_NODATA,
        units="class",
        description="land cover (1 urban, 2 cropland, 3 forest, 4 water, 5 bare)",
    )

    has_road = block_sum(world.road_length, 2) > 0
    distance = ndimage.distance_transform_edt(~has_road).astype(np.float32) * 0.5
    half_transform = _coarsened(work_transform, 2)
    dist_roads = _reproject(
        distance, half_transform, grids.dist_roads, Resampling.average, FLOAT_NODATA
    )
    _write_raster(
        aux_dir / "dist_roads.tif",
        _quantize(dist_roads, 1.0 / 64.0),
        grids.dist_roads,
        nodata=FLOAT_NODATA,
        units="km",
        description="distance to the nearest road",
    )


def _add_dem_voids(rng: np.random.Generator, count: int, dem: np.ndarray) -> None:
    """Small void patches on high ground, as in radar-derived elevation models."""
    rows, cols = np.nonzero(dem > 300)
    if rows.size == 0:
        rows, cols = np.nonzero(dem != ELEVATION_NODATA)
    for _ in range(count):
        i = int(rng.integers(rows.size))
        height, width = (int(v) for v in rng.integers(2, 5, 2))
        dem[rows[i] : rows[i] + height, cols[i] : cols[i] + width] = ELEVATION_NODATA


def _write_year(world: _World, seed: int, year: int, out_dir: Path) -> None:
    grids = world.grids
    spec = world.spec
    cities, rural = _year_fields(world, year)

    fine = _true_emission(world, seed, year, cities, rural)
    coarse = block_sum(fine, spec.scale)
    rng = _rng(seed, _S_YEAR, year, 4)
    # Inventory error: a few percent per cell, mean-preserving.
    coarse *= rng.lognormal(-(0.03**2) / 2.0, 0.03, coarse.shape)
    target = fine.astype(np.float32)
    target[_nodata_corner(spec)] = TARGET_NODATA
    emission_units = "t CO2 / cell / yr"
    _write_raster(
        out_dir / "emissions" / f"co2_{year}.tif",
        target,
        grids.target,
        nodata=TARGET_NODATA,
        units=emission_units,
        description=f"CO2 emissions {year}",
    )
    _write_raster(
        out_dir / "coarse" / f"edgar_like_{year}.tif",
        coarse.astype(np.float32),
        grids.coarse,
        nodata=FLOAT_NODATA,
        units=emission_units,
        description=f"coarse CO2 emission inventory {year}",
    )

    aux_dir = out_dir / "aux"
    _write_raster(
        aux_dir / f"ntl_{year}.tif",
        _night_light(world, seed, year, cities, rural),
        grids.ntl,
        nodata=FLOAT_NODATA,
        units="nW/cm2/sr",
        description=f"night-time light radiance {year}",
    )
    _write_raster(
        aux_dir / f"ndvi_{year}.tif",
        _ndvi(world, seed, year, cities, rural),
        grids.ndvi,
        nodata=NDVI_NODATA,
        units="1",
        description=f"annual NDVI {year}",
    )
    _write_raster(
        aux_dir / f"population_{year}.tif",
        _population_counts(world, cities, rural),
        grids.population,
        nodata=FLOAT_NODATA,
        units="persons/cell",
        description=f"population count {year}",
    )


def _block_size(height: int, width: int) -> int | None:
    for block in (256, 128):
        if height >= block and width >= block:
            return block
    return None


def _write_raster(
    path: Path, data: np.ndarray, grid: Grid, *, nodata: float, units: str, description: str
) -> None:
    """Write one band as a deflate-compressed GeoTIFF under a temporary name, then rename."""
    floating = np.issubdtype(data.dtype, np.floating)
    profile: dict[str, object] = {
        "driver": "GTiff",
        "height": grid.height,
        "width": grid.width,
        "count": 1,
        "dtype": data.dtype.name,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "compress": "deflate",
        "predictor": 3 if floating else 2,
        "zlevel": 3,
    }
    block = _block_size(grid.height, grid.width)
    if block is not None:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    partial = path.with_name(f".{path.name}.partial")
    with rasterio.open(partial, "w", **profile) as dst:
        dst.write(data, 1)
        dst.set_band_description(1, description)
        dst.update_tags(units=units)
        dst.update_tags(1, units=units)
    os.replace(partial, path)


def _write_text_atomic(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


_AUX_ENTRIES: tuple[tuple[str, str, str, str, str], ...] = (
    ("ntl", "aux/ntl_{year}.tif", "intensive", "log1p", "nW/cm2/sr"),
    ("roads", "aux/roads.tif", "intensive", "log1p", "km/km2"),
    ("water", "aux/water.tif", "categorical", "none", "class"),
    ("ndvi", "aux/ndvi_{year}.tif", "intensive", "none", "1"),
    ("population", "aux/population_{year}.tif", "extensive", "log1p", "persons/cell"),
    ("builtup", "aux/builtup.tif", "intensive", "none", "fraction"),
    ("elevation", "aux/elevation.tif", "intensive", "none", "m"),
    ("landcover", "aux/landcover.tif", "categorical", "none", "class"),
    ("dist_roads", "aux/dist_roads.tif", "intensive", "log1p", "km"),
)


def _years_value(years: list[int]) -> str:
    if len(years) > 1 and years == list(range(years[0], years[-1] + 1)):
        return f'"{years[0]}-{years[-1]}"'
    return "[" + ", ".join(str(y) for y in years) + "]"


def _config_text(spec: SynthSize, years: list[int]) -> str:
    lines = [
        'workdir = "runs"',
        f"years = {_years_value(years)}",
        "",
        "[grid]",
        f"tile_size = {spec.tile_size}",
        f"scale = {spec.scale}",
        "",
        "[target]",
        'path = "emissions/co2_{year}.tif"',
        'kind = "extensive"',
        'units = "t CO2 / cell / yr"',
        "",
        "[coarse]",
        'path = "coarse/edgar_like_{year}.tif"',
    ]
    for name, path, kind, transform, units in _AUX_ENTRIES:
        lines += [
            "",
            "[[aux]]",
            f'name = "{name}"',
            f'path = "{path}"',
            f'kind = "{kind}"',
            f'transform = "{transform}"',
            f'units = "{units}"',
        ]
    lines += [
        "",
        "[split]",
        "ratios = [0.8, 0.1, 0.1]",
        f"block_tiles = {spec.block_tiles}",
        "buffer_tiles = 1",
        "min_valid_fraction = 0.5",
        "seed = 0",
        "",
        "[model]",
        f"dim = {spec.model_dim}",
        f"depth = {spec.model_depth}",
        "",
        "[train]",
        f"epochs = {spec.epochs}",
        f"batch_size = {spec.batch_size}",
        "lr = 2e-3",
        "num_workers = 0",
        "",
        "[mosaic]",
        f"overlap = {spec.overlap}",
        "",
    ]
    return "\n".join(lines)
