"""Tests of the atomic COG writer and the COG validator."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from carbongeo.io.cog import COGWriter, validate_cog, write_cog

WKT = CRS.from_epsg(3035).to_wkt()
TRANSFORM = Affine(1000.0, 0.0, 4000000.0, 0.0, -1000.0, 3000000.0)


def field(height: int, width: int) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    values = (1.0 + np.sin(rows / 9.0) * np.cos(cols / 13.0)).astype(np.float32)
    values[:37, :41] = np.nan
    return values


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_cog_round_trip_with_tags_and_nodata(tmp_path: Path) -> None:
    data = field(300, 457)
    path = write_cog(
        tmp_path / "out.tif",
        data,
        crs=WKT,
        transform=TRANSFORM,
        tags={"units": "t", "year": 2020},
        description="CO2 emissions t",
        units="t",
        blocksize=256,
    )
    ok, errors, warnings = validate_cog(path)
    assert ok, errors
    with rasterio.open(path) as src:
        assert src.crs == CRS.from_wkt(WKT) and src.transform == TRANSFORM
        assert (src.height, src.width, src.count) == (300, 457, 1)
        assert src.dtypes == ("float32",) and math.isnan(src.nodata)
        assert src.block_shapes == [(256, 256)]
        assert src.compression.name.lower() == "deflate"
        assert src.tags()["units"] == "t" and src.tags()["year"] == "2020"
        assert src.descriptions == ("CO2 emissions t",) and src.units == ("t",)
        assert np.array_equal(src.read(1), data, equal_nan=True)
    assert files(tmp_path) == ["out.tif"]


def test_overviews_average_and_ignore_nodata(tmp_path: Path) -> None:
    data = field(1024, 1024)
    path = write_cog(tmp_path / "big.tif", data, crs=WKT, transform=TRANSFORM, blocksize=256)
    assert validate_cog(path)[0]
    with rasterio.open(path) as src:
        assert src.overviews(1)[:2] == [2, 4]
    with rasterio.open(path, overview_level=0) as overview:
        half = overview.read(1)
    blocks = data.reshape(512, 2, 512, 2).astype(np.float64)
    counts = np.isfinite(blocks).sum(axis=(1, 3))
    sums = np.nansum(blocks, axis=(1, 3))
    expected = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    np.testing.assert_allclose(half, expected, rtol=1e-5, equal_nan=True)
    assert np.isnan(half[:18, :20]).all() and np.isfinite(half[19:, 21:]).all()


def test_rows_in_uneven_chunks_equal_one_write(tmp_path: Path) -> None:
    data = field(300, 200)
    whole = write_cog(tmp_path / "whole.tif", data, crs=WKT, transform=TRANSFORM, blocksize=256)
    with COGWriter(
        tmp_path / "chunks.tif",
        crs=WKT,
        transform=TRANSFORM,
        height=300,
        width=200,
        blocksize=256,
    ) as out:
        for start, stop in [(0, 7), (7, 200), (200, 256), (256, 299), (299, 300)]:
            out.write_rows(data[start:stop])
        assert out.rows_written == 300
    with rasterio.open(whole) as a, rasterio.open(tmp_path / "chunks.tif") as b:
        assert np.array_equal(a.read(1), b.read(1), equal_nan=True)


def test_tags_can_be_added_before_commit(tmp_path: Path) -> None:
    with COGWriter(tmp_path / "t.tif", crs=WKT, transform=TRANSFORM, height=8, width=8) as out:
        out.write_rows(np.ones((8, 8), np.float32))
        out.update_tags(checked="yes")
    with rasterio.open(tmp_path / "t.tif") as src:
        assert src.tags()["checked"] == "yes"


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exception_leaves_no_file_and_no_temporary(tmp_path: Path, error: BaseException) -> None:
    with (
        pytest.raises(type(error)),
        COGWriter(tmp_path / "x.tif", crs=WKT, transform=TRANSFORM, height=600, width=50) as out,
    ):
        out.write_rows(np.ones((300, 50), np.float32))
        raise error
    assert files(tmp_path) == []


def test_failed_rewrite_keeps_the_old_file(tmp_path: Path) -> None:
    path = write_cog(tmp_path / "x.tif", field(20, 30), crs=WKT, transform=TRANSFORM)
    before = path.read_bytes()
    with (
        pytest.raises(ValueError, match="only 10 of 20 rows"),
        COGWriter(path, crs=WKT, transform=TRANSFORM, height=20, width=30) as out,
    ):
        out.write_rows(np.zeros((10, 30), np.float32))
    assert path.read_bytes() == before
    assert files(tmp_path) == ["x.tif"]


def test_write_rows_checks_shapes(tmp_path: Path) -> None:
    with COGWriter(tmp_path / "x.tif", crs=WKT, transform=TRANSFORM, height=4, width=5) as out:
        with pytest.raises(ValueError, match="width 5"):
            out.write_rows(np.zeros((2, 6), np.float32))
        with pytest.raises(ValueError, match="exceed the height"):
            out.write_rows(np.zeros((5, 5), np.float32))
        out.write_rows(np.zeros((4, 5), np.float32))


def test_validate_cog_rejects_a_plain_striped_geotiff(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    profile = {
        "driver": "GTiff",
        "height": 1100,
        "width": 1100,
        "count": 1,
        "dtype": "float32",
        "crs": WKT,
        "transform": TRANSFORM,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.zeros((1, 1100, 1100), np.float32))
    ok, errors, _ = validate_cog(path)
    assert not ok and errors
