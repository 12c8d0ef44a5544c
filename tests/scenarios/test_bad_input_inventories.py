"""Real inventories through the command line: global products, cut edges, the antimeridian.

Each case takes the tiny world (``carbongeo synth --size tiny``) or a small site built here and
runs what a user would run. Decisions recorded here:

* Only the part of a source that can touch the grid is projected: a global 0.1 degree product
  tiles like a regional one, and its per-source totals too.
* A scene edge that cuts coarse cells carries only the share of each cut cell inside the scene
  (by area, like any source pixel the grid cuts). The grid stays the one declared: a default
  grid is the target raster's own, and the outputs must lie exactly on it.
* Geographic sources meet a grid across the antimeridian in either longitude spelling.
* ``check`` warns when an aux band is nodata on a large share of the target's pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _scenario import assert_ok, config_of, copy_world, edit_config, invoke, rewrite_raster
from affine import Affine
from conftest import WGS84, write_raster
from rasterio.warp import Resampling, reproject
from rasterio.warp import transform as warp_transform

pytestmark = pytest.mark.usefixtures("single_thread")

YEARS = (2014, 2015, 2016)
GLOBAL = Affine(0.1, 0, -180, 0, -0.1, 90)  # 3600 x 1800 cells of 0.1 degree


@pytest.fixture
def site(world: Path, tmp_path: Path) -> Path:
    return copy_world(world, tmp_path / "site")


def _mass_inside(values: np.ndarray, transform: Affine, crs: str, scene: tuple, utm: str) -> float:
    """Mass of ``values`` inside ``scene`` (in ``utm``): each cell's share of the scene from
    16 x 16 sample points per cell."""
    rows, cols = np.nonzero(values > 0)
    offsets = (np.arange(16) + 0.5) / 16
    dc, dr = np.meshgrid(offsets, offsets)
    c = (cols[:, None] + dc.ravel()[None]).ravel()
    r = (rows[:, None] + dr.ravel()[None]).ravel()
    lon, lat = transform @ (c, r)
    xs, ys = warp_transform(crs, utm, lon, lat)
    xs, ys = np.asarray(xs), np.asarray(ys)
    inside = (xs >= scene[0]) & (xs < scene[2]) & (ys > scene[1]) & (ys <= scene[3])
    share = inside.reshape(len(rows), -1).mean(axis=1)
    return float((values[rows, cols] * share).sum())


# --------------------------------------------------------------------------- a global product
def _globalise(site: Path) -> dict[int, np.ndarray]:
    """Replace the coarse product by a 3600 x 1800 EPSG:4326 raster (nodata -9999) holding the
    regional values (sum-reprojected) and valid zeros everywhere else."""
    out = {}
    for year in YEARS:
        path = site / "coarse" / f"edgar_like_{year}.tif"
        with rasterio.open(path) as src:
            data, crs, transform, nodata = src.read(1), src.crs, src.transform, src.nodata
        regional = np.where(data == nodata, 0.0, data).astype(np.float64)
        values = np.zeros((1800, 3600), dtype=np.float64)
        reproject(
            regional,
            values,
            src_transform=transform,
            src_crs=crs,
            dst_transform=GLOBAL,
            dst_crs=WGS84,
            resampling=Resampling.sum,
        )
        path.unlink()
        write_raster(path, values.astype(np.float32), WGS84, GLOBAL, -9999.0, tiled=True)
        out[year] = values.astype(np.float32)
    return out


def test_global_tenth_degree_coarse_product(site: Path) -> None:
    products = _globalise(site)
    assert_ok(invoke("tile", "-c", config_of(site)))
    tiles = site / "runs" / "tiles"
    index = json.loads((tiles / "index.json").read_text())
    scene = tuple(index["grid"]["transform"][i] for i in (2, 5))
    grid = index["grid"]
    x0, y1 = scene
    bounds = (x0, y1 - grid["height"] * 1000.0, x0 + grid["width"] * 1000.0, y1)
    for year in YEARS:
        cube = np.load(tiles / f"C_{year}.npy")
        assert np.isfinite(cube).all()  # valid zeros stay data
        on_scene = float(cube.sum(dtype=np.float64))
        expected = _mass_inside(products[year], GLOBAL, WGS84, bounds, "EPSG:32650")
        assert on_scene == pytest.approx(expected, rel=2e-3)
        totals = index["totals"][str(year)]
        assert totals["coarse_aligned"] == pytest.approx(on_scene, rel=1e-9)
        assert totals["coarse_source"] == pytest.approx(on_scene, rel=2e-3)


# --------------------------------------------------------------------------- a cut edge
def test_grid_edge_cutting_coarse_cells_creates_no_mass(site: Path) -> None:
    """The tiny world's grid cut 6 px short on the east: the last coarse column is 2/8 inside."""
    edit_config(
        site,
        "scale = 8\n",
        'scale = 8\ncrs = "EPSG:32650"\nresolution = 1000.0\n'
        "bounds = [300000.0, 2884000.0, 550000.0, 3012000.0]\n",
    )
    config = config_of(site)
    for args in (["tile"], ["split"], ["train", "--epochs", "1"], ["mosaic"]):
        assert_ok(invoke(*args, "-c", config))
    scene = (300000.0, 2884000.0, 550000.0, 3012000.0)
    for year in YEARS:
        with rasterio.open(site / "coarse" / f"edgar_like_{year}.tif") as src:
            values = src.read(1, masked=True).filled(0).astype(np.float64)
            t = src.transform
        x0 = t.c + t.a * np.arange(values.shape[1])
        y0 = t.f + t.e * np.arange(values.shape[0])
        fx = np.clip(np.minimum(x0 + t.a, scene[2]) - np.maximum(x0, scene[0]), 0, None) / t.a
        fy = np.clip(np.minimum(y0, scene[3]) - np.maximum(y0 + t.e, scene[1]), 0, None) / -t.e
        inside = float((values * fy[:, None] * fx[None, :]).sum())
        pred = np.load(site / "runs" / "predictions" / f"Pred_{year}.npy")
        assert pred.shape == (128, 250)
        assert float(np.nansum(pred, dtype=np.float64)) == pytest.approx(inside, rel=1e-4)
        cube = np.load(site / "runs" / "tiles" / f"C_{year}.npy")
        assert float(np.nansum(cube, dtype=np.float64)) == pytest.approx(inside, rel=1e-6)


# --------------------------------------------------------------------------- the antimeridian
ANTI = Affine(1000.0, 0, 578_000.0, 0, -1000.0, 5_828_000.0)  # UTM 60N, 178.1 E .. 178.1 W
ANTI_SCENE = (578_000.0, 5_700_000.0, 834_000.0, 5_828_000.0)


def _antimeridian_site(folder: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    for year in YEARS:
        target = rng.gamma(0.5, 50, (128, 256)).astype(np.float32)
        write_raster(folder / f"co2_{year}.tif", target, "EPSG:32660", ANTI, -9999.0)
    lon = -180 + 0.1 * (np.arange(3600) + 0.5)
    field = np.tile(np.cos(np.radians(lon)) + 2.0, (1800, 1)).astype(np.float32)
    write_raster(folder / "global_aux.tif", field, WGS84, GLOBAL, -9999.0, tiled=True)
    east = np.tile(170 + 0.05 * (np.arange(400) + 0.5), (200, 1)).astype(np.float32)
    write_raster(folder / "east_aux.tif", east, WGS84, Affine(0.05, 0, 170, 0, -0.05, 57))
    coarse = np.zeros((1800, 3600), dtype=np.float32)  # 0..360 longitudes
    coarse[370:386, 1780:1820] = rng.random((16, 40)).astype(np.float32) * 100
    write_raster(
        folder / "coarse.tif", coarse, WGS84, Affine(0.1, 0, 0, 0, -0.1, 90), -9999.0, tiled=True
    )
    (folder / "carbongeo.toml").write_text(
        'workdir = "runs"\nyears = "2014-2016"\n[grid]\ntile_size = 64\nscale = 8\n'
        '[target]\npath = "co2_{year}.tif"\n[coarse]\npath = "coarse.tif"\n'
        '[[aux]]\nname = "global"\npath = "global_aux.tif"\n'
        '[[aux]]\nname = "east"\npath = "east_aux.tif"\n'
    )
    return {"coarse": coarse}


def test_grid_across_the_antimeridian(tmp_path: Path) -> None:
    """UTM 60N around 180 degrees: -180..180 and 0..360 sources tile, the global aux fully."""
    arrays = _antimeridian_site(tmp_path)
    assert_ok(invoke("tile", "-c", str(tmp_path / "carbongeo.toml")))
    tiles = tmp_path / "runs" / "tiles"
    x = np.load(tiles / "X_2014.npy")
    assert np.isfinite(x).all()  # both aux bands cover the whole scene (no padding here)
    assert np.nanmin(x[:, 1]) > 178.0 and np.nanmax(x[:, 1]) < 182.0  # 0..360 values kept
    expected = _mass_inside(
        arrays["coarse"], Affine(0.1, 0, 0, 0, -0.1, 90), WGS84, ANTI_SCENE, "EPSG:32660"
    )
    on_scene = float(np.load(tiles / "C_2014.npy").sum(dtype=np.float64))
    assert on_scene == pytest.approx(expected, rel=2e-3)
    report = invoke("check", "-c", str(tmp_path / "carbongeo.toml"), "--json")
    assert_ok(report)
    assert not [w for w in json.loads(report.stdout)["warnings"] if "nodata" in w]


def test_check_warns_on_an_aux_band_mostly_nodata(site: Path) -> None:
    def east_half_nodata(a: np.ndarray) -> None:
        a[:, a.shape[1] // 2 :] = -9999.0

    rewrite_raster(site / "aux" / "roads.tif", east_half_nodata)
    config = config_of(site)
    assert_ok(invoke("tile", "-c", config))
    report = invoke("check", "-c", config, "--json")
    assert_ok(report)
    warnings = json.loads(report.stdout)["warnings"]
    for year in YEARS:
        line = next(w for w in warnings if w.startswith(f"{year} roads: nodata on"))
        assert "% of the pixels where the target has data" in line
    assert not [w for w in warnings if "nodata on" in w and "roads" not in w]
