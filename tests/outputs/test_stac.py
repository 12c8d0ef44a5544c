"""Tests of the STAC catalog: pystac loads it, items equal the grid, links are relative."""

from __future__ import annotations

import json
from pathlib import Path

import pystac
import pytest
from _predictions import UNITS, UTM_TRANSFORM, UTM_WKT, YEARS, write_predictions
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from carbongeo.outputs.files import run_files
from carbongeo.outputs.stac import write_catalog
from carbongeo.store.tiles import load_index


def test_catalog_items_load_with_pystac_and_equal_the_grid(tmp_path: Path) -> None:
    config = write_predictions(tmp_path)
    path = write_catalog(config)
    assert path == config.predictions_dir / "catalog.json"
    grid = load_index(config.tiles_dir).grid
    catalog = pystac.Catalog.from_file(str(path))
    items = sorted(catalog.get_items(), key=lambda item: item.id)
    assert [item.id for item in items] == [f"Pred_{year}" for year in YEARS]
    for year, item in zip(YEARS, items, strict=True):
        proj = ProjectionExtension.ext(item)
        assert proj.transform == list(UTM_TRANSFORM)[:6] == list(grid.transform)[:6]
        assert proj.shape == [grid.height, grid.width]
        assert proj.code == "EPSG:32650"
        assert CRS.from_wkt(proj.wkt2) == CRS.from_wkt(UTM_WKT)
        assert proj.bbox == list(grid.bounds)
        wgs84 = transform_bounds(UTM_WKT, "EPSG:4326", *grid.bounds, densify_pts=21)
        assert item.bbox == pytest.approx(list(wgs84))
        assert item.datetime is None
        assert item.common_metadata.start_datetime.isoformat() == f"{year}-01-01T00:00:00+00:00"
        assert item.common_metadata.end_datetime.isoformat() == f"{year}-12-31T23:59:59+00:00"
        asset = item.assets["data"]
        assert asset.roles == ["data"] and asset.media_type == pystac.MediaType.COG
        assert Path(asset.get_absolute_href()) == config.predictions_dir / f"Pred_{year}.tif"
        (band,) = RasterExtension.ext(asset).bands
        assert band.unit == UNITS and band.nodata == "nan" and band.data_type == "float32"
        assert band.spatial_resolution == 1000.0
        assert item.properties["carbongeo:model_id"] and item.properties["carbongeo:year"]


def test_links_and_hrefs_are_relative_so_the_folder_can_move(tmp_path: Path) -> None:
    config = write_predictions(tmp_path)
    write_catalog(config)
    folder = config.predictions_dir
    for name in ("catalog.json", *(f"Pred_{y}.json" for y in YEARS)):
        text = (folder / name).read_text()
        assert str(tmp_path) not in text, name
        document = json.loads(text)
        hrefs = [link["href"] for link in document["links"]]
        hrefs += [a["href"] for a in document.get("assets", {}).values()]
        assert all(href.startswith("./") for href in hrefs), hrefs
    moved = tmp_path / "moved"
    folder.rename(moved)
    item = next(pystac.Catalog.from_file(str(moved / "catalog.json")).get_items())
    assert Path(item.assets["data"].get_absolute_href()).is_file()


def test_refresh_drops_the_item_of_a_removed_cog(tmp_path: Path) -> None:
    config = write_predictions(tmp_path)
    write_catalog(config)
    files = run_files(config)
    files.tifs[2019].unlink()
    write_catalog(config)
    catalog = pystac.Catalog.from_file(str(files.catalog))
    assert [item.id for item in catalog.get_items()] == ["Pred_2020"]
    assert not files.items[2019].exists() and files.items[2020].exists()


def test_no_cog_writes_no_catalog(tmp_path: Path) -> None:
    config = write_predictions(tmp_path)
    files = run_files(config)
    for tif in files.tifs.values():
        tif.unlink()
    assert write_catalog(config) is None
    assert not files.catalog.exists()


def test_geographic_grid_has_no_spatial_resolution_in_metres(tmp_path: Path) -> None:
    from affine import Affine

    transform = Affine(0.01, 0.0, 118.0, 0.0, -0.01, 25.0)
    config = write_predictions(tmp_path, crs="EPSG:4326", transform=transform)
    item = next(pystac.Catalog.from_file(str(write_catalog(config))).get_items())
    assert ProjectionExtension.ext(item).code == "EPSG:4326"
    assert RasterExtension.ext(item.assets["data"]).bands[0].spatial_resolution is None
    assert item.bbox == pytest.approx([118.0, 24.6, 118.56, 25.0])
