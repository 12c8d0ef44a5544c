"""The prediction pair of a year: ``predictions/Pred_<year>.tif`` (a COG) and ``.npy``.

Both files hold the same float32 band on the grid (NaN = nodata). They are streamed row block by
row block under temporary names and published together: a reader finds both or neither
(:func:`open_prediction_pair`). :func:`prediction_done` is the skip check of a finished year and
:func:`open_prediction` memory-maps a finished ``.npy``.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from carbongeo.errors import InputDataError
from carbongeo.grid import Grid
from carbongeo.io.atomic import commit, output_error, remove_quietly, remove_stale_temps, temp_path
from carbongeo.io.cog import COGWriter
from carbongeo.store.layout import RunLayout, missing_input

__all__ = [
    "PAIR_TAG",
    "file_sha256",
    "open_prediction",
    "open_prediction_pair",
    "pair_is_complete",
    "prediction_done",
    "prediction_tags",
    "require_prediction",
]


PAIR_TAG = "npy_sha256"
"""GeoTIFF tag holding the SHA-256 (hex) of the ``.npy`` written in the same run.

Two files cannot be renamed at once, so a run killed between the two renames leaves the new
``.npy`` beside the ``.tif`` of an earlier run; a year counts as done only when the tag matches
the ``.npy`` on disk (:func:`pair_is_complete`)."""


def prediction_done(
    layout: RunLayout, year: int, expected_tags: Mapping[str, str] | None = None
) -> bool:
    """True when the year's prediction pair is complete and current (the year can be skipped).

    See :func:`pair_is_complete`; ``expected_tags`` are the tags the run that would redo it writes.
    """
    return pair_is_complete(layout.prediction_tif(year), layout.prediction_npy(year), expected_tags)


def pair_is_complete(
    tif_path: Path, npy_path: Path, expected_tags: Mapping[str, str] | None = None
) -> bool:
    """Whether both files exist and the GeoTIFF was written with this very ``.npy``.

    False for a pair written by a version of carbongeo that did not tag it (it is then redone).

    Args:
        tif_path: ``Pred_<year>.tif``.
        npy_path: ``Pred_<year>.npy``.
        expected_tags: Tags the GeoTIFF must also carry with these values (e.g. the config hash
            and model id of the run that would redo it), so that a stale pair is not done.
    """
    if not (tif_path.is_file() and npy_path.is_file()):
        return False
    tags = _tags(tif_path)
    if tags is None:
        return False
    if any(tags.get(key) != value for key, value in (expected_tags or {}).items()):
        return False
    return tags.get(PAIR_TAG) is not None and tags[PAIR_TAG] == file_sha256(npy_path)


def prediction_tags(layout: RunLayout, year: int) -> dict[str, str]:
    """The GeoTIFF tags of ``Pred_<year>.tif`` (``model_id``, ``method``, ...); empty when the
    file is missing or unreadable."""
    return _tags(layout.prediction_tif(year)) or {}


def _tags(tif_path: Path) -> dict[str, str] | None:
    if not tif_path.is_file():
        return None
    try:
        with rasterio.open(tif_path) as src:
            return dict(src.tags())
    except (RasterioError, OSError):
        return None


def require_prediction(layout: RunLayout, year: int, suffix: str = "npy") -> Path:
    """The path of the year's ``.npy`` (or ``.tif``) prediction.

    Raises:
        InputDataError: The file is missing, naming ``carbongeo mosaic --year <year>``.
    """
    if suffix not in ("npy", "tif"):
        raise ValueError(f"a prediction is a .npy or a .tif, got {suffix!r}")
    path = layout.prediction_npy(year) if suffix == "npy" else layout.prediction_tif(year)
    if not path.is_file():
        raise missing_input(path, f"carbongeo mosaic --year {year}")
    return path


def open_prediction(layout: RunLayout, year: int, grid: Grid) -> np.ndarray:
    """Memory-map ``Pred_<year>.npy`` read-only, checked against the grid.

    Raises:
        InputDataError: The file is missing or does not have the grid's shape.
    """
    path = require_prediction(layout, year)
    pred = np.load(path, mmap_mode="r")
    if pred.shape != (grid.height, grid.width):
        raise InputDataError(
            f"{path} has shape {pred.shape} but the grid is {grid.height} x {grid.width}; "
            f"rerun 'carbongeo mosaic --year {year}'"
        )
    return pred


class _NpyRows:
    """Write a float32 ``[height, width]`` ``.npy`` row block by row block under a temporary name.

    The header is written first and rows are appended in order, so nothing of the array is held
    or memory-mapped; :meth:`publish` renames the finished file.
    """

    def __init__(self, path: Path, height: int, width: int) -> None:
        self.path = path
        self.height = height
        self.width = width
        self.rows = 0
        self._tmp = temp_path(path)
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in publish/abort
        self.digest = hashlib.sha256()  # of the bytes written: ties the .tif to this .npy
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False}
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {**header, "shape": (height, width)})
        self._write(buffer.getvalue())

    def _write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self.digest.update(data)

    def write_rows(self, rows: np.ndarray) -> None:
        self._write(np.ascontiguousarray(rows, dtype="<f4").data)
        self.rows += rows.shape[0]

    def finish(self) -> None:
        if self.rows != self.height:
            raise ValueError(f"{self.path}: only {self.rows} of {self.height} rows were written")
        self._file.close()

    def publish(self) -> None:
        commit(self._tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        remove_quietly(self._tmp)


@contextmanager
def open_prediction_pair(
    tif_path: Path,
    npy_path: Path,
    grid: Grid,
    tags: dict[str, str],
    units: str,
    to_cog: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[tuple[Callable[[np.ndarray], None], COGWriter]]:
    """Open ``Pred_<year>.tif`` and ``.npy`` for streaming; publish both only on success.

    The ``.npy`` gets the rows as they are (the target's units), the COG ``to_cog(rows)``.

    Yields a sink that appends finished rows ``[n, width]`` (top to bottom) to both files, and
    the COG writer (to update its tags before it is finished). When the block raises, neither
    file is left behind and a previous pair is kept.

    Args:
        tif_path: The COG (``RunLayout.prediction_tif``).
        npy_path: The array (``RunLayout.prediction_npy``).
        grid: The grid: CRS, transform and shape of both files.
        tags: GeoTIFF metadata tags.
        units: Units of the COG's band.
        to_cog: Conversion of the rows into the COG's units; default: none.

    Raises:
        OutputError: A file cannot be written.
    """
    for path in (tif_path, npy_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(tif_path.parent)
    tif = COGWriter(
        tif_path,
        crs=grid.crs,
        transform=grid.transform,
        height=grid.height,
        width=grid.width,
        dtype="float32",
        nodata=math.nan,
        tags=tags,
        description=f"CO2 emissions {units}".strip(),
        units=units or None,
    )
    tif.open()
    try:
        npy = _NpyRows(npy_path, grid.height, grid.width)
    except OSError as err:
        tif.abort()
        raise output_error(npy_path, err) from err

    def sink(rows: np.ndarray) -> None:
        tif.write_rows(rows if to_cog is None else to_cog(rows))
        npy.write_rows(rows)

    published: list[Path] = []
    try:
        yield sink, tif
        tif.update_tags(**{PAIR_TAG: npy.digest.hexdigest()})  # see pair_is_complete
        tif.finish()
        npy.finish()
        npy.publish()
        published.append(npy_path)
        tif.publish()
    except BaseException as err:
        tif.abort()
        npy.abort()
        for path in published:  # never leave one file of the pair
            remove_quietly(path)
        if isinstance(err, OSError):
            raise output_error(npy_path, err) from err
        raise


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (the model id of a prediction is its checkpoint's)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
