"""The grids of the synthetic world: the 250 m working grid and the grid of every output.

Every layer is computed on the working grid, in the target's UTM CRS, which covers every output
grid and is aligned to the target's 1 km pixels; an output is then derived from it by block sums
(the target) or :func:`to_grid` (the auxiliary rasters, in their own CRSs and resolutions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rasterio.transform import Affine
from rasterio.warp import Resampling, reproject, transform_bounds

from carbongeo.grid import Grid
from carbongeo.synth.sizes import SynthSize

TARGET_CRS = "EPSG:32650"
TARGET_RES = 1000.0
TARGET_X0 = 300000.0
TARGET_Y0 = 3012000.0

WORK_RES = 250.0
# Working cells per target pixel side.
SUB = int(TARGET_RES / WORK_RES)
CELL_KM2 = (WORK_RES / 1000.0) ** 2
# The auxiliary rasters reach this far beyond the target, as real products do.
_AUX_PAD_M = 4000.0


@dataclass(frozen=True)
class WorldGrids:
    """The target, coarse and working grids and the grid of each auxiliary raster.

    Attributes:
        row0: Row of the target's top-left pixel on the working grid.
        col0: Column of the target's top-left pixel on the working grid.
    """

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
    row0: int
    col0: int

    def target_window(self) -> tuple[slice, slice]:
        """The working cells of the target extent."""
        rows = slice(self.row0, self.row0 + self.target.height * SUB)
        cols = slice(self.col0, self.col0 + self.target.width * SUB)
        return rows, cols

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Eastings of the working-cell columns and northings of its rows (m)."""
        work = self.work
        xs = work.transform.c + (np.arange(work.width) + 0.5) * WORK_RES
        ys = work.transform.f - (np.arange(work.height) + 0.5) * WORK_RES
        return xs, ys


def snapped_grid(
    crs: str, bounds: tuple[float, float, float, float], res: float, offset: float = 0.0
) -> Grid:
    """Smallest grid of pixel size `res` (origin at `offset` modulo res) covering `bounds`."""
    left = math.floor((bounds[0] - offset) / res)
    bottom = math.floor((bounds[1] - offset) / res)
    right = math.ceil((bounds[2] - offset) / res)
    top = math.ceil((bounds[3] - offset) / res)
    transform = Affine(res, 0.0, left * res + offset, 0.0, -res, top * res + offset)
    return Grid(crs, transform, top - bottom, right - left)


def make_grids(spec: SynthSize) -> WorldGrids:
    """Every grid of a world of size `spec`."""
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
        "ntl": snapped_grid("EPSG:4326", geographic, 1.0 / 240.0),
        "roads": snapped_grid(TARGET_CRS, padded, 500.0),
        "water": snapped_grid(TARGET_CRS, padded, 250.0),
        "ndvi": snapped_grid("EPSG:3857", mercator, 250.0),
        "population": snapped_grid("EPSG:4326", geographic, 0.005),
        "builtup": snapped_grid(TARGET_CRS, padded, 1000.0, offset=500.0),
        "elevation": snapped_grid("EPSG:4326", geographic, 1.0 / 120.0),
        "landcover": snapped_grid(TARGET_CRS, padded, 300.0),
        "dist_roads": snapped_grid(TARGET_CRS, padded, 1000.0),
    }
    # The working grid covers every output grid, aligned to the target's 1 km pixels.
    xmin, ymin, xmax, ymax = target.bounds
    for grid in aux.values():
        b = transform_bounds(grid.crs, TARGET_CRS, *grid.bounds, densify_pts=21)
        xmin, ymin = min(xmin, b[0]), min(ymin, b[1])
        xmax, ymax = max(xmax, b[2]), max(ymax, b[3])
    margin = 2.0 * TARGET_RES
    work_km = snapped_grid(
        TARGET_CRS, (xmin - margin, ymin - margin, xmax + margin, ymax + margin), TARGET_RES
    )
    work = Grid(
        TARGET_CRS,
        Affine(WORK_RES, 0.0, work_km.transform.c, 0.0, -WORK_RES, work_km.transform.f),
        work_km.height * SUB,
        work_km.width * SUB,
    )
    row0 = round((work.transform.f - TARGET_Y0) / WORK_RES)
    col0 = round((TARGET_X0 - work.transform.c) / WORK_RES)
    return WorldGrids(target=target, coarse=coarse, work=work, row0=row0, col0=col0, **aux)


def coarsened(transform: Affine, factor: int) -> Affine:
    """Transform of a north-up grid whose pixels are `factor` times larger, same origin."""
    return Affine(transform.a * factor, 0.0, transform.c, 0.0, transform.e * factor, transform.f)


def around(
    xs: np.ndarray, ys: np.ndarray, x: float, y: float, radius_m: float
) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """Working-grid window around (x, y) with cell-centre offsets in km, or None if outside.

    Args:
        xs: Eastings of the working-cell columns.
        ys: Northings of the working-cell rows.
        x: Easting of the centre (m).
        y: Northing of the centre (m).
        radius_m: Half side of the window (m).

    Returns:
        Row and column slices, and the offsets ``dx [1, w]`` and ``dy [h, 1]`` of the window's
        cell centres from (x, y) in km.
    """
    left = xs[0] - WORK_RES / 2.0
    top = ys[0] + WORK_RES / 2.0
    c0 = max(0, math.floor((x - radius_m - left) / WORK_RES))
    c1 = min(xs.size, math.ceil((x + radius_m - left) / WORK_RES))
    r0 = max(0, math.floor((top - (y + radius_m)) / WORK_RES))
    r1 = min(ys.size, math.ceil((top - (y - radius_m)) / WORK_RES))
    if c0 >= c1 or r0 >= r1:
        return None
    dx = ((xs[c0:c1] - x) / 1000.0)[None, :]
    dy = ((ys[r0:r1] - y) / 1000.0)[:, None]
    return slice(r0, r1), slice(c0, c1), dx, dy


def cells(grid: Grid, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat working-cell indices of points and a mask of those inside the grid."""
    cols = np.floor((x - grid.transform.c) / WORK_RES).astype(np.int64)
    rows = np.floor((grid.transform.f - y) / WORK_RES).astype(np.int64)
    inside = (rows >= 0) & (rows < grid.height) & (cols >= 0) & (cols < grid.width)
    return rows * grid.width + cols, inside


def to_grid(
    source: np.ndarray,
    source_transform: Affine,
    grid: Grid,
    resampling: Resampling,
    nodata: float,
) -> np.ndarray:
    """Resample a field in the target CRS onto an output grid; uncovered pixels are `nodata`."""
    out = np.full((grid.height, grid.width), nodata, dtype=source.dtype)
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
