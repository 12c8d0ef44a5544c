"""The grid: the one spatial abstraction every stage shares.

A :class:`Grid` is a north-up raster grid (CRS, affine transform, shape) plus the tiling
parameters (tile size in pixels, coarse scale factor). Everything here is pure: no file is opened
except by :func:`Grid.from_raster`.

Conventions:
    * Pixel ``(row, col)`` covers ``transform @ (col, row)`` (its upper-left corner) to
      ``transform @ (col + 1, row + 1)``; its centre is at ``(col + 0.5, row + 0.5)``. This is
      GDAL's and rasterio's "area" convention.
    * The scene is padded at the bottom and right up to a multiple of ``tile_size`` so that every
      tile is full size; padded pixels are nodata. Tiles never overlap, and the last row and column
      of tiles cover the scene edge exactly once.
    * A coarse cell is ``scale x scale`` fine pixels, aligned with the grid origin.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from carbongeo.errors import GridError, InputDataError

MAX_SIDE = 1 << 24
"""Most pixels per side of a grid (a 30 m grid of the whole globe has 1.3 million)."""
SMALL_TILE = 256
"""Tiles up to this side are always accepted; larger ones only up to twice the scene's side."""


@dataclass(frozen=True)
class Window:
    """A rectangle of pixels: rows ``[row, row + height)``, cols ``[col, col + width)``."""

    row: int
    col: int
    height: int
    width: int

    def slices(self) -> tuple[slice, slice]:
        """Numpy slices ``(rows, cols)`` of this window."""
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)

    def clip(self, height: int, width: int) -> Window:
        """The part of this window that lies inside a ``height x width`` array (may be empty)."""
        row0, col0 = max(self.row, 0), max(self.col, 0)
        row1 = min(self.row + self.height, height)
        col1 = min(self.col + self.width, width)
        return Window(row0, col0, max(row1 - row0, 0), max(col1 - col0, 0))


@dataclass(frozen=True)
class Tile:
    """One tile of the grid: its id (row-major order) and pixel offset of its upper-left corner."""

    id: int
    row: int
    col: int
    size: int

    @property
    def window(self) -> Window:
        """The tile's window on the padded grid."""
        return Window(self.row, self.col, self.size, self.size)


@dataclass(frozen=True)
class Grid:
    """A north-up target grid with its tiling and coarse scale.

    Attributes:
        crs: Coordinate reference system as WKT (or any string rasterio's ``CRS.from_user_input``
            accepts; stored as given so the object stays pure and picklable).
        transform: Affine transform of the pixel corners (GDAL convention).
        height: Scene height in pixels (unpadded).
        width: Scene width in pixels (unpadded).
        tile_size: Tile side in pixels.
        scale: Fine pixels per coarse cell side; divides ``tile_size``.
    """

    crs: str
    transform: Affine
    height: int
    width: int
    tile_size: int = 128
    scale: int = 8

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise GridError(f"grid shape must be positive, got {self.height} x {self.width}")
        if self.tile_size <= 0 or self.scale <= 0:
            raise GridError("grid.tile_size and grid.scale must be positive integers")
        if self.tile_size % self.scale:
            raise GridError(
                f"grid.scale = {self.scale} does not divide grid.tile_size = {self.tile_size}; "
                "choose a scale that divides the tile size (e.g. 4, 8 or 16 for 128)"
            )
        a, b, _, d, e, _ = self.transform[:6]
        if b != 0 or d != 0 or a <= 0 or e >= 0:
            raise GridError(
                "only north-up grids with square-or-rectangular positive pixels are supported "
                f"(transform {tuple(self.transform[:6])}); reproject the target first"
            )

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_bounds(
        cls,
        crs: str,
        resolution: float | tuple[float, float],
        bounds: tuple[float, float, float, float],
        *,
        tile_size: int = 128,
        scale: int = 8,
    ) -> Grid:
        """Build a grid that covers ``bounds`` (xmin, ymin, xmax, ymax) at ``resolution``.

        The origin is the upper-left corner of the bounds; the shape is rounded up so the whole
        extent is covered (a partial last pixel becomes a full one).
        """
        res_x, res_y = (
            (resolution, resolution) if isinstance(resolution, int | float) else resolution
        )
        if res_x <= 0 or res_y <= 0:
            raise GridError(f"grid.resolution must be positive, got {resolution}")
        xmin, ymin, xmax, ymax = bounds
        if xmax <= xmin or ymax <= ymin:
            raise GridError(
                f"grid.bounds must be [xmin, ymin, xmax, ymax] with min < max: {bounds}"
            )
        columns, rows = (xmax - xmin) / res_x, (ymax - ymin) / res_y
        if not (math.isfinite(columns) and math.isfinite(rows)) or max(columns, rows) > MAX_SIDE:
            raise GridError(
                f"grid.resolution: {resolution} over grid.bounds gives {rows:.3g} x {columns:.3g} "
                f"pixels (at most {MAX_SIDE} per side); check that the resolution is in the units "
                "of grid.crs (metres or degrees)"
            )
        # A tiny tolerance keeps exact multiples from gaining a spurious extra pixel.
        width = math.ceil(columns - 1e-9)
        height = math.ceil(rows - 1e-9)
        transform = Affine(res_x, 0.0, xmin, 0.0, -res_y, ymax)
        return cls(crs, transform, height, width, tile_size, scale)

    @classmethod
    def from_coarse(
        cls,
        crs: str,
        coarse_transform: Affine,
        coarse_height: int,
        coarse_width: int,
        *,
        tile_size: int = 128,
        scale: int = 8,
    ) -> Grid:
        """The fine grid whose coarse cells are the pixels of a coarse raster.

        Same CRS and origin; pixels ``scale`` times smaller, ``scale`` times more per side. Its
        :meth:`coarse_grid` is the coarse raster's grid again (padded to whole tiles).
        """
        a, b, c, d, e, f = coarse_transform[:6]
        transform = Affine(a / scale, b / scale, c, d / scale, e / scale, f)
        return cls(crs, transform, coarse_height * scale, coarse_width * scale, tile_size, scale)

    @classmethod
    def from_raster(cls, path: str | Path, *, tile_size: int = 128, scale: int = 8) -> Grid:
        """The grid of an existing raster file (its CRS, transform and shape)."""
        import rasterio  # local import: grid math stays usable without GDAL

        try:
            with rasterio.open(path) as src:
                if src.crs is None:
                    raise InputDataError(
                        f"{path}: raster has no CRS; assign one (gdal_edit.py -a_srs) or set "
                        "grid.crs, grid.resolution and grid.bounds in the config"
                    )
                return cls(src.crs.to_wkt(), src.transform, src.height, src.width, tile_size, scale)
        except rasterio.errors.RasterioIOError as err:
            raise InputDataError(f"{path}: cannot open raster ({err})") from err

    def check_tile_size(self) -> None:
        """Refuse a tile side far beyond the scene, whose cubes would be almost all padding.

        Tiles up to :data:`SMALL_TILE` pixels are always fine; larger ones up to twice the
        scene's larger side.

        Raises:
            GridError: Naming ``grid.tile_size`` and the largest side that fits.
        """
        limit = max(SMALL_TILE, 2 * max(self.height, self.width))
        if self.tile_size > limit:
            padded = self.tile_rows * self.tile_cols * self.tile_size**2
            share = 1 - self.height * self.width / padded
            raise GridError(
                f"grid.tile_size: {self.tile_size} px tiles on a {self.height} x {self.width} px "
                f"scene would be {100 * share:.1f}% padding; use a tile_size of at most {limit} "
                "(a multiple of grid.scale)"
            )

    # ----------------------------------------------------------------- derived geometry
    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in CRS units, both positive."""
        return self.transform.a, -self.transform.e

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """Scene bounds ``(xmin, ymin, xmax, ymax)`` of the unpadded grid."""
        xmin, ymax = self.transform @ (0, 0)
        xmax, ymin = self.transform @ (self.width, self.height)
        return xmin, ymin, xmax, ymax

    @property
    def tile_rows(self) -> int:
        """Number of tile rows (the last one may extend past the scene)."""
        return math.ceil(self.height / self.tile_size)

    @property
    def tile_cols(self) -> int:
        """Number of tile columns (the last one may extend past the scene)."""
        return math.ceil(self.width / self.tile_size)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """Shape of the scene padded to whole tiles."""
        return self.tile_rows * self.tile_size, self.tile_cols * self.tile_size

    @property
    def coarse_shape(self) -> tuple[int, int]:
        """Shape of the coarse grid over the padded scene."""
        rows, cols = self.padded_shape
        return rows // self.scale, cols // self.scale

    @property
    def coarse_transform(self) -> Affine:
        """Affine transform of the coarse grid (same origin, pixels ``scale`` times larger)."""
        return self.transform @ Affine.scale(self.scale)

    def coarse_grid(self) -> Grid:
        """The coarse grid over the padded scene, as a Grid (tile size 1, scale 1)."""
        rows, cols = self.coarse_shape
        return Grid(self.crs, self.coarse_transform, rows, cols, tile_size=1, scale=1)

    @property
    def cuts_coarse_cells(self) -> bool:
        """True when the scene edge cuts the last row or column of coarse cells."""
        return bool(self.height % self.scale or self.width % self.scale)

    def coarse_inside_share(self, cells: Window) -> np.ndarray:
        """The share of each coarse cell of ``cells`` that lies inside the (unpadded) scene.

        1 for whole cells, ``k / scale`` per axis for the cells the scene edge cuts after ``k``
        pixels, 0 for cells in the padding. A coarse product carries only this share of a cut
        cell's mass onto the scene, so the pixels inside never receive mass from outside it.

        Args:
            cells: A window of the coarse grid (cells of ``scale x scale`` pixels).

        Returns:
            float32 ``[cells.height, cells.width]``.
        """
        s = self.scale
        rows = np.arange(cells.row, cells.row + cells.height) * s
        cols = np.arange(cells.col, cells.col + cells.width) * s
        share_rows = np.clip(self.height - rows, 0, s) / s
        share_cols = np.clip(self.width - cols, 0, s) / s
        return np.outer(share_rows, share_cols).astype(np.float32)

    def window_transform(self, window: Window) -> Affine:
        """Affine transform of a window's upper-left pixel."""
        return self.transform @ Affine.translation(window.col, window.row)

    def tile_transform(self, tile: Tile) -> Affine:
        """Affine transform of a tile."""
        return self.window_transform(tile.window)

    def xy(self, row: float, col: float, *, offset: str = "center") -> tuple[float, float]:
        """CRS coordinates of pixel ``(row, col)``: its ``center`` or its upper-left ``corner``."""
        if offset not in ("center", "corner"):
            raise ValueError(f"offset must be 'center' or 'corner', got {offset!r}")
        shift = 0.5 if offset == "center" else 0.0
        return self.transform @ (col + shift, row + shift)

    def rowcol(self, x: float, y: float) -> tuple[int, int]:
        """The pixel ``(row, col)`` containing point ``(x, y)`` (floor; may lie outside)."""
        col, row = ~self.transform @ (x, y)
        return math.floor(row), math.floor(col)

    # ----------------------------------------------------------------- tiles
    def tiles(self) -> list[Tile]:
        """All tiles, row-major; together they cover the padded scene exactly once."""
        return list(self.iter_tiles())

    def iter_tiles(self) -> Iterator[Tile]:
        """Iterate tiles row-major without building a list."""
        for tr in range(self.tile_rows):
            for tc in range(self.tile_cols):
                yield Tile(
                    tr * self.tile_cols + tc,
                    tr * self.tile_size,
                    tc * self.tile_size,
                    self.tile_size,
                )

    def tile_valid_window(self, tile: Tile) -> Window:
        """The part of a tile inside the unpadded scene."""
        return tile.window.clip(self.height, self.width)

    def sliding_windows(self, size: int, overlap: int) -> list[Window]:
        """Overlapping ``size x size`` windows over the unpadded scene for tiled inference.

        The stride is ``size - overlap``, snapped down to a multiple of ``scale`` so windows stay
        aligned with coarse cells. The last row/column of windows is shifted back so it ends
        exactly at the (scale-padded) scene edge; a scene smaller than ``size`` gets one window
        that extends into the padding.
        """
        if size % self.scale:
            raise GridError(f"window size {size} must be a multiple of scale {self.scale}")
        if not 0 <= overlap < size:
            raise GridError(f"overlap must be in [0, {size}), got {overlap}")
        stride = max(((size - overlap) // self.scale) * self.scale, self.scale)
        rows = self._starts(self.height, size, stride)
        cols = self._starts(self.width, size, stride)
        return [Window(r, c, size, size) for r in rows for c in cols]

    def _starts(self, extent: int, size: int, stride: int) -> list[int]:
        padded = math.ceil(extent / self.scale) * self.scale
        if padded <= size:
            return [0]
        starts = list(range(0, padded - size + 1, stride))
        if starts[-1] + size < padded:
            starts.append(padded - size)  # aligned: padded and size are multiples of scale
        return starts

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the ``grid`` entry of ``tiles/index.json``)."""
        return {
            "crs": self.crs,
            "transform": list(self.transform[:6]),
            "height": self.height,
            "width": self.width,
            "tile_size": self.tile_size,
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grid:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                crs=str(data["crs"]),
                transform=Affine(*[float(v) for v in data["transform"]]),
                height=int(data["height"]),
                width=int(data["width"]),
                tile_size=int(data["tile_size"]),
                scale=int(data["scale"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise GridError(f"invalid grid description: {err}") from err

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Grid:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def same_geometry(self, other: Grid) -> bool:
        """True when both grids have the same transform, shape, tile size and scale.

        CRS strings are compared through rasterio so WKT and EPSG spellings of one CRS match.
        """
        if (self.transform, self.height, self.width, self.tile_size, self.scale) != (
            other.transform,
            other.height,
            other.width,
            other.tile_size,
            other.scale,
        ):
            return False
        from rasterio.crs import CRS

        return CRS.from_user_input(self.crs) == CRS.from_user_input(other.crs)
