"""Tests of the true pixel areas and centre coordinates, against independent geodesic formulas."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from pyproj import Geod, Transformer

from carbongeo.grid import Grid, Window
from carbongeo.outputs.geodesy import geodetic_centres, pixel_areas

WGS84 = Geod(ellps="WGS84")


def _geodesic_area(grid: Grid, row: int, col: int) -> float:
    """Area of the geodesic polygon through the pixel's four corners (pyproj.Geod)."""
    to_lonlat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    corners = [(col, row), (col + 1, row), (col + 1, row + 1), (col, row + 1)]
    xy = [grid.transform @ c for c in corners]
    lon, lat = to_lonlat.transform([p[0] for p in xy], [p[1] for p in xy])
    area, _ = WGS84.polygon_area_perimeter(lon, lat)
    return abs(area)


def _zone_area(lat1: float, lat2: float, dlon: float) -> float:
    """Exact area of a latitude-longitude rectangle on the WGS 84 ellipsoid (authalic formula)."""
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    e = np.sqrt(e2)

    def q(lat: float) -> float:
        s = np.sin(np.radians(lat))
        return s / (1 - e2 * s * s) - np.log((1 - e * s) / (1 + e * s)) / (2 * e)

    return abs(np.radians(dlon) * a * a * (1 - e2) / 2 * (q(lat2) - q(lat1)))


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        ("EPSG:32650", Affine(1000.0, 0, 300000.0, 0, -1000.0, 3012000.0)),  # UTM, 1 km
        ("EPSG:32650", Affine(30.0, 0, 700000.0, 0, -30.0, 5500000.0)),  # UTM, 30 m, far east
        ("EPSG:3857", Affine(5000.0, 0, 1.0e6, 0, -5000.0, 7.0e6)),  # Web Mercator at ~53 N
        ("EPSG:3035", Affine(100.0, 0, 4.3e6, 0, -100.0, 3.2e6)),  # LAEA Europe (equal-area)
    ],
)
def test_pixel_areas_match_the_geodesic_polygon_of_the_corners(crs: str, transform: Affine) -> None:
    grid = Grid(crs, transform, 30, 40, tile_size=8, scale=4)
    areas = pixel_areas(grid)
    assert areas.shape == (30, 40) and areas.dtype == np.float64
    for row, col in [(0, 0), (29, 39), (13, 7), (0, 39)]:
        # measured: 1e-9 (UTM) to 5e-8 (5 km Web-Mercator pixels)
        assert areas[row, col] == pytest.approx(_geodesic_area(grid, row, col), rel=1e-7)


def test_equal_area_projection_pixels_have_their_nominal_area() -> None:
    grid = Grid("EPSG:3035", Affine(100.0, 0, 4.3e6, 0, -100.0, 3.2e6), 5, 6)
    np.testing.assert_allclose(pixel_areas(grid), 100.0 * 100.0, rtol=1e-9)


def test_degree_pixels_match_the_exact_ellipsoidal_zone_area() -> None:
    res = 0.25
    grid = Grid("EPSG:4326", Affine(res, 0, 100.0, 0, -res, 60.0), 8, 3, tile_size=4, scale=2)
    areas = pixel_areas(grid)
    for row in range(8):
        lat_top = 60.0 - res * row
        expected = _zone_area(lat_top - res, lat_top, res)
        np.testing.assert_allclose(areas[row], expected, rtol=1e-9)
    assert areas[-1, 0] > areas[0, 0]  # pixels grow towards the equator


def test_a_window_equals_the_same_pixels_of_the_whole_scene() -> None:
    grid = Grid("EPSG:32650", Affine(1000.0, 0, 300000.0, 0, -1000.0, 3012000.0), 20, 30)
    whole = pixel_areas(grid)
    part = pixel_areas(grid, Window(5, 7, 6, 11))
    np.testing.assert_allclose(part, whole[5:11, 7:18], rtol=1e-12)


def test_geodetic_centres_are_the_pixel_centres_in_lon_lat() -> None:
    grid = Grid("EPSG:32650", Affine(1000.0, 0, 300000.0, 0, -1000.0, 3012000.0), 4, 5)
    lon, lat = geodetic_centres(grid)
    x, y = grid.xy(2, 3)
    want = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True).transform(x, y)
    assert (lon[2, 3], lat[2, 3]) == pytest.approx(want, abs=1e-12)
