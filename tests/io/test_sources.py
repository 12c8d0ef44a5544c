"""Alignment of single sources onto a grid: totals, nodata, resampling kinds, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from conftest import UTM50, WGS84, utm_transform, write_netcdf, write_raster
from rasterio.enums import Resampling
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds

from carbongeo.errors import InputDataError
from carbongeo.grid import Grid, Window
from carbongeo.io.sources import (
    RasterSource,
    align_window,
    describe_source,
    resampling_for,
    source_total,
    validate_source,
)


def _align(source: RasterSource, grid: Grid, block: int | None = None) -> np.ndarray:
    """Align a source over the whole (unpadded) grid, block by block when ``block`` is given."""
    info = validate_source(source, grid)
    if block is None:
        return align_window(source, info, grid, Window(0, 0, grid.height, grid.width))
    out = np.full((grid.height, grid.width), np.nan, dtype=np.float32)
    for row in range(0, grid.height, block):
        for col in range(0, grid.width, block):
            win = Window(row, col, block, block).clip(grid.height, grid.width)
            out[win.slices()] = align_window(source, info, grid, win)
    return out


def _utm_grid_around(bounds_4326: tuple[float, float, float, float], res: float) -> Grid:
    """A UTM 50N grid covering a lon/lat box with a margin, at ``res`` metres."""
    xmin, ymin, xmax, ymax = transform_bounds(WGS84, UTM50, *bounds_4326, densify_pts=50)
    margin = 3 * res
    return Grid.from_bounds(
        UTM50, res, (xmin - margin, ymin - margin, xmax + margin, ymax + margin), tile_size=16
    )


def _rel(a: float, b: float) -> float:
    return abs(a / b - 1.0)


# --------------------------------------------------------------------------- totals
@pytest.mark.parametrize("res", [1000.0, 2500.0])
def test_extensive_geographic_source_keeps_total_on_utm_grid(tmp_path: Path, res: float) -> None:
    rng = np.random.default_rng(1)
    values = rng.gamma(0.5, 20.0, (50, 60)).astype(np.float32)
    values[10:14, 20:25] = np.nan  # nodata must not be summed in
    transform = Affine(0.01, 0.0, 116.9, 0.0, -0.01, 30.0)  # ~1 km cells
    path = write_raster(tmp_path / "co2.tif", values, WGS84, transform)
    source = RasterSource("target", str(path), "extensive")
    grid = _utm_grid_around((116.9, 29.5, 117.5, 30.0), res)

    whole = _align(source, grid)
    blocks = _align(source, grid, block=8)
    expected = float(np.nansum(values, dtype=np.float64))
    assert _rel(float(np.nansum(whole, dtype=np.float64)), expected) < 1e-4
    assert _rel(float(np.nansum(blocks, dtype=np.float64)), expected) < 1e-4
    assert _rel(source_total(source, validate_source(source, grid), grid.bounds), expected) < 1e-9
    assert np.isnan(whole[0, 0])  # outside the source: NaN, not 0


def test_disaggregation_splits_mass_by_area(tmp_path: Path) -> None:
    coarse = np.arange(1, 1 + 6 * 5, dtype=np.float32).reshape(6, 5) * 64.0
    path = write_raster(tmp_path / "edgar.tif", coarse, UTM50, utm_transform(res=8000.0))
    source = RasterSource("coarse", str(path), "extensive")
    grid = Grid(UTM50, utm_transform(res=1000.0), 48, 40, tile_size=16, scale=8)

    fine = _align(source, grid, block=16)
    # Nested lattices: each 1 km pixel holds 1/64 of its 8 km cell, exactly.
    np.testing.assert_allclose(fine, np.kron(coarse / 64.0, np.ones((8, 8))), rtol=1e-6)
    sums = fine.reshape(6, 8, 5, 8).sum(axis=(1, 3))
    np.testing.assert_allclose(sums, coarse, rtol=1e-6)


def test_disaggregation_shifted_and_across_crs_keeps_total(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    coarse = rng.random((8, 10)).astype(np.float32) * 1000.0
    shifted = write_raster(
        tmp_path / "shifted.tif", coarse, UTM50, utm_transform(500_300.0, 3_299_700.0, 8000.0)
    )
    grid = Grid(UTM50, utm_transform(498_000.0, 3_302_000.0, 1000.0), 72, 88, 16, 8)
    fine = _align(RasterSource("c", str(shifted), "extensive"), grid, block=16)
    assert _rel(float(np.nansum(fine, dtype=np.float64)), float(coarse.sum())) < 1e-6

    # 0.1 degree product (about 10 km) onto 1 km UTM pixels.
    geo = write_raster(
        tmp_path / "geo.tif", coarse, WGS84, Affine(0.1, 0.0, 116.6, 0.0, -0.1, 30.2)
    )
    source = RasterSource("c", str(geo), "extensive")
    grid = _utm_grid_around((116.6, 29.4, 117.6, 30.2), 1000.0)
    for block in (None, 64):
        fine = _align(source, grid, block=block)
        assert _rel(float(np.nansum(fine, dtype=np.float64)), float(coarse.sum())) < 1e-4


def test_projected_source_onto_geographic_grid_keeps_total(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    values = rng.random((20, 25)).astype(np.float32)
    path = write_raster(tmp_path / "utm.tif", values, UTM50, utm_transform(res=2000.0))
    source = RasterSource("t", str(path), "extensive")
    info = describe_source(source)
    west, south, east, north = transform_bounds(UTM50, WGS84, *info.bounds, densify_pts=50)
    grid = Grid.from_bounds(
        WGS84, 0.01, (west - 0.05, south - 0.05, east + 0.05, north + 0.05), tile_size=16
    )
    out = _align(source, grid, block=32)
    assert _rel(float(np.nansum(out, dtype=np.float64)), float(values.sum())) < 1e-4


@pytest.mark.parametrize("x0", [500_000.0, 300_000.0])  # east and west of the central meridian
def test_global_product_on_a_regional_utm_grid(tmp_path: Path, x0: float) -> None:
    values = np.zeros((360, 720), dtype=np.float32)  # 0.5 degree, the whole globe
    values[0:10, 0:10] = np.nan
    row, col = round((90 - 29.0) / 0.5), round((180 + (118.0 if x0 > 400_000 else 116.0)) / 0.5)
    values[row, col] = 1000.0  # 0.5 degree cell inside the grid
    path = write_raster(tmp_path / "edgar.tif", values, WGS84, Affine(0.5, 0, -180, 0, -0.5, 90))
    source = RasterSource("coarse", str(path), "extensive")
    grid = Grid(UTM50, utm_transform(x0, 3_300_000.0, 8000.0), 25, 42, tile_size=1, scale=1)
    info = validate_source(source, grid)
    assert not info.complete
    assert 4 < info.pixel_ratio < 9  # ~50 km cells on 8 km pixels
    aligned = _align(source, grid, block=16)
    assert float(np.nansum(aligned, dtype=np.float64)) == pytest.approx(1000.0, rel=1e-6)
    assert source_total(source, info, grid.bounds) == pytest.approx(1000.0)


@pytest.mark.parametrize("window_pixels", [1 << 20, 4])
def test_source_total_counts_pixel_centres_inside_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window_pixels: int
) -> None:
    monkeypatch.setattr("carbongeo.io.sources._TOTAL_WINDOW_PIXELS", window_pixels)
    values = np.ones((10, 10), dtype=np.float32)
    path = write_raster(tmp_path / "t.tif", values, UTM50, utm_transform(res=1000.0))
    source = RasterSource("t", str(path), "extensive")
    # The grid covers columns 4.. and rows 0..5 of the source (pixel centres inside).
    grid = Grid(UTM50, utm_transform(504_000.0, 3_300_000.0, 1000.0), 6, 20, 16, 8)
    info = validate_source(source, grid)
    assert source_total(source, info, grid.bounds) == pytest.approx(6 * 6)
    aligned = _align(source, grid)
    assert float(np.nansum(aligned)) == pytest.approx(36)

    geo = write_raster(tmp_path / "g.tif", values, WGS84, Affine(0.1, 0, 117.0, 0, -0.1, 30.0))
    geo_source = RasterSource("g", str(geo), "extensive")
    half = _utm_grid_around((117.0, 29.0, 117.45, 30.0), 1000.0)
    half_info = validate_source(geo_source, half)
    lon, lat = np.meshgrid(117.05 + 0.1 * np.arange(10), 29.95 - 0.1 * np.arange(10))
    xs, ys = warp_transform(WGS84, UTM50, lon.ravel(), lat.ravel())
    xs, ys = np.asarray(xs), np.asarray(ys)
    b = half.bounds
    expected = np.sum((xs >= b[0]) & (xs < b[2]) & (ys > b[1]) & (ys <= b[3]))
    assert source_total(geo_source, half_info, b) == pytest.approx(float(expected))


# --------------------------------------------------------------------------- placement
def test_lattice_source_is_copied_without_resampling(tmp_path: Path) -> None:
    values = np.arange(12 * 15, dtype=np.float32).reshape(12, 15)
    # The source starts 3 rows and 2 columns into the grid.
    path = write_raster(tmp_path / "t.tif", values, UTM50, utm_transform(502_000.0, 3_297_000.0))
    source = RasterSource("t", str(path), "extensive")
    grid = Grid(UTM50, utm_transform(), 20, 20, tile_size=16, scale=8)
    info = validate_source(source, grid)
    assert info.grid_offset == (-3, -2)
    out = align_window(source, info, grid, Window(0, 0, 32, 32))  # into the padding
    np.testing.assert_array_equal(out[3:15, 2:17], values)
    assert np.isnan(out[:3]).all() and np.isnan(out[15:]).all() and np.isnan(out[:, 17:]).all()


@pytest.mark.parametrize(
    ("res", "origin", "kinds"),
    [
        (4000.0, (497_000.0, 3_302_000.0), ("extensive", "categorical")),  # coarser source
        (250.0, (499_750.0, 3_300_500.0), ("extensive", "intensive")),  # finer source
    ],
)
def test_nested_lattice_shortcut_matches_gdal(
    tmp_path: Path, res: float, origin: tuple[float, float], kinds: tuple[str, ...]
) -> None:
    rng = np.random.default_rng(6)
    size = round(40_000 / res) + 4
    values = rng.integers(1, 9, (size, size)).astype(np.float32)
    values[1:3, 2:4] = np.nan
    path = write_raster(tmp_path / "n.tif", values, UTM50, utm_transform(*origin, res))
    grid = Grid(UTM50, utm_transform(), 40, 40, tile_size=16, scale=8)
    for kind in kinds:
        source = RasterSource("n", str(path), kind)
        info = validate_source(source, grid)
        assert info.nesting is not None and info.grid_offset is None
        window = Window(-3, 5, 48, 40)
        fast = align_window(source, info, grid, window)
        slow = align_window(source, dataclasses.replace(info, nesting=None), grid, window)
        np.testing.assert_allclose(fast, slow, rtol=1e-5, equal_nan=True)
        assert np.isfinite(fast).sum() > 0


def test_spike_lands_in_the_pixel_containing_its_coordinate(tmp_path: Path) -> None:
    values = np.zeros((100, 100), dtype=np.float32)
    values[37, 61] = 1000.0
    transform = Affine(0.002, 0.0, 117.0, 0.0, -0.002, 29.7)
    path = write_raster(tmp_path / "spike.tif", values, WGS84, transform)
    lon, lat = transform @ (61.5, 37.5)
    (x,), (y,) = warp_transform(WGS84, UTM50, [lon], [lat])
    grid = _utm_grid_around((117.0, 29.5, 117.2, 29.7), 1000.0)
    out = _align(RasterSource("t", str(path), "extensive"), grid)
    row, col = grid.rowcol(x, y)
    assert np.unravel_index(np.nanargmax(out), out.shape) == (row, col)
    # The 200 m source pixel may straddle a 1 km pixel edge: its mass stays next to it.
    assert float(out[row - 1 : row + 2, col - 1 : col + 2].sum()) == pytest.approx(1000.0, 1e-5)


def test_netcdf_cf_source_is_georeferenced_without_half_pixel_shift(tmp_path: Path) -> None:
    values = np.arange(30 * 40, dtype=np.float32).reshape(30, 40)
    path = write_netcdf(tmp_path / "ntl.nc", values, west=116.0, north=31.0, res=0.01)
    source = RasterSource("ntl", str(path), "intensive")
    grid = Grid.from_bounds(WGS84, 0.01, (116.0, 30.7, 116.4, 31.0), tile_size=16, scale=8)
    info = validate_source(source, grid)
    assert info.grid_offset == (0, 0)
    out = align_window(source, info, grid, Window(0, 0, 30, 40))
    np.testing.assert_array_equal(out, values)


# --------------------------------------------------------------------------- nodata
@pytest.mark.parametrize(
    ("stored", "declared", "override", "dtype"),
    [
        (-9999.0, -9999.0, None, "float32"),  # declared nodata
        (np.nan, None, None, "float32"),  # NaN without declaration
        (-999.0, None, -999.0, "float32"),  # undeclared, given in the config
        (0.0, 0.0, -999.0, "float32"),  # wrong declaration: 0 is a real value
        (255, 255, None, "uint8"),  # integer nodata
    ],
)
def test_nodata_becomes_nan_never_zero(
    tmp_path: Path, stored: float, declared: float | None, override: float | None, dtype: str
) -> None:
    values = np.full((16, 16), 3, dtype=dtype)
    values[2:5, 3:9] = stored
    if override is not None and declared is not None:
        values[10, 10] = override
    path = write_raster(tmp_path / "t.tif", values, UTM50, utm_transform(), nodata=declared)
    grid = Grid(UTM50, utm_transform(), 16, 16, tile_size=16, scale=8)
    for kind in ("extensive", "intensive"):
        out = _align(RasterSource("t", str(path), kind, nodata=override), grid)
        if override is not None and declared is not None:
            assert out[2, 3] == 0.0  # the wrongly declared value is data again
            assert np.isnan(out[10, 10])
        else:
            assert np.isnan(out[2:5, 3:9]).all()
            assert not np.any(out == 0)


def test_nodata_excluded_from_resampled_sums(tmp_path: Path) -> None:
    values = np.ones((40, 40), dtype=np.float32)
    values[:, :20] = -999.0  # left half missing, undeclared
    path = write_raster(tmp_path / "t.tif", values, UTM50, utm_transform(res=250.0))
    grid = Grid(UTM50, utm_transform(res=1000.0), 10, 10, tile_size=16, scale=8)
    out = _align(RasterSource("t", str(path), "extensive", nodata=-999.0), grid)
    assert np.isnan(out[:, :5]).all()
    np.testing.assert_allclose(out[:, 5:], 16.0)


# --------------------------------------------------------------------------- kinds
def test_intensive_constant_field_stays_constant(tmp_path: Path) -> None:
    for name, res in (("fine", 0.002), ("coarse", 0.05)):
        path = write_raster(
            tmp_path / f"{name}.tif",
            np.full((200, 200), 7.5, dtype=np.float32) if name == "fine" else np.full((8, 8), 7.5),
            WGS84,
            Affine(res, 0.0, 117.0, 0.0, -res, 29.8),
        )
        grid = _utm_grid_around((117.05, 29.5, 117.3, 29.75), 1000.0)
        out = _align(RasterSource("ntl", str(path), "intensive"), grid, block=8)
        valid = out[np.isfinite(out)]
        assert valid.size > 0
        np.testing.assert_allclose(valid, 7.5, rtol=1e-6)


@pytest.mark.parametrize("res", [0.002, 0.03])
def test_categorical_stays_in_class_set(tmp_path: Path, res: float) -> None:
    rng = np.random.default_rng(4)
    n = round(0.4 / res)
    classes = rng.choice(np.array([1, 3, 7], dtype=np.uint8), size=(n, n))
    path = write_raster(
        tmp_path / "lc.tif", classes, WGS84, Affine(res, 0.0, 117.0, 0.0, -res, 30.0), nodata=0
    )
    grid = _utm_grid_around((117.0, 29.6, 117.4, 30.0), 1000.0)
    out = _align(RasterSource("lc", str(path), "categorical"), grid, block=16)
    assert set(np.unique(out[np.isfinite(out)]).tolist()) <= {1.0, 3.0, 7.0}


def test_resampling_by_kind() -> None:
    assert resampling_for("extensive", 0.1) is Resampling.sum
    assert resampling_for("extensive", 8.0) is Resampling.sum
    assert resampling_for("intensive", 0.5) is Resampling.average
    assert resampling_for("intensive", 2.0) is Resampling.bilinear
    assert resampling_for("categorical", 0.5) is Resampling.mode
    assert resampling_for("categorical", 1.0) is Resampling.nearest


# --------------------------------------------------------------------------- errors
GRID = Grid(UTM50, utm_transform(), 16, 16, tile_size=16, scale=8)


def _error(source: RasterSource) -> str:
    with pytest.raises(InputDataError) as info:
        validate_source(source, GRID)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in _error(RasterSource("t", str(tmp_path / "nope.tif"), key="target.path"))


def test_corrupt_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.tif"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    message = _error(RasterSource("t", str(path), key="target.path"))
    assert "broken.tif" in message and "target.path" in message


def test_raster_without_crs(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "nocrs.tif", np.ones((16, 16)), crs=None)
    assert "no CRS" in _error(RasterSource("t", str(path)))


def test_wrong_band(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "t.tif", np.ones((2, 16, 16)))
    assert "band 3" in _error(RasterSource("t", str(path), band=3))
    validate_source(RasterSource("t", str(path), band=2), GRID)


def test_no_overlap(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "far.tif", np.ones((16, 16)), UTM50, utm_transform(900_000.0))
    assert "does not overlap" in _error(RasterSource("t", str(path)))


def test_netcdf_without_georeferencing(tmp_path: Path) -> None:
    path = write_netcdf(tmp_path / "bare.nc", np.ones((8, 8)), georeferenced=False)
    assert "georeferencing" in _error(RasterSource("t", str(path)))


def test_netcdf_with_several_variables(tmp_path: Path) -> None:
    path = write_netcdf(
        tmp_path / "multi.nc", np.ones((8, 8)), variable="co2", extra_variables=("ch4",)
    )
    grid = Grid.from_bounds(WGS84, 0.01, (116.0, 30.9, 116.08, 31.0), tile_size=16)
    assert validate_source(RasterSource("ch4", str(path)), grid).meta.width == 8
    assert validate_source(RasterSource("x", str(path), variable="co2"), grid).meta.height == 8
    with pytest.raises(InputDataError, match="several variables"):
        validate_source(RasterSource("target", str(path)), grid)
