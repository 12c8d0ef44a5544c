"""The STAC catalog of a run's prediction COGs: ``predictions/catalog.json`` and one item a year.

Each item (``predictions/Pred_<year>.json``, next to its COG) describes one year's COG:

* its footprint and ``bbox`` in WGS 84 (the grid's edges, densified, reprojected), and the
  calendar year as ``start_datetime`` / ``end_datetime``;
* the projection extension: ``proj:code`` (when the CRS has an EPSG code), ``proj:wkt2``,
  ``proj:transform``, ``proj:shape`` and ``proj:bbox`` of the grid;
* one asset, the COG, with role ``data`` and the raster extension: unit, nodata, data type,
  sampling and spatial resolution;
* the COG's provenance tags as ``carbongeo:*`` properties.

The catalog is self-contained: every link and asset href is relative, so the folder can be moved
or served as it is. It is built with pystac from what the COGs themselves say (CRS, transform,
tags), so :func:`write_catalog` refreshes it from whatever COGs are on disk; ``carbongeo mosaic``
calls it at the end and ``carbongeo catalog`` calls it on demand. Every JSON file is written
atomically; the items first and the catalog last, so the catalog never links a missing item.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import rasterio
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, NoDataStrings, RasterBand, RasterExtension, Sampling
from rasterio.crs import CRS
from rasterio.warp import transform as warp_points
from rasterio.warp import transform_bounds

from carbongeo.config import PipelineConfig
from carbongeo.io.atomic import remove_quietly, write_json_atomic
from carbongeo.outputs.files import run_files

CATALOG_ID = "carbongeo-predictions"
_GDAL_TAGS = {"TIFFTAG_SOFTWARE", "AREA_OR_POINT"}  # GDAL's own tags, not carbongeo's provenance
_EDGE_POINTS = 21  # points per edge of the footprint, so curved edges in WGS 84 stay close


def _footprint(crs: CRS, bounds: rasterio.coords.BoundingBox) -> dict[str, object]:
    left, bottom, right, top = bounds
    t = np.linspace(0.0, 1.0, _EDGE_POINTS, endpoint=False)  # each edge stops before a corner
    xs = np.concatenate([left + (right - left) * t, np.full_like(t, right)])
    ys = np.concatenate([np.full_like(t, top), top + (bottom - top) * t])
    xs = np.concatenate([xs, right + (left - right) * t, np.full_like(t, left)])
    ys = np.concatenate([ys, np.full_like(t, bottom), bottom + (top - bottom) * t])
    lon, lat = warp_points(crs, "EPSG:4326", xs, ys)
    ring = [[float(x), float(y)] for x, y in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    return {"type": "Polygon", "coordinates": [ring]}


def _year_range(year: int) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
    return start, dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC) - dt.timedelta(seconds=1)


def build_item(year: int, tif: Path) -> pystac.Item:
    """The STAC item of one year's prediction COG (hrefs absolute; see :func:`write_catalog`).

    Args:
        year: The year of the COG.
        tif: ``Pred_<year>.tif``.
    """
    with rasterio.open(tif) as src:
        crs, transform, bounds = src.crs, src.transform, src.bounds
        shape, tags, dtype, nodata = [src.height, src.width], src.tags(), src.dtypes[0], src.nodata
        unit = src.units[0] or tags.get("units", "")
    start, end = _year_range(year)
    item = pystac.Item(
        id=tif.stem,
        geometry=_footprint(crs, bounds),
        bbox=list(transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=_EDGE_POINTS)),
        datetime=None,
        start_datetime=start,
        end_datetime=end,
        properties={
            "title": f"Downscaled CO2 emissions {year}",
            **{f"carbongeo:{k}": v for k, v in sorted(tags.items()) if k not in _GDAL_TAGS},
        },
    )
    epsg = crs.to_epsg()
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        code=f"EPSG:{epsg}" if epsg is not None else None,
        wkt2=crs.to_wkt(version="WKT2_2019"),
        bbox=list(bounds),
        shape=shape,
        transform=list(transform)[:6],
    )
    asset = pystac.Asset(
        href=str(tif),
        media_type=pystac.MediaType.COG,
        roles=["data"],
        title=f"CO2 emissions {year} ({unit})",
    )
    item.add_asset("data", asset)
    band = RasterBand.create(
        nodata=NoDataStrings.NAN if nodata is None or np.isnan(nodata) else float(nodata),
        data_type=DataType(dtype),
        unit=unit or None,
        sampling=Sampling.AREA,
        spatial_resolution=float(abs(transform.a)) if crs.is_projected else None,
    )
    RasterExtension.ext(asset, add_if_missing=True).apply([band])
    return item


def write_catalog(config_or_workdir: PipelineConfig | str | Path) -> Path | None:
    """Write (or refresh) ``predictions/catalog.json`` and one item per year that has a COG.

    Items of years whose COG has gone are removed with their link.

    Args:
        config_or_workdir: As in :func:`carbongeo.outputs.arrays.open_predictions`.

    Returns:
        The catalog's path, or ``None`` when the run has no COG yet (nothing is written).
    """
    files = run_files(config_or_workdir)
    years = [y for y in files.years if files.tifs[y].is_file()]
    previous = _linked_items(files.catalog)
    if not years:
        return None
    folder = files.predictions_dir
    catalog = pystac.Catalog(
        id=CATALOG_ID,
        title="carbongeo predictions",
        description=(
            "Downscaled, mass-conserving CO2 emission maps, one Cloud-Optimized GeoTIFF per year "
            f"({years[0]}-{years[-1]})."
        ),
        catalog_type=pystac.CatalogType.SELF_CONTAINED,
    )
    catalog.set_self_href(str(files.catalog))
    written = []
    for year in years:
        tif = files.tifs[year]
        item = build_item(year, tif)
        catalog.add_item(item)
        item.set_self_href(str(files.items[year]))
        item.make_asset_hrefs_relative()
        write_json_atomic(
            files.items[year], item.to_dict(include_self_link=False, transform_hrefs=True)
        )
        written.append(files.items[year].resolve())
    write_json_atomic(files.catalog, catalog.to_dict(include_self_link=False, transform_hrefs=True))
    for path in previous:
        if path.resolve() not in written and path.parent.resolve() == folder.resolve():
            remove_quietly(path)
    return files.catalog


def _linked_items(catalog: Path) -> list[Path]:
    """The item files an existing catalog links to (none when it is missing or unreadable)."""
    try:
        links = json.loads(catalog.read_text(encoding="utf-8")).get("links", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [
        catalog.parent / str(link["href"])
        for link in links
        if isinstance(link, dict) and link.get("rel") == "item" and "href" in link
    ]
