"""Global and antimeridian sources: only the part of a source that can touch the grid is projected.

A global inventory (EDGAR-style, 0.1 degree on EPSG:4326) holds valid zeros on every continent;
projecting all of them into a regional UTM zone fails in PROJ. Grids that cross the antimeridian
(UTM zone 60 around 180 degrees) must accept geographic sources on -180..180 and on 0..360
longitudes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from conftest import UTM50, WGS84, utm_transform, write_raster

from carbongeo.grid import Grid, Window
from carbongeo.io.sources import RasterSource, align_window, source_total, validate_source

UTM60 = "EPSG:32660"


def _align(source: RasterSource, grid: Grid) -> np.ndarray:
    info = validate_source(source, grid)
    return align_window(source, info, grid, Window(0, 0, grid.height, grid.width))


def _global_inventory(path: Path, cells: dict[tuple[float, float], float]) -> Path:
    """A 3600 x 1800 EPSG:4326 raster (nodata -9999): valid zeros and a few cells of mass."""
    values = np.zeros((1800, 3600), dtype=np.float32)
    values[:30, :] = -9999.0  # a nodata cap over the pole, as some products have
    for (lon, lat), mass in cells.items():
        values[int((90 - lat) / 0.1), int((lon + 180) / 0.1)] = mass
    transform = Affine(0.1, 0, -180, 0, -0.1, 90)
    return write_raster(path, values, WGS84, transform, nodata=-9999.0, tiled=True)


def test_global_tenth_degree_inventory_on_a_utm_grid(tmp_path: Path) -> None:
    # Cells near 117.05 E, 29.95 N lie inside a UTM 50N grid; the one in Europe is far outside.
    path = _global_inventory(
        tmp_path / "edgar.tif",
        {(117.05, 29.95): 1000.0, (117.35, 29.75): 250.0, (10.05, 50.05): 7.0},
    )
    source = RasterSource("coarse", str(path), "extensive", key="coarse.path")
    grid = Grid(UTM50, utm_transform(480_000.0, 3_330_000.0, 8000.0), 16, 16, tile_size=16, scale=1)
    info = validate_source(source, grid)
    assert not info.complete
    assert source_total(source, info, grid.bounds) == pytest.approx(1250.0, rel=1e-9)
    aligned = _align(source, grid)
    assert float(np.nansum(aligned, dtype=np.float64)) == pytest.approx(1250.0, rel=1e-6)
    assert np.isfinite(aligned).all()  # valid zeros around the cells are data, not nodata


# --------------------------------------------------------------------------- the antimeridian
# UTM 60N, 256 x 128 km around 52 N: longitudes 178.1 E to 178.1 W (181.9 on 0..360).
ANTI_GRID = Grid(UTM60, Affine(1000.0, 0, 578_000.0, 0, -1000.0, 5_828_000.0), 128, 256, 64, 8)


def _longitudes(grid: Grid) -> np.ndarray:
    """Longitude (-180..180) of every pixel centre of ``grid``."""
    from rasterio.warp import transform

    cols, rows = np.meshgrid(np.arange(grid.width) + 0.5, np.arange(grid.height) + 0.5)
    xs, ys = grid.transform @ (cols.ravel(), rows.ravel())
    lon, _ = transform(UTM60, WGS84, xs, ys)
    return np.asarray(lon).reshape(grid.height, grid.width)


@pytest.mark.parametrize("west", [-180.0, 0.0], ids=["minus180-180", "0-360"])
def test_global_intensive_source_covers_a_grid_across_the_antimeridian(
    tmp_path: Path, west: float
) -> None:
    lon = west + 0.1 * (np.arange(3600) + 0.5)
    values = np.tile(np.cos(np.radians(lon)) + 2.0, (1800, 1)).astype(np.float32)
    path = write_raster(tmp_path / "aux.tif", values, WGS84, Affine(0.1, 0, west, 0, -0.1, 90))
    source = RasterSource("aux", str(path), "intensive")
    aligned = _align(source, ANTI_GRID)
    assert np.isfinite(aligned).all()  # not 73 % nodata on one side of 180 degrees
    expected = np.cos(np.radians(_longitudes(ANTI_GRID))) + 2.0
    np.testing.assert_allclose(aligned, expected, atol=2e-4)


@pytest.mark.parametrize(("west", "covered"), [(170.0, "all"), (-180.0, "east"), (175.0, "west")])
def test_regional_geographic_source_meets_the_grid_in_either_spelling(
    tmp_path: Path, west: float, covered: str
) -> None:
    """170..190 (0..360 spelling) covers it all; -180..-170 its east; 175..180 its west."""
    width = 400 if west == 170.0 else 100
    lon = west + 0.05 * (np.arange(width) + 0.5)
    values = np.tile(np.where(lon > 180, lon - 360, lon), (200, 1)).astype(np.float32)
    path = write_raster(tmp_path / "aux.tif", values, WGS84, Affine(0.05, 0, west, 0, -0.05, 57))
    aligned = _align(RasterSource("aux", str(path), "intensive"), ANTI_GRID)
    lon_grid = _longitudes(ANTI_GRID)
    inside = {"all": np.ones_like(lon_grid, bool), "east": lon_grid < 0, "west": lon_grid > 0}
    edge = np.abs(np.abs(lon_grid) - 180) < 0.1  # the source edge itself: either way
    want = inside[covered]
    assert np.isfinite(aligned[want & ~edge]).all()
    assert np.isnan(aligned[~want & ~edge]).all()
    np.testing.assert_allclose(aligned[want & ~edge], lon_grid[want & ~edge], atol=0.05)


@pytest.mark.parametrize("west", [-180.0, 0.0], ids=["minus180-180", "0-360"])
def test_global_extensive_source_keeps_its_mass_across_the_antimeridian(
    tmp_path: Path, west: float
) -> None:
    # One cell of mass on each side of 180 degrees, well inside the grid.
    cells = {(179.55, 52.05): 300.0, (-179.65, 51.85): 500.0}
    values = np.zeros((1800, 3600), dtype=np.float32)
    for (lon, lat), mass in cells.items():
        values[int((90 - lat) / 0.1), int(((lon - west) % 360) / 0.1)] = mass
    path = write_raster(tmp_path / "edgar.tif", values, WGS84, Affine(0.1, 0, west, 0, -0.1, 90))
    source = RasterSource("coarse", str(path), "extensive")
    info = validate_source(source, ANTI_GRID)
    assert source_total(source, info, ANTI_GRID.bounds) == pytest.approx(800.0, rel=1e-9)
    aligned = _align(source, ANTI_GRID)
    assert float(np.nansum(aligned, dtype=np.float64)) == pytest.approx(800.0, rel=1e-6)
    east = _longitudes(ANTI_GRID) < 0
    assert float(np.nansum(aligned[east], dtype=np.float64)) == pytest.approx(500.0, rel=1e-3)
