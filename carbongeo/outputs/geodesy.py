"""Where grid pixels lie on the ellipsoid: their true areas (m2) and centre longitudes/latitudes.

A pixel's nominal area (``res_x * res_y``) is not its area on the Earth: a UTM pixel is up to
about 0.1 % off within its zone, a Web-Mercator pixel by ``1 / cos(lat)^2``, and a degree pixel
has no fixed area at all. Densities and fluxes need the true area, and so does anyone who turns
them back into totals.

Method: the pixel corners are projected from the grid's CRS into Lambert's cylindrical equal-area
projection on the same ellipsoid (central meridian at the scene centre), and a pixel's area is the
area of the quadrilateral of its four projected corners. An equal-area projection keeps every
area exactly, so the only approximation is drawing the pixel's edges as straight lines between
its projected corners; the tests compare the result with the geodesic area of the same corners
(:meth:`pyproj.Geod.polygon_area_perimeter`). The quadrilateral's area is taken from its
diagonals, whose coordinates are differences of nearby points, so the float64 cancellation of a
shoelace formula on coordinates of ~1e7 m does not occur even for 10 m pixels.

Pure computation: no file is read or written.
"""

from __future__ import annotations

import functools

import numpy as np
from pyproj import CRS, Transformer
from pyproj.crs import ProjectedCRS
from pyproj.crs.coordinate_operation import LambertCylindricalEqualAreaConversion

from carbongeo.grid import Grid, Window


@functools.lru_cache(maxsize=16)
def _to_equal_area(grid: Grid) -> Transformer:
    crs = CRS.from_user_input(grid.crs)
    geodetic = crs.geodetic_crs
    if geodetic is None:  # pragma: no cover - every CRS rasterio writes has one
        raise ValueError(f"the grid's CRS has no ellipsoid: {crs.name}")
    x, y = grid.xy(grid.height / 2, grid.width / 2, offset="corner")
    lon0, _ = Transformer.from_crs(crs, geodetic, always_xy=True).transform(x, y)
    equal_area = ProjectedCRS(
        conversion=LambertCylindricalEqualAreaConversion(
            latitude_first_parallel=0.0, longitude_natural_origin=float(lon0)
        ),
        geodetic_crs=geodetic,
    )
    return Transformer.from_crs(crs, equal_area, always_xy=True)


def pixel_areas(grid: Grid, window: Window | None = None) -> np.ndarray:
    """The area on the ellipsoid of every pixel of ``window`` (default: the whole scene).

    Args:
        grid: The grid; its CRS defines the ellipsoid.
        window: Pixels to measure, in grid rows and columns (may extend past the scene).

    Returns:
        float64 ``[window.height, window.width]`` areas in m2.
    """
    window = window or Window(0, 0, grid.height, grid.width)
    cols = window.col + np.arange(window.width + 1, dtype=np.float64)
    rows = window.row + np.arange(window.height + 1, dtype=np.float64)
    a, _, c, _, e, f = grid.transform[:6]
    xs, ys = np.meshgrid(c + a * cols, f + e * rows)
    ex, ey = _to_equal_area(grid).transform(xs, ys)
    ex, ey = np.asarray(ex), np.asarray(ey)
    # Diagonals of each pixel: upper-left -> lower-right and upper-right -> lower-left.
    d1x, d1y = ex[1:, 1:] - ex[:-1, :-1], ey[1:, 1:] - ey[:-1, :-1]
    d2x, d2y = ex[1:, :-1] - ex[:-1, 1:], ey[1:, :-1] - ey[:-1, 1:]
    return 0.5 * np.abs(d1x * d2y - d1y * d2x)


def geodetic_centres(grid: Grid, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (degrees, on the grid's own datum) of the pixel centres.

    Args:
        grid: The grid.
        window: Pixels, in grid rows and columns (default: the whole scene).

    Returns:
        float64 ``(lon, lat)``, each ``[window.height, window.width]``.
    """
    window = window or Window(0, 0, grid.height, grid.width)
    a, _, c, _, e, f = grid.transform[:6]
    xs = c + a * (window.col + 0.5 + np.arange(window.width, dtype=np.float64))
    ys = f + e * (window.row + 0.5 + np.arange(window.height, dtype=np.float64))
    lon, lat = _to_geodetic(grid).transform(*np.meshgrid(xs, ys))
    return np.asarray(lon), np.asarray(lat)


@functools.lru_cache(maxsize=16)
def _to_geodetic(grid: Grid) -> Transformer:
    crs = CRS.from_user_input(grid.crs)
    return Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
