"""A year's prediction pair, ``Pred_<year>.tif`` and ``Pred_<year>.npy``, as one unit.

Two files cannot be renamed at once, so a run killed between the two renames leaves the new
``.npy`` beside the ``.tif`` of an earlier run. The GeoTIFF therefore carries the SHA-256 of the
``.npy`` it was written with (tag :data:`PAIR_TAG`), and a year counts as done only when the two
files exist, the tag matches the ``.npy`` on disk, and the pair was made with the current
configuration and checkpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
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
    try:
        with rasterio.open(tif_path) as src:
            tags = src.tags()
    except (RasterioError, OSError):
        return False
    if any(tags.get(key) != value for key, value in (expected_tags or {}).items()):
        return False
    return tags.get(PAIR_TAG) is not None and tags[PAIR_TAG] == file_sha256(npy_path)
