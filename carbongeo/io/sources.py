"""Open, validate and align one raster source onto a window of the grid.

A source is one band of a GeoTIFF, netCDF or any other raster GDAL reads, in any CRS and
resolution. Aligning it onto the :class:`~carbongeo.grid.Grid` picks the resampling from the
source's *kind*:

* ``extensive`` quantities (emissions, population counts) use GDAL's ``sum`` resampling, which
  spreads each source pixel over the grid pixels it overlaps in proportion to the overlap: totals
  are kept when aggregating (fine source, coarser grid), when disaggregating (a coarse product
  split by area onto finer pixels) and across CRS changes (to about 1e-9 relative in the tests);
* ``intensive`` quantities (radiance, NDVI) use ``average`` when the source is finer than the grid
  and ``bilinear`` when it is coarser;
* ``categorical`` rasters (classes, masks) use ``mode`` when the source is finer and ``nearest``
  otherwise, so the output only holds values of the source's class set.

Two details make ``sum`` exact rather than approximately mass-preserving: the warp uses a
near-exact coordinate transformer (GDAL's default 1/8-pixel approximation moves shared pixel
corners differently in neighbouring chunks, which loses or duplicates up to 1e-4 of the mass), and
the source window is surrounded by a ring of nodata (GDAL drops part of an edge pixel whose border
falls exactly on a grid pixel border).

Nodata is a mask, never a number: the file's declared nodata, its mask band, NaN and infinities, or
the source's ``nodata`` override from the config become NaN before resampling and are passed to
GDAL as the source nodata, so they are never summed or averaged in. Grid pixels the source does not
cover are NaN. Band scale and offset (netCDF ``scale_factor``/``add_offset``) are applied first.

Memory stays bounded and results do not depend on how the grid is cut into work: sources are
warped in chunks of a fixed lattice (:func:`warp_chunk`), each reading only the part of the source
it needs plus a margin for the resampling kernel, so a pixel gets the same value whichever block,
thread or process computes it. Sources on the grid's own pixel lattice are copied, and sources on a
nested lattice (same CRS, pixel sizes an integer multiple apart) are split, repeated, summed or
averaged with array arithmetic, which gives GDAL's result exactly and much faster.

Every function opens the file itself: rasterio datasets cannot be shared between threads or
processes, while :class:`RasterSource` and :class:`SourceInfo` are small picklable values that can
travel to dask workers.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.transform
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.io import DatasetReader, MemoryFile
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform, transform_bounds
from rasterio.windows import Window as RioWindow

from carbongeo.errors import InputDataError
from carbongeo.grid import Grid, Window

Bounds = tuple[float, float, float, float]

_NETCDF_SUFFIXES = (".nc", ".nc4", ".cdf", ".netcdf")
GDAL_CACHE_MB = 128
"""GDAL block cache while reading sources (MB). GDAL's default, 5 % of RAM, grows with the scene;
blocks are read about once, so a small cache loses nothing and keeps memory flat."""
# Warp chunks (grid pixels): see warp_chunk().
_CHUNK = 256
_MIN_CHUNK = 16
_CHUNK_SOURCE_PIXELS = 16_000_000
_MAX_MARGIN = 1024
# Largest error, in source pixels, of the approximate transformer used by the warps.
_TOLERANCE = 1e-3
# Pixels per window when a whole source is streamed (totals).
_TOTAL_WINDOW_PIXELS = 1 << 20


@dataclass(frozen=True)
class RasterSource:
    """One band of one raster file, with how to read and resample it.

    Attributes:
        name: Band name (``target``, ``coarse`` or the aux name); also picks the variable of a
            netCDF file that holds several.
        path: The file.
        kind: ``extensive``, ``intensive`` or ``categorical`` (see the module docstring).
        band: 1-based band index (for netCDF: the index along extra dimensions such as time).
        nodata: Value that marks missing data; overrides the file's declared nodata.
        variable: netCDF variable (subdataset) to read; default: the only one, or the one named
            ``name``.
        key: Where the source comes from (its config key), the label of error messages;
            default: ``name``.
    """

    name: str
    path: str
    kind: str = "intensive"
    band: int = 1
    nodata: float | None = None
    variable: str | None = None
    key: str = ""

    @property
    def label(self) -> str:
        """``<key>: <path>``, the prefix of every error about this source."""
        return f"{self.key or self.name}: {self.path}"


@dataclass(frozen=True)
class RasterMeta:
    """What a source file declares about itself (no grid involved)."""

    crs: str
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    scale: float
    offset: float

    @property
    def bounds(self) -> Bounds:
        """Bounds ``(xmin, ymin, xmax, ymax)`` in the source CRS (any affine transform)."""
        return _affine_bounds(self.transform, self.width, self.height)


@dataclass(frozen=True)
class SourceInfo:
    """A validated source, seen from a particular grid.

    Attributes:
        meta: The file's own description.
        grid_crs: The grid CRS it was validated against.
        same_crs: Source and grid share a CRS.
        region: The part of the source around the grid, in the source CRS: the source bounds
            clipped to the grid's bounds (plus a margin). A global product is thereby reduced to
            the region of a UTM grid, whose bounds PROJ can transform reliably.
        complete: The region is the whole source.
        footprint: The region's bounds in the grid CRS.
        pixel_ratio: Source pixel size divided by grid pixel size, over the region (approximate
            when the CRS differs); < 1 means the source is finer than the grid.
        grid_offset: ``(row, col)`` of grid pixel ``(0, 0)`` in source pixels when the source lies
            on the grid's pixel lattice, else None.
        nesting: How the source's lattice nests in the grid's (or the grid's in the source's)
            when one pixel size is an integer multiple of the other, else None.
        frame: Where the source's pixels are placed for every geometric computation (see
            :class:`Frame`); the region is expressed in it. Default: the file's own CRS and
            transform.
    """

    meta: RasterMeta
    grid_crs: str
    same_crs: bool
    region: Bounds
    complete: bool
    footprint: Bounds
    pixel_ratio: float
    grid_offset: tuple[int, int] | None
    nesting: Nesting | None = None
    frame: Frame | None = None

    @property
    def crs(self) -> str:
        """The CRS the source's pixels are placed in (the frame's, else the file's)."""
        return self.frame.crs if self.frame is not None else self.meta.crs

    @property
    def transform(self) -> Affine:
        """The transform of the source's pixels in :attr:`crs`."""
        return self.frame.transform if self.frame is not None else self.meta.transform

    @property
    def periodic(self) -> bool:
        """True when the source's columns repeat (a global geographic source in a frame)."""
        return self.frame is not None and self.frame.periodic


@dataclass(frozen=True)
class Frame:
    """A geographic source placed next to a grid that its longitudes do not meet directly.

    A grid across the antimeridian (UTM zone 60 around 180 degrees), or a source that spells
    longitudes 0..360 for a grid on -180..180 (or the reverse), has no overlap in the file's own
    coordinates although both cover the same ground. The source is then placed in a geographic CRS
    whose prime meridian is the grid's central longitude: the grid's region lies near longitude 0,
    where no transformation wraps, and the file's columns are shifted by whole turns to meet it. A
    global source (exactly 360 degrees wide) is periodic: its columns repeat, so a region across
    the file's edge reads both ends.

    Attributes:
        crs: The frame's CRS (PROJ string of the source's datum with ``+pm`` at the centre).
        transform: The source's pixels in that CRS.
        periodic: The columns repeat every ``width`` pixels.
    """

    crs: str
    transform: Affine
    periodic: bool = False


@dataclass(frozen=True)
class Nesting:
    """A source lattice nested in the grid's: pixel sides differ by an integer factor.

    Attributes:
        factor: Pixels of the finer lattice per pixel side of the coarser one (>= 2).
        coarser: True when the source is the coarser lattice.
        row: Row of the grid's upper-left corner from the source's, in finer-lattice pixels.
        col: Column of the same, in finer-lattice pixels.
    """

    factor: int
    coarser: bool
    row: int
    col: int


# --------------------------------------------------------------------------- opening
def _is_netcdf(path: str) -> bool:
    return path.lower().endswith(_NETCDF_SUFFIXES)


def _subdataset_variable(name: str) -> str:
    return name.rsplit(":", 1)[-1].strip('"')


@contextlib.contextmanager
def open_raster(source: RasterSource) -> Iterator[DatasetReader]:
    """Open a source's file (or the right netCDF variable) for reading.

    Raises:
        InputDataError: The file is missing, not a raster GDAL can read, or a multi-variable file
            where the variable cannot be chosen.
    """
    path = source.path
    if not Path(path).exists():
        raise InputDataError(f"{source.label}: file not found (fix the path or the years)")
    target = f'NETCDF:"{path}":{source.variable}' if source.variable else path
    with warnings.catch_warnings():
        # A file without georeferencing warns here; validation raises a clearer error.
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            dataset = rasterio.open(target)
        except rasterio.errors.RasterioIOError as err:
            raise InputDataError(
                f"{source.label}: cannot open as a raster; the file is corrupt or not in a format "
                f"GDAL reads (GeoTIFF, netCDF, ...): {err}"
            ) from err
        if dataset.count == 0 and dataset.subdatasets:
            sub = _pick_subdataset(source, dataset.subdatasets)
            dataset.close()
            try:
                dataset = rasterio.open(sub)
            except rasterio.errors.RasterioIOError as err:
                raise InputDataError(f"{source.label}: cannot open {sub}: {err}") from err
    warped = _gcp_warp(source, dataset)
    try:
        yield warped if warped is not None else dataset
    finally:
        if warped is not None:
            warped.close()
        dataset.close()


# Largest misfit, in pixels, of an affine transform fitted to a raster's GCPs for the GCPs to be
# read as that transform (exactly, without resampling); beyond it the raster is warped.
_GCP_AFFINE_TOLERANCE = 0.01


def _gcp_affine(dataset: DatasetReader) -> tuple[CRS, Affine] | None:
    """The CRS and affine transform of a raster georeferenced only by GCPs that fit an affine."""
    if dataset.crs is not None:
        return None
    gcps, gcp_crs = dataset.gcps
    if len(gcps) < 3 or gcp_crs is None:
        return None
    fitted = rasterio.transform.from_gcps(gcps)
    inverse = ~fitted
    misfit = max(
        math.hypot(col - g.col, row - g.row) for g in gcps for col, row in [inverse @ (g.x, g.y)]
    )
    return (gcp_crs, fitted) if misfit <= _GCP_AFFINE_TOLERANCE else None


def _gcp_warp(source: RasterSource, dataset: DatasetReader) -> WarpedVRT | None:
    """A GCP-only raster whose GCPs do not fit an affine, warped north-up through its GCPs."""
    if dataset.crs is not None or _gcp_affine(dataset) is not None:
        return None
    gcps, gcp_crs = dataset.gcps
    if len(gcps) < 3 or gcp_crs is None:
        return None
    try:
        return WarpedVRT(
            dataset,
            src_crs=gcp_crs,
            resampling=resampling_for(source.kind, 1.0),
            tolerance=_TOLERANCE,
        )
    except (rasterio.errors.RasterioError, CPLE_BaseError) as err:
        raise InputDataError(
            f"{source.label}: cannot warp the raster through its ground control points ({err})"
        ) from err


def _cf_geographic(dataset: DatasetReader) -> bool:
    """Whether a raster without CRS has CF longitude/latitude coordinates (and a transform)."""
    if dataset.transform == Affine.identity():
        return False
    tags = {k.lower(): str(v).lower() for k, v in dataset.tags().items()}
    units = {v for k, v in tags.items() if k.endswith("#units")}
    names = {v for k, v in tags.items() if k.endswith("#standard_name")}
    east = bool(units & {"degrees_east", "degree_east", "degrees_e"}) or "longitude" in names
    north = bool(units & {"degrees_north", "degree_north", "degrees_n"}) or "latitude" in names
    return east and north


def _pick_subdataset(source: RasterSource, subdatasets: list[str]) -> str:
    if len(subdatasets) == 1:
        return subdatasets[0]
    variables = [_subdataset_variable(s) for s in subdatasets]
    for sub, variable in zip(subdatasets, variables, strict=True):
        if variable == source.name:
            return sub
    raise InputDataError(
        f"{source.label}: the file holds several variables ({', '.join(variables)}); name the "
        f"band after the variable to read, or extract one (gdal_translate "
        f'NETCDF:"{source.path}":{variables[0]} out.tif)'
    )


def _meta(source: RasterSource, dataset: DatasetReader) -> RasterMeta:
    crs, transform = dataset.crs, dataset.transform
    gcp = _gcp_affine(dataset)
    if gcp is not None:
        crs, transform = gcp  # the GCPs are this transform: read the pixels as they are
    elif crs is None and _is_netcdf(source.path) and _cf_geographic(dataset):
        # CF lat/lon coordinates without a grid_mapping: geographic, on WGS 84 by convention.
        crs = _crs("EPSG:4326")
    if crs is None:
        if _is_netcdf(source.path):
            raise InputDataError(
                f"{source.label}: no georeferencing found; the variable needs CF coordinates "
                "(lat/lon in degrees, or x/y with a grid_mapping variable), or convert it to a "
                "GeoTIFF with gdal_translate -a_srs EPSG:4326 -a_ullr ..."
            )
        raise InputDataError(
            f"{source.label}: raster has no CRS; assign one, e.g. gdal_edit.py -a_srs EPSG:4326 "
            f"{source.path}"
        )
    if not 1 <= source.band <= dataset.count:
        raise InputDataError(
            f"{source.label}: band {source.band} requested but the file has {dataset.count} "
            f"band(s); set band = 1..{dataset.count} for this source"
        )
    index = source.band - 1
    scales = dataset.scales or (1.0,) * dataset.count
    offsets = dataset.offsets or (0.0,) * dataset.count
    return RasterMeta(
        crs=crs.to_wkt(),
        transform=transform,
        width=dataset.width,
        height=dataset.height,
        count=dataset.count,
        dtype=dataset.dtypes[index],
        nodata=dataset.nodatavals[index],
        scale=float(scales[index]) if scales[index] is not None else 1.0,
        offset=float(offsets[index]) if offsets[index] is not None else 0.0,
    )


def describe_source(source: RasterSource) -> RasterMeta:
    """Open a source and check that it is usable on its own (file, CRS, band).

    Raises:
        InputDataError: One line naming the file and the fix.
    """
    with open_raster(source) as dataset:
        return _meta(source, dataset)


# --------------------------------------------------------------------------- validation
def _affine_bounds(aff: Affine, width: int, height: int) -> Bounds:
    corners = [aff @ (c, r) for c, r in ((0, 0), (width, 0), (0, height), (width, height))]
    xs = [x for x, _ in corners]
    ys = [y for _, y in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _same_crs(a: str, b: str) -> bool:
    return _crs(a) == _crs(b)


def _intersects(a: Bounds, b: Bounds) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _contains(outer: Bounds, inner: Bounds) -> bool:
    return (
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and inner[2] <= outer[2]
        and inner[3] <= outer[3]
    )


def _lattice_offset(meta: RasterMeta, grid: Grid) -> tuple[int, int] | None:
    """``(row, col)`` of grid pixel (0, 0) in source pixels when both share a pixel lattice."""
    src, dst = meta.transform, grid.transform
    if src.b != 0 or src.d != 0:
        return None
    if not (math.isclose(src.a, dst.a, rel_tol=1e-9) and math.isclose(src.e, dst.e, rel_tol=1e-9)):
        return None
    col = (dst.c - src.c) / src.a
    row = (dst.f - src.f) / src.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


def _integer(value: float) -> int | None:
    nearest = round(value)
    return nearest if abs(value - nearest) <= 1e-6 * max(1.0, abs(value)) else None


def _nesting(meta: RasterMeta, grid: Grid) -> Nesting | None:
    """The nesting of a same-CRS, north-up source in the grid's lattice, if any."""
    src, dst = meta.transform, grid.transform
    if src.b != 0 or src.d != 0 or src.a <= 0 or src.e >= 0:
        return None
    for coarser, ratio_x, ratio_y in (
        (True, src.a / dst.a, src.e / dst.e),
        (False, dst.a / src.a, dst.e / src.e),
    ):
        factor = _integer(ratio_x)
        if factor is None or factor < 2 or _integer(ratio_y) != factor:
            continue
        fine = dst if coarser else src
        col = _integer((dst.c - src.c) / fine.a)
        row = _integer((dst.f - src.f) / fine.e)
        if col is not None and row is not None:
            return Nesting(factor, coarser, row, col)
    return None


def validate_source(source: RasterSource, grid: Grid) -> SourceInfo:
    """Open a source and check it can be aligned onto ``grid``.

    Checks that the file opens, has a CRS and the requested band, and that it overlaps the grid.

    Raises:
        InputDataError: One line naming the file and the fix.
    """
    meta = describe_source(source)
    same = _same_crs(meta.crs, grid.crs)
    grid_in_source = grid.bounds if same else _to_crs(source, grid.crs, meta.crs, grid.bounds)
    frame = None if same else _geographic_frame(meta, grid_in_source)
    source_bounds = meta.bounds
    if frame is not None:
        grid_in_source = _to_crs(source, grid.crs, frame.crs, grid.bounds)
        source_bounds = _affine_bounds(frame.transform, meta.width, meta.height)
        if frame.periodic:
            source_bounds = (-math.inf, source_bounds[1], math.inf, source_bounds[3])
    if not _intersects(grid_in_source, source_bounds):
        raise _no_overlap(source, meta.bounds, grid_in_source)
    # Grow by a few source pixels so that the region holds every pixel touching the grid.
    pad_x = 4 * (abs(meta.transform.a) + abs(meta.transform.b))
    pad_y = 4 * (abs(meta.transform.d) + abs(meta.transform.e))
    grown = (
        grid_in_source[0] - pad_x,
        grid_in_source[1] - pad_y,
        grid_in_source[2] + pad_x,
        grid_in_source[3] + pad_y,
    )
    region = (
        max(source_bounds[0], grown[0]),
        max(source_bounds[1], grown[1]),
        min(source_bounds[2], grown[2]),
        min(source_bounds[3], grown[3]),
    )
    crs = frame.crs if frame is not None else meta.crs
    footprint = region if same else _to_crs(source, crs, grid.crs, region)
    if not _intersects(footprint, grid.bounds):
        raise _no_overlap(source, meta.bounds, grid_in_source)
    pixel_area = abs(meta.transform.a * meta.transform.e - meta.transform.b * meta.transform.d)
    region_pixels = (region[2] - region[0]) * (region[3] - region[1]) / pixel_area
    footprint_area = (footprint[2] - footprint[0]) * (footprint[3] - footprint[1])
    grid_pixel = math.sqrt(grid.resolution[0] * grid.resolution[1])
    return SourceInfo(
        meta=meta,
        grid_crs=grid.crs,
        same_crs=same,
        region=region,
        complete=_contains(grown, source_bounds),
        footprint=footprint,
        pixel_ratio=math.sqrt(footprint_area / max(region_pixels, 1e-12)) / grid_pixel,
        grid_offset=_lattice_offset(meta, grid) if same else None,
        nesting=_nesting(meta, grid) if same else None,
        frame=frame,
    )


_TURN = 360.0


def _geographic_frame(meta: RasterMeta, grid_in_source: Bounds) -> Frame | None:
    """The :class:`Frame` of a geographic source whose longitudes do not meet the grid's directly.

    ``grid_in_source`` is the grid's bounds in the source CRS; a west edge east of the east edge
    means the grid crosses the antimeridian. None when the source's own coordinates serve (the
    grid's longitudes lie inside the source's, or the source is not geographic).
    """
    src = meta.transform
    if src.b != 0 or src.d != 0 or not _crs(meta.crs).is_geographic:
        return None
    west, east = grid_in_source[0], grid_in_source[2]
    crossing = west > east
    if crossing:
        east += _TURN
    if east - west >= _TURN / 2:
        return None  # not a regional grid: no single turn places the source
    left, right = meta.bounds[0], meta.bounds[2]
    periodic = math.isclose(right - left, _TURN, rel_tol=1e-9)
    if not crossing and left <= west and east <= right:
        return None

    def overlap(turns: float) -> float:
        return min(east, right + turns) - max(west, left + turns)

    shift = max((-_TURN, 0.0, _TURN), key=overlap)
    if overlap(shift) <= 0 or (not crossing and shift == 0 and not periodic):
        return None  # no overlap at all, or an ordinary partial one
    proj4 = _crs(meta.crs).to_proj4()
    if "+pm=" in proj4:
        return None
    centre = (west + east) / 2
    frame_crs = f"{proj4} +pm={centre!r}".replace(" +type=crs", "")
    transform = Affine.translation(shift - centre, 0.0) @ src
    return Frame(crs=frame_crs, transform=transform, periodic=periodic)


def _to_crs(source: RasterSource, src_crs: str, dst_crs: str, bounds: Bounds) -> Bounds:
    try:
        out = transform_bounds(_crs(src_crs), _crs(dst_crs), *bounds, densify_pts=21)
    except Exception as err:  # PROJ raises several types for impossible transforms
        raise InputDataError(
            f"{source.label}: cannot relate its CRS to the grid's ({err}); check both CRSs"
        ) from err
    if not all(math.isfinite(v) for v in out):
        raise InputDataError(
            f"{source.label}: the grid's region has no position in the source CRS (or the "
            "reverse); reproject the source closer to the grid's region"
        )
    return out


def _no_overlap(source: RasterSource, source_bounds: Bounds, grid_bounds: Bounds) -> InputDataError:
    return InputDataError(
        f"{source.label}: does not overlap the grid (source extent {_fmt(source_bounds)} vs grid "
        f"{_fmt(grid_bounds)}, in the source CRS); check the file's CRS and the grid settings"
    )


def _fmt(bounds: Bounds) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in bounds) + "]"


def resampling_for(kind: str, pixel_ratio: float) -> Resampling:
    """The resampling of a source ``kind`` whose pixels are ``pixel_ratio`` grid pixels wide."""
    finer = pixel_ratio < 1.0 - 1e-6
    if kind == "extensive":
        return Resampling.sum
    if kind == "intensive":
        return Resampling.average if finer else Resampling.bilinear
    if kind == "categorical":
        return Resampling.mode if finer else Resampling.nearest
    raise ValueError(f"unknown source kind {kind!r}")


# --------------------------------------------------------------------------- reading
def _matches(raw: np.ndarray, value: float) -> np.ndarray | None:
    """Where ``raw`` equals ``value`` in ``raw``'s own dtype (None: it cannot occur)."""
    if math.isnan(value):
        return None  # NaN is handled for every float raster
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        if value != int(value) or not info.min <= value <= info.max:
            return None
        return raw == int(value)
    # Compare in the file's precision: a float32 nodata written as -3.4028235e38 in the config
    # must match the stored float32 value.
    return raw == raw.dtype.type(value)


def read_valid(
    dataset: DatasetReader, source: RasterSource, meta: RasterMeta, window: RioWindow
) -> np.ndarray:
    """Read a window of the source band as float32 physical values with NaN for nodata.

    The band's scale and offset (netCDF ``scale_factor``/``add_offset``) are applied.
    """
    try:
        raw = dataset.read(source.band, window=window)
    except rasterio.errors.RasterioIOError as err:
        raise InputDataError(
            f"{source.label}: read failed, the file may be truncated: {err}"
        ) from err
    invalid = np.zeros(raw.shape, dtype=bool)
    flags = dataset.mask_flag_enums[source.band - 1]
    if source.nodata is not None:
        hit = _matches(raw, source.nodata)
        if hit is not None:
            invalid |= hit
    elif MaskFlags.nodata in flags and meta.nodata is not None:
        hit = _matches(raw, meta.nodata)
        if hit is not None:
            invalid |= hit
    elif MaskFlags.per_dataset in flags or MaskFlags.alpha in flags:
        invalid |= dataset.read_masks(source.band, window=window) == 0
    if np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.complexfloating):
        invalid |= ~np.isfinite(raw)
    with np.errstate(over="ignore", invalid="ignore"):  # e.g. float64 nodata -DBL_MAX; masked
        data = raw.astype(np.float32)
        if meta.scale != 1.0 or meta.offset != 0.0:
            data = data * np.float32(meta.scale) + np.float32(meta.offset)
    overflow = ~invalid & ~np.isfinite(data)
    if overflow.any():
        example = float(np.asarray(raw, dtype=np.float64)[overflow][0])
        raise InputDataError(
            f"{source.label}: {int(overflow.sum())} pixel(s) beyond the float32 range (e.g. "
            f"{example:.4g}, limit 3.4e38); rescale the file (e.g. other units), or if the value "
            "marks missing data declare it as this source's nodata"
        )
    data[invalid] = np.nan
    return data


def read_frame(
    dataset: DatasetReader, source: RasterSource, info: SourceInfo, window: RioWindow
) -> np.ndarray:
    """:func:`read_valid` of a window of the source's frame: columns wrap for periodic sources."""
    meta = info.meta
    col, end = int(window.col_off), int(window.col_off + window.width)
    if not info.periodic or (col >= 0 and end <= meta.width):
        return read_valid(dataset, source, meta, window)
    parts = []
    while col < end:
        start = col % meta.width
        width = min(end - col, meta.width - start)
        piece = RioWindow(start, window.row_off, width, window.height)
        parts.append(read_valid(dataset, source, meta, piece))
        col += width
    return np.concatenate(parts, axis=1)


# --------------------------------------------------------------------------- alignment
def warp_chunk(info: SourceInfo) -> int:
    """Side, in grid pixels, of the fixed chunks a source is warped in.

    Resampled values depend slightly on how GDAL is handed the work (its approximate transformer
    and its per-call scale estimate), so every source is warped in chunks of a fixed lattice
    anchored at the grid origin, whatever window is requested: a pixel's value is the same
    whichever block or process computes it. Chunks are 256 pixels, smaller for sources much finer
    than the grid so that one chunk never reads more than about 16 million source pixels.
    """
    chunk = _CHUNK
    while chunk > _MIN_CHUNK and (chunk / info.pixel_ratio) ** 2 > _CHUNK_SOURCE_PIXELS:
        chunk //= 2
    return chunk


def _margin(info: SourceInfo) -> int:
    # GDAL widens its source window by the kernel radius divided by the pixel ratio; a crop that
    # cuts into it changes the result, so read a little more (checked down to ratio 0.1).
    return min(math.ceil(2.5 / min(info.pixel_ratio, 1.0)) + 2, _MAX_MARGIN)


def _source_window(
    source: RasterSource, info: SourceInfo, grid: Grid, window: Window
) -> RioWindow | None:
    """The source pixels a grid window needs (with margin), clipped to the source."""
    meta = info.meta
    wt = grid.window_transform(window)
    bounds = _affine_bounds(wt, window.width, window.height)
    if not info.same_crs:
        try:
            bounds = transform_bounds(grid.crs, _crs(info.crs), *bounds, densify_pts=21)
        except Exception:
            bounds = (math.nan,) * 4
    if all(math.isfinite(v) for v in bounds):
        inverse = ~info.transform
        corners = [
            inverse @ (x, y)
            for x, y in (
                (bounds[0], bounds[1]),
                (bounds[0], bounds[3]),
                (bounds[2], bounds[1]),
                (bounds[2], bounds[3]),
            )
        ]
        margin = _margin(info)
        col0 = math.floor(min(c for c, _ in corners)) - margin
        col1 = math.ceil(max(c for c, _ in corners)) + margin
        row0 = math.floor(min(r for _, r in corners)) - margin
        row1 = math.ceil(max(r for _, r in corners)) + margin
    elif meta.width * meta.height <= 4 * _CHUNK_SOURCE_PIXELS:
        # The chunk's corners have no position in the source CRS (outside its valid area):
        # let GDAL find the useful part of the (small) source.
        col0, row0, col1, row1 = 0, 0, meta.width, meta.height
    else:
        raise InputDataError(
            f"{source.label}: part of the grid cannot be located in the source CRS; clip the "
            "grid (grid.bounds) or reproject the source closer to the grid's region"
        )
    if not info.periodic:  # the columns of a periodic source repeat: nothing to clip
        col0, col1 = max(col0, 0), min(col1, meta.width)
    row0, row1 = max(row0, 0), min(row1, meta.height)
    if col1 <= col0 or row1 <= row0:
        return None
    return RioWindow(col0, row0, col1 - col0, row1 - row0)


def align_window(source: RasterSource, info: SourceInfo, grid: Grid, window: Window) -> np.ndarray:
    """The source's values on ``window`` of ``grid``, as float32 with NaN for nodata.

    The result for a pixel does not depend on the window it was requested with (see
    :func:`warp_chunk`), so blocks computed separately fit together exactly.

    Args:
        source: The source to read.
        info: Its validation result for this grid (:func:`validate_source`).
        grid: The destination grid.
        window: Pixels of the grid to fill; it may extend past the scene (the padding of the last
            tiles), where the result is NaN.

    Returns:
        Array ``[window.height, window.width]``.

    Raises:
        InputDataError: The file cannot be read.
    """
    out = np.full((window.height, window.width), np.nan, dtype=np.float32)
    inside = window.clip(grid.height, grid.width)
    if inside.height == 0 or inside.width == 0:
        return out
    wt = grid.window_transform(inside)
    if not _intersects(info.footprint, _affine_bounds(wt, inside.width, inside.height)):
        return out
    with open_raster(source) as dataset:
        rows = slice(inside.row - window.row, inside.row - window.row + inside.height)
        cols = slice(inside.col - window.col, inside.col - window.col + inside.width)
        if info.grid_offset is not None:
            out[rows, cols] = _copy_on_lattice(dataset, source, info, inside)
            return out
        if _use_nesting(source, info):
            out[rows, cols] = _resample_nested(dataset, source, info, inside)
            return out
        chunk = warp_chunk(info)
        for row in range(inside.row // chunk * chunk, inside.row + inside.height, chunk):
            for col in range(inside.col // chunk * chunk, inside.col + inside.width, chunk):
                part = Window(row, col, chunk, chunk).clip(grid.height, grid.width)
                values = _warp(dataset, source, info, grid, part)
                if values is None:
                    continue
                # Copy the overlap of the chunk and the requested window.
                r0, r1 = (
                    max(part.row, window.row),
                    min(part.row + part.height, window.row + window.height),
                )
                c0, c1 = (
                    max(part.col, window.col),
                    min(part.col + part.width, window.col + window.width),
                )
                out[r0 - window.row : r1 - window.row, c0 - window.col : c1 - window.col] = values[
                    r0 - part.row : r1 - part.row, c0 - part.col : c1 - part.col
                ]
    return out


def _warp(
    dataset: DatasetReader, source: RasterSource, info: SourceInfo, grid: Grid, window: Window
) -> np.ndarray | None:
    """Resample the source onto one grid window (None when the source does not reach it)."""
    wt = grid.window_transform(window)
    if not _intersects(info.footprint, _affine_bounds(wt, window.width, window.height)):
        return None
    src_window = _source_window(source, info, grid, window)
    if src_window is None:
        return None
    data = read_frame(dataset, source, info, src_window)
    if not np.isfinite(data).any():
        return None
    # A ring of nodata around the window keeps GDAL's sum kernel away from the raster edge,
    # where it loses part of the mass of edge pixels whose border falls exactly on a pixel
    # border of the grid.
    data = np.pad(data, 1, constant_values=np.nan)
    profile = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": "float32",
        "crs": _crs(info.crs),
        "transform": info.transform
        @ Affine.translation(src_window.col_off - 1, src_window.row_off - 1),
        "nodata": np.nan,
    }
    try:
        return _warp_array(data, profile, source, info, grid, window)
    except (rasterio.errors.RasterioError, CPLE_BaseError) as err:
        raise InputDataError(f"{source.label}: cannot resample onto the grid: {err}") from err


def _warp_array(
    data: np.ndarray,
    profile: dict[str, Any],
    source: RasterSource,
    info: SourceInfo,
    grid: Grid,
    window: Window,
) -> np.ndarray:
    """Warp a cleaned source window (NaN = nodata) onto a grid window.

    The array goes through an in-memory GeoTIFF and a WarpedVRT because only the VRT exposes the
    transformer's tolerance: GDAL's default approximation (1/8 pixel) moves the corners shared by
    two chunks differently in each, which breaks the conservation of totals by ``sum`` at chunk
    edges (up to 1e-4 relative).
    """
    with MemoryFile() as memfile:
        with memfile.open(**profile) as mem:
            mem.write(data, 1)
        with (
            memfile.open() as mem,
            WarpedVRT(
                mem,
                crs=_crs(grid.crs),
                transform=grid.window_transform(window),
                width=window.width,
                height=window.height,
                resampling=resampling_for(source.kind, info.pixel_ratio),
                src_nodata=np.nan,
                nodata=np.nan,
                dtype="float32",
                tolerance=_TOLERANCE,
            ) as vrt,
        ):
            return vrt.read(1)


@functools.lru_cache(maxsize=64)
def _crs(text: str) -> CRS:
    return CRS.from_user_input(text)


def _copy_on_lattice(
    dataset: DatasetReader, source: RasterSource, info: SourceInfo, window: Window
) -> np.ndarray:
    """Copy a grid window from a source on the grid's pixel lattice (no resampling)."""
    assert info.grid_offset is not None
    d_row, d_col = info.grid_offset
    meta = info.meta
    out = np.full((window.height, window.width), np.nan, dtype=np.float32)
    src = Window(window.row + d_row, window.col + d_col, window.height, window.width)
    part = src.clip(meta.height, meta.width)
    if part.height == 0 or part.width == 0:
        return out
    data = read_valid(dataset, source, meta, RioWindow(part.col, part.row, part.width, part.height))
    r0, c0 = part.row - src.row, part.col - src.col
    out[r0 : r0 + part.height, c0 : c0 + part.width] = data
    return out


def _use_nesting(source: RasterSource, info: SourceInfo) -> bool:
    """Whether the exact nested-lattice arithmetic replaces GDAL for this source.

    It gives what GDAL's sum, average and nearest give on nested lattices, without their cost:
    splitting (extensive) or repeating (categorical) coarser pixels, summing (extensive) or
    averaging (intensive) finer ones. Smooth upsampling (intensive) and the mode of finer classes
    (categorical) are left to GDAL.
    """
    nest = info.nesting
    if nest is None:
        return False
    if nest.coarser:
        return source.kind in ("extensive", "categorical")
    return source.kind in ("extensive", "intensive")


def _resample_nested(
    dataset: DatasetReader, source: RasterSource, info: SourceInfo, window: Window
) -> np.ndarray:
    """A grid window from a source on a nested lattice, by exact array arithmetic."""
    nest = info.nesting
    assert nest is not None
    meta, k = info.meta, nest.factor
    out = np.full((window.height, window.width), np.nan, dtype=np.float32)
    if nest.coarser:
        # Grid pixel (r, c) lies in source pixel ((r + row) // k, (c + col) // k).
        rows = (np.arange(window.row, window.row + window.height) + nest.row) // k
        cols = (np.arange(window.col, window.col + window.width) + nest.col) // k
        r0, r1 = max(int(rows[0]), 0), min(int(rows[-1]) + 1, meta.height)
        c0, c1 = max(int(cols[0]), 0), min(int(cols[-1]) + 1, meta.width)
        if r1 <= r0 or c1 <= c0:
            return out
        data = read_valid(dataset, source, meta, RioWindow(c0, r0, c1 - c0, r1 - r0))
        if source.kind == "extensive":
            data /= np.float32(k * k)  # split by area
        keep_r = (rows >= r0) & (rows < r1)
        keep_c = (cols >= c0) & (cols < c1)
        out[np.ix_(keep_r, keep_c)] = data[np.ix_(rows[keep_r] - r0, cols[keep_c] - c0)]
        return out
    # Grid pixel (r, c) covers source rows k * r + row .. k * r + row + k - 1 (and columns alike);
    # strips of grid rows keep the source read bounded for large factors.
    strip = max(1, _CHUNK_SOURCE_PIXELS // max(window.width * k * k, 1))
    for top in range(0, window.height, strip):
        height = min(strip, window.height - top)
        src = Window(
            (window.row + top) * k + nest.row,
            window.col * k + nest.col,
            height * k,
            window.width * k,
        )
        part = src.clip(meta.height, meta.width)
        if part.height == 0 or part.width == 0:
            continue
        block = np.full((src.height, src.width), np.nan, dtype=np.float32)
        block[
            part.row - src.row : part.row - src.row + part.height,
            part.col - src.col : part.col - src.col + part.width,
        ] = read_valid(
            dataset, source, meta, RioWindow(part.col, part.row, part.width, part.height)
        )
        cells = block.reshape(height, k, window.width, k)
        count = np.isfinite(cells).sum(axis=(1, 3))
        total = np.nansum(cells, axis=(1, 3), dtype=np.float64)
        values = total if source.kind == "extensive" else total / np.maximum(count, 1)
        values[count == 0] = np.nan
        out[top : top + height] = values
    return out


# --------------------------------------------------------------------------- totals
def source_total(source: RasterSource, info: SourceInfo, bounds: Bounds) -> float:
    """Sum of the source's valid pixels whose centres fall inside ``bounds`` (grid CRS).

    Streams the file in windows of about a million pixels (aligned with its blocks), so memory
    stays bounded whatever its size. A pixel centre on the left or top edge counts as inside, on
    the right or bottom edge as outside, like the grid's own pixels.

    Args:
        source: The source (meaningful for extensive quantities).
        info: Its validation result; ``info.grid_crs`` is the CRS of ``bounds``.
        bounds: ``(xmin, ymin, xmax, ymax)`` in the grid CRS, within the bounds of the grid the
            source was validated against.
    """
    meta = info.meta
    whole_inside = info.complete and _contains(bounds, info.footprint)
    total = 0.0
    with open_raster(source) as dataset:
        block_rows, block_cols = dataset.block_shapes[source.band - 1]
        side = max(1, math.isqrt(_TOTAL_WINDOW_PIXELS))
        rows = max(block_rows, side // block_rows * block_rows)
        cols = max(block_cols, side // block_cols * block_cols)
        for row0 in range(0, meta.height, rows):
            for col0 in range(0, meta.width, cols):
                window = RioWindow(
                    col0, row0, min(cols, meta.width - col0), min(rows, meta.height - row0)
                )
                data = None
                # A periodic source's columns repeat: a pixel may meet the region one turn away
                # (the region is narrower than a turn, so it meets it at most once).
                for turn in _turns(info):
                    window_transform = (
                        Affine.translation(turn, 0.0)
                        @ info.transform
                        @ Affine.translation(col0, row0)
                    )
                    seen = _affine_bounds(window_transform, window.width, window.height)
                    if not _intersects(seen, info.region):
                        continue  # far from the grid (e.g. the rest of a global product)
                    if data is None:
                        data = read_valid(dataset, source, meta, window)
                    if whole_inside:
                        total += float(np.nansum(data, dtype=np.float64))
                    else:
                        total += _window_total(data, info, bounds, window_transform)
    return total


def _turns(info: SourceInfo) -> tuple[float, ...]:
    """Longitude shifts under which the source's pixels are seen (whole turns when periodic)."""
    if not info.periodic:
        return (0.0,)
    return (-_TURN, 0.0, _TURN)


def _clip_bounds(a: Bounds, b: Bounds) -> Bounds | None:
    """The intersection of two boxes, or None when they do not overlap."""
    out = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    return out if out[0] < out[2] and out[1] < out[3] else None


def _window_total(
    data: np.ndarray, info: SourceInfo, bounds: Bounds, window_transform: Affine
) -> float:
    """Sum of the valid pixels of ``data`` (placed by ``window_transform``) centred in bounds."""
    height, width = data.shape
    crs = _crs(info.crs)
    window_bounds = _affine_bounds(window_transform, width, height)
    near = _clip_bounds(window_bounds, info.region)
    if near is None:
        return 0.0
    if not info.same_crs:
        # Only the part of the window near the grid is projected: the rest of a global product
        # has no reliable position in a regional CRS (PROJ fails on the far side of the globe).
        try:
            near = transform_bounds(crs, info.grid_crs, *near, densify_pts=21)
        except Exception:
            near = (-math.inf, -math.inf, math.inf, math.inf)
    if _contains(bounds, near) and _contains(info.region, window_bounds):
        return float(np.nansum(data, dtype=np.float64))
    if not _intersects(bounds, near):
        return 0.0
    valid_rows, valid_cols = np.nonzero(np.isfinite(data))
    if valid_rows.size == 0:
        return 0.0
    xs, ys = window_transform @ (valid_cols + 0.5, valid_rows + 0.5)
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    region = info.region
    keep = (xs >= region[0]) & (xs <= region[2]) & (ys >= region[1]) & (ys <= region[3])
    valid_rows, valid_cols, xs, ys = valid_rows[keep], valid_cols[keep], xs[keep], ys[keep]
    if not info.same_crs and xs.size:
        xs, ys = transform(crs, info.grid_crs, xs, ys)
    xs, ys = np.asarray(xs), np.asarray(ys)
    inside = (xs >= bounds[0]) & (xs < bounds[2]) & (ys > bounds[1]) & (ys <= bounds[3])
    return float(np.sum(data[valid_rows[inside], valid_cols[inside]], dtype=np.float64))


def limit_gdal_cache(limit_mb: int = GDAL_CACHE_MB) -> None:
    """Bound GDAL's block cache in this process (dask worker processes start unbounded)."""
    current = get_gdal_config("GDAL_CACHEMAX")
    # GDAL reads values below 100000 as MB and larger ones as bytes.
    if not isinstance(current, int) or current > (
        limit_mb if current < 100_000 else limit_mb << 20
    ):
        set_gdal_config("GDAL_CACHEMAX", limit_mb)
