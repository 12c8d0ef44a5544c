"""Open the year cubes (``tiles/X|Y|C_<year>.npy``) only after checking them against the index.

A cube that is truncated, holds Python objects, or has another shape than the tile index says
(another band count, tile size or grid) is refused with one line that names the file and the
command to rerun, instead of a numpy traceback in the middle of training or mosaicking.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carbongeo.errors import InputDataError
from carbongeo.stages.tile import CubeKind, TileIndex, cube_path


def expected_shape(index: TileIndex, kind: CubeKind) -> tuple[int, int, int, int]:
    """The shape of a cube of ``kind`` for ``index``: ``[N, C, t, t]``."""
    side = index.tile_size // index.scale if kind == "C" else index.tile_size
    channels = len(index.bands) if kind == "X" else 1
    return (index.n_tiles, channels, side, side)


def open_cube(tiles_dir: str | Path, kind: CubeKind, year: int, index: TileIndex) -> np.ndarray:
    """Memory-map a year cube (read-only) after checking its dtype and shape.

    Raises:
        InputDataError: The cube is missing, unreadable (truncated, not a ``.npy``, Python
            objects) or does not fit the tile index; the message names the file and says to
            rerun ``carbongeo tile`` for that year.
    """
    path = cube_path(tiles_dir, kind, year)
    fix = f"rerun: carbongeo tile --year {year}"
    if not path.is_file():
        raise InputDataError(f"{path.name} is missing from {tiles_dir}; {fix}")
    try:
        cube = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise InputDataError(f"{path}: not a readable cube ({reason[:160]}); {fix}") from None
    want = expected_shape(index, kind)
    if cube.dtype != np.float32 or cube.shape != want:
        raise InputDataError(
            f"{path}: {cube.dtype} {list(cube.shape)} does not fit the tile index (float32 "
            f"{list(want)}: {index.n_tiles} tiles, {want[1]} band(s) of {want[2]} px); {fix}"
        )
    return cube
