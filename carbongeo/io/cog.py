"""Atomic Cloud-Optimized GeoTIFF writing and validation.

Rows are streamed into a tiled temporary GeoTIFF next to the destination, one block row at a time,
so memory stays proportional to the raster width. On success GDAL's COG driver copies the
temporary file (compression, internal tiles, overviews) to a second temporary name, which is
renamed over the destination; on failure every temporary file is removed. A reader therefore
never sees a partial file under the final name.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.windows import Window as RasterioWindow

from carbongeo.errors import OutputError
from carbongeo.io.atomic import commit, output_error, remove_quietly, temp_path

# Compression of the intermediate file only: fast, the final COG is re-encoded anyway.
_TEMP_OPTIONS: dict[str, Any] = {"compress": "ZSTD", "zstd_level": 1}
# GDAL's block cache is shared by the writer and the COG conversion; a fixed cap keeps memory
# flat in the raster size (GDAL's default is a share of the machine's RAM). GDAL reads it when the
# cache is first used in a process.
_GDAL_CACHE_MB = 64


def _gdal_env() -> rasterio.Env:
    return rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB)


class COGWriter:
    """Write a single-band raster row by row, then publish it atomically as a COG.

    Use as a context manager: leaving the block normally converts and renames, an exception
    (``KeyboardInterrupt`` included) removes the temporary files and leaves ``path`` untouched.

    Example:
        >>> with COGWriter(path, crs=crs, transform=t, height=h, width=w) as out:  # doctest: +SKIP
        ...     for rows in strips:
        ...         out.write_rows(rows)

    Args:
        path: Destination ``.tif``; an existing file is replaced only on success.
        crs: CRS as WKT or any string rasterio understands.
        transform: Affine transform of the pixel corners.
        height: Raster height in pixels.
        width: Raster width in pixels.
        dtype: Pixel type.
        nodata: Declared nodata value (NaN is valid for float rasters).
        tags: Dataset metadata tags (values are converted to strings).
        description: Band description.
        units: Band units.
        compress: Final compression (``DEFLATE``, ``ZSTD`` or ``LZW``).
        blocksize: Internal tile size of the COG (256 or 512).
        overview_resampling: Resampling used to build overviews (``AVERAGE`` for densities).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        crs: str,
        transform: Affine,
        height: int,
        width: int,
        dtype: str = "float32",
        nodata: float | None = math.nan,
        tags: Mapping[str, object] | None = None,
        description: str | None = None,
        units: str | None = None,
        compress: str = "DEFLATE",
        blocksize: int = 512,
        overview_resampling: str = "AVERAGE",
    ) -> None:
        if height <= 0 or width <= 0:
            raise ValueError(f"raster shape must be positive, got {height} x {width}")
        self.path = Path(path)
        self.height = height
        self.width = width
        self.dtype = np.dtype(dtype)
        self.compress = compress.upper()
        self.blocksize = blocksize
        self.overview_resampling = overview_resampling.upper()
        self._profile: dict[str, Any] = {
            "driver": "GTiff",
            "height": height,
            "width": width,
            "count": 1,
            "dtype": self.dtype.name,
            "crs": crs,
            "transform": transform,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": blocksize,
            "blockysize": blocksize,
            "bigtiff": "IF_SAFER",
            **_TEMP_OPTIONS,
        }
        self._tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self._description = description
        self._units = units
        # Both temporaries follow carbongeo.io.atomic's naming, so remove_stale_temps finds them.
        self._tmp = temp_path(self.path.with_name(self.path.name + ".gtiff"))
        self._tmp_cog = temp_path(self.path)
        self._dst: Any = None
        self._buffer = np.empty((blocksize, width), dtype=self.dtype)
        self._buffered = 0
        self._row = 0  # rows already written to the temporary file

    # ----------------------------------------------------------------- context manager
    def __enter__(self) -> COGWriter:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    # ----------------------------------------------------------------- writing
    @property
    def rows_written(self) -> int:
        """Rows received so far."""
        return self._row + self._buffered

    def open(self) -> None:
        """Create the temporary GeoTIFF (called by ``__enter__``)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _gdal_env():
                self._dst = rasterio.open(self._tmp, "w", **self._profile)
        except OSError as err:
            self.abort()
            raise output_error(self.path, err) from err
        except (RasterioError, CPLE_BaseError) as err:
            self.abort()
            raise _gdal_error(self.path, err) from err

    def write_rows(self, rows: np.ndarray) -> None:
        """Append ``rows`` (``[n, width]``) below the rows written so far."""
        if self._dst is None:
            raise RuntimeError("COGWriter is not open; use it as a context manager")
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"expected rows of width {self.width}, got shape {rows.shape}")
        if self.rows_written + rows.shape[0] > self.height:
            raise ValueError(
                f"{self.rows_written} + {rows.shape[0]} rows exceed the height {self.height}"
            )
        start = 0
        while start < rows.shape[0]:
            take = min(self.blocksize - self._buffered, rows.shape[0] - start)
            self._buffer[self._buffered : self._buffered + take] = rows[start : start + take]
            self._buffered += take
            start += take
            if self._buffered == self.blocksize:
                self._flush()

    def update_tags(self, **tags: object) -> None:
        """Add or replace dataset tags (any time before :meth:`commit`)."""
        self._tags.update({k: str(v) for k, v in tags.items()})

    def _flush(self) -> None:
        # Whole block rows only, so GDAL never has to re-read a compressed block.
        if self._buffered == 0:
            return
        window = RasterioWindow(0, self._row, self.width, self._buffered)
        with self._abort_on_error(), _gdal_env():
            self._dst.write(self._buffer[: self._buffered], 1, window=window)
        self._row += self._buffered
        self._buffered = 0

    def commit(self) -> None:
        """Finish the COG (:meth:`finish`) and rename it over ``path`` (:meth:`publish`)."""
        self.finish()
        self.publish()

    def finish(self) -> None:
        """Close the temporary file and convert it to a COG, still under a temporary name.

        Splitting this from :meth:`publish` lets a caller finish several outputs before renaming
        any of them.
        """
        with self._abort_on_error():
            if self.rows_written != self.height:
                raise ValueError(
                    f"{self.path}: only {self.rows_written} of {self.height} rows were written"
                )
            self._flush()
            with _gdal_env():
                self._dst.update_tags(**self._tags)
                if self._description is not None:
                    self._dst.set_band_description(1, self._description)
                if self._units is not None:
                    self._dst.set_band_unit(1, self._units)
                self._dst.close()
                self._dst = None
                rasterio.shutil.copy(
                    self._tmp,
                    self._tmp_cog,
                    driver="COG",
                    COMPRESS=self.compress,
                    PREDICTOR="YES",
                    BLOCKSIZE=self.blocksize,
                    OVERVIEW_RESAMPLING=self.overview_resampling,
                    BIGTIFF="IF_SAFER",
                    NUM_THREADS="ALL_CPUS",
                )
            remove_quietly(self._tmp)

    def publish(self) -> None:
        """Rename the finished COG over ``path`` (after :meth:`finish`)."""
        with self._abort_on_error():
            commit(self._tmp_cog, self.path)

    @contextlib.contextmanager
    def _abort_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException as err:
            self.abort()
            if isinstance(err, OSError):
                raise output_error(self.path, err) from err
            if isinstance(err, RasterioError | CPLE_BaseError):
                # GDAL reports a full disk or a failed conversion through its own error types.
                raise _gdal_error(self.path, err) from err
            raise

    def abort(self) -> None:
        """Close and remove the temporary files; ``path`` is left as it was."""
        if self._dst is not None:
            with contextlib.suppress(Exception):
                self._dst.close()
            self._dst = None
        remove_quietly(self._tmp)
        remove_quietly(self._tmp_cog)


def _gdal_error(path: Path, err: Exception) -> OutputError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return OutputError(
        f"cannot write {path}: {reason} (check that the folder is writable and has free space)"
    )


def write_cog(
    path: str | Path,
    array: np.ndarray,
    *,
    crs: str,
    transform: Affine,
    **options: Any,
) -> Path:
    """Write a whole ``[height, width]`` array as a COG (atomically); see :class:`COGWriter`.

    Args:
        path: Destination ``.tif``.
        array: The raster.
        crs: CRS as WKT or any string rasterio understands.
        transform: Affine transform of the pixel corners.
        **options: Further :class:`COGWriter` keyword arguments (nodata, tags, units, ...).

    Returns:
        ``path``.
    """
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {array.shape}")
    options.setdefault("dtype", array.dtype.name)
    height, width = array.shape
    with COGWriter(
        path, crs=crs, transform=transform, height=height, width=width, **options
    ) as out:
        out.write_rows(array)
    return Path(path)


def validate_cog(path: str | Path) -> tuple[bool, list[str], list[str]]:
    """Check that ``path`` is a valid Cloud-Optimized GeoTIFF (rio-cogeo's validator).

    Returns:
        ``(ok, errors, warnings)``.
    """
    from rio_cogeo.cogeo import cog_validate  # local import: only validation needs rio-cogeo

    ok, errors, warnings = cog_validate(str(path), quiet=True)
    return bool(ok), list(errors), list(warnings)
