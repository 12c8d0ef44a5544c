"""A year's prediction pair, ``Pred_<year>.tif`` and ``Pred_<year>.npy``, as one unit.

Two files cannot be renamed at once, so a run killed between the two renames leaves the new
``.npy`` beside the ``.tif`` of an earlier run. The GeoTIFF therefore carries the SHA-256 of the
``.npy`` it was written with (tag :data:`PAIR_TAG`), and a year counts as done only when the two
files exist and the tag matches the ``.npy`` on disk.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError

PAIR_TAG = "npy_sha256"
"""GeoTIFF tag holding the SHA-256 (hex) of the ``.npy`` written in the same run."""


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pair_is_complete(tif_path: Path, npy_path: Path) -> bool:
    """Whether both files exist and the GeoTIFF was written with this very ``.npy``.

    False for a pair written by a version of carbongeo that did not tag it (it is then redone).
    """
    if not (tif_path.is_file() and npy_path.is_file()):
        return False
    try:
        with rasterio.open(tif_path) as src:
            expected = src.tags().get(PAIR_TAG)
    except (RasterioError, OSError):
        return False
    return expected is not None and expected == file_sha256(npy_path)
