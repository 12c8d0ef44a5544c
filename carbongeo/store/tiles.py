"""The tile cubes and their index: format, readers and writers.

For each tiled year a tiles folder holds (names in :class:`~carbongeo.store.layout.TilesLayout`):

* ``X_<year>.npy``: float32 ``[N, C_aux, ts, ts]``, the aux bands aligned to the grid, after their
  ``transform`` (e.g. ``log1p``), not normalised; NaN is nodata;
* ``Y_<year>.npy`` (years with a target): float32 ``[N, 1, ts, ts]``, the target aligned to the
  grid, physical units;
* ``C_<year>.npy`` (only with a ``[coarse]`` product): float32 ``[N, 1, ts/s, ts/s]``, the coarse
  product on the coarse grid (cells of ``scale x scale`` fine pixels), totals preserved;
* ``index.json``: the grid, the years (and which of them have a target), band names, units, each
  tile's offset and valid fraction, and the totals before and after alignment
  (:class:`TileIndex`).

Tile ``i`` covers ``grid.tiles()[i].window`` of the padded grid; pixels past the scene are NaN. The
cubes are ``.npy`` files that :func:`numpy.load` memory-maps (``mmap_mode="r"``): readers open
them through :func:`open_cube` / :func:`open_year`, which name the command to run when a cube is
missing, and assemble any window with :func:`read_window`. :class:`TileStore` reads one tile of
one year at a time for the evaluation and the figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from carbongeo.errors import CarbongeoError, GridError, InputDataError
from carbongeo.grid import Grid, Tile, Window
from carbongeo.io.atomic import output_error, write_json_atomic
from carbongeo.store.layout import CubeKind, TilesLayout, missing_input

if TYPE_CHECKING:
    from carbongeo.config import PipelineConfig

__all__ = [
    "INDEX_VERSION",
    "TileData",
    "TileIndex",
    "TileRecord",
    "TileStore",
    "YearCubes",
    "check_cubes",
    "create_cube",
    "cube_shapes",
    "load_index",
    "open_aux_target",
    "expected_shape",
    "open_cube",
    "open_year",
    "read_window",
    "write_block",
    "write_index",
]

INDEX_VERSION = 1
WATER_BAND = "water"


# --------------------------------------------------------------------------- the index
@dataclass
class TileRecord:
    """One tile of the index: its id, pixel offset on the padded grid and valid fractions.

    Attributes:
        id: Tile id (row-major), the index along the cubes' first axis.
        row: Row of the tile's upper-left pixel on the grid.
        col: Column of the tile's upper-left pixel on the grid.
        valid_fraction: Per year with a target, the fraction of the tile's ``ts x ts`` pixels where
            the target is valid (padding counts as invalid).
        coarse_valid_fraction: Per year (with a coarse product), the fraction of the tile's
            coarse cells where the coarse product is valid; the split of coarse supervision.
    """

    id: int
    row: int
    col: int
    valid_fraction: dict[int, float] = field(default_factory=dict)
    coarse_valid_fraction: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: year keys become strings (``coarse_valid_fraction`` only when known)."""
        data: dict[str, Any] = {
            "id": self.id,
            "row": self.row,
            "col": self.col,
            "valid_fraction": {str(y): f for y, f in sorted(self.valid_fraction.items())},
        }
        if self.coarse_valid_fraction:
            data["coarse_valid_fraction"] = {
                str(y): f for y, f in sorted(self.coarse_valid_fraction.items())
            }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TileRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(
            id=int(data["id"]),
            row=int(data["row"]),
            col=int(data["col"]),
            valid_fraction={int(y): float(f) for y, f in data.get("valid_fraction", {}).items()},
            coarse_valid_fraction={
                int(y): float(f) for y, f in data.get("coarse_valid_fraction", {}).items()
            },
        )


@dataclass
class TileIndex:
    """The content of ``tiles/index.json``.

    JSON layout (``version`` 1)::

        {"version": 1,
         "grid": Grid.to_dict(),                    # CRS as WKT, transform, shape, tile_size, scale
         "years": [2014, 2015],                     # every year with cubes on disk
         "target_years": [2014, 2015],              # the years with a Y_<year>.npy
         "bands": ["ntl", "pop"],                   # aux channel order of X_<year>.npy
         "aux": [{"name", "kind", "transform", "units"}, ...],
         "target": {"units", "kind"},
         "has_coarse": false,                       # C_<year>.npy written
         "nodata": "NaN",
         "tiles": [{"id", "row", "col", "valid_fraction": {"2014": 0.93, ...},
                    "coarse_valid_fraction": {...}}, ...],  # the latter with [coarse] only
         "totals": {"2014": {"target_source", "target_aligned", "coarse_source",
                             "coarse_aligned"}},    # coarse_* are null without [coarse]
         "config_hash": "..."}

    An index without ``target_years`` (written before the key existed) has a target for every
    year. ``target_source`` sums the target file's valid pixels whose centres fall in the scene;
    ``target_aligned`` sums ``Y_<year>.npy``. For a source inside the grid they agree to float
    precision (about 1e-9 relative); for one that extends past the grid they differ by the mass of
    the pixels cut by the scene edge (counted whole or not at all vs split by area). ``coarse_*``
    are the same for the coarse product over the coarse cells that touch the scene.

    Attributes:
        target_years: The years with a target cube; None (the default) means every year.
    """

    grid: Grid
    years: list[int]
    bands: list[str]
    aux: list[dict[str, str]]
    target: dict[str, str]
    has_coarse: bool
    tiles: list[TileRecord]
    totals: dict[int, dict[str, float | None]] = field(default_factory=dict)
    config_hash: str = ""
    nodata: str = "NaN"
    version: int = INDEX_VERSION
    target_years: list[int] | None = None

    def __post_init__(self) -> None:
        if self.target_years is None:
            self.target_years = list(self.years)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable form written to ``index.json``."""
        return {
            "version": self.version,
            "grid": self.grid.to_dict(),
            "years": sorted(self.years),
            "target_years": sorted(self._target_years),
            "bands": list(self.bands),
            "aux": [dict(a) for a in self.aux],
            "target": dict(self.target),
            "has_coarse": self.has_coarse,
            "nodata": self.nodata,
            "tiles": [t.to_dict() for t in self.tiles],
            "totals": {str(y): dict(t) for y, t in sorted(self.totals.items())},
            "config_hash": self.config_hash,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TileIndex:
        """Inverse of :meth:`to_dict`.

        Raises:
            InputDataError: The data is not an index of a version this code reads.
        """
        try:
            version = int(data["version"])
            if version != INDEX_VERSION:
                raise InputDataError(
                    f"tile index version {version} is not supported (expected {INDEX_VERSION}); "
                    "delete the tiles folder and run 'carbongeo tile' again"
                )
            years = [int(y) for y in data["years"]]
            target_years = [int(y) for y in data.get("target_years", years)]
            if not set(target_years) <= set(years):
                raise ValueError(f"target_years {target_years} are not all in years {years}")
            return cls(
                grid=Grid.from_dict(data["grid"]),
                years=years,
                bands=[str(b) for b in data["bands"]],
                aux=[{str(k): str(v) for k, v in a.items()} for a in data["aux"]],
                target={str(k): str(v) for k, v in data["target"].items()},
                has_coarse=bool(data["has_coarse"]),
                tiles=[TileRecord.from_dict(t) for t in data["tiles"]],
                totals={int(y): dict(t) for y, t in data.get("totals", {}).items()},
                config_hash=str(data.get("config_hash", "")),
                nodata=str(data.get("nodata", "NaN")),
                version=version,
                target_years=target_years,
            )
        except (KeyError, TypeError, ValueError, AttributeError, GridError) as err:
            raise InputDataError(
                f"tile index is damaged ({type(err).__name__}: {err}); delete the tiles folder "
                "and run 'carbongeo tile' again"
            ) from err

    @property
    def _target_years(self) -> list[int]:
        return list(self.years) if self.target_years is None else self.target_years

    @property
    def n_tiles(self) -> int:
        """Number of tiles (the first axis of every cube)."""
        return len(self.tiles)

    @property
    def tile_size(self) -> int:
        """Tile side in fine pixels."""
        return self.grid.tile_size

    @property
    def scale(self) -> int:
        """Fine pixels per coarse cell side."""
        return self.grid.scale

    def has_target(self, year: int) -> bool:
        """True when ``year`` was tiled with a target (``Y_<year>.npy``)."""
        return year in self.years and year in self._target_years

    def cube_kinds(self, year: int) -> tuple[CubeKind, ...]:
        """Cubes of ``year``: ``X``, ``Y`` (with a target) and ``C`` (with a coarse product)."""
        kinds: list[CubeKind] = ["X"]
        if self.has_target(year):
            kinds.append("Y")
        if self.has_coarse:
            kinds.append("C")
        return tuple(kinds)

    def require_year(self, year: int) -> None:
        """Raise the one error for a year that is not in the index.

        Raises:
            InputDataError: ``year`` has not been tiled, naming the command that tiles it.
        """
        if year not in self.years:
            raise InputDataError(
                f"year {year} has not been tiled (tiled: {sorted(self.years)}); run "
                f"'carbongeo tile --year {year}' first"
            )

    def require_target(self, year: int) -> None:
        """Raise the one error for a year whose target cube is needed but was never made.

        Raises:
            InputDataError: ``year`` is not tiled, or was tiled without a target.
        """
        self.require_year(year)
        if not self.has_target(year):
            raise InputDataError(
                f"year {year} was tiled without a target (years with a target: "
                f"{sorted(self._target_years)}); give target.path for {year} and run "
                f"'carbongeo tile --year {year}' first"
            )

    def position(self, tile_id: int) -> int:
        """Row of tile ``tile_id`` along the first axis of the cubes.

        Raises:
            InputDataError: The tile id is not in the index (the split is older than the tiles).
        """
        cached = self.__dict__.get("_positions")
        if cached is None or cached[0] is not self.tiles or len(cached[1]) != len(self.tiles):
            cached = (self.tiles, {record.id: row for row, record in enumerate(self.tiles)})
            self.__dict__["_positions"] = cached
        positions: dict[int, int] = cached[1]
        if tile_id not in positions:
            raise InputDataError(
                f"tile {tile_id} is not in the tile index; the split is older than the tiles, "
                "rerun: carbongeo split"
            )
        return positions[tile_id]

    def tile(self, tile_id: int) -> Tile:
        """The grid :class:`~carbongeo.grid.Tile` of a tile id."""
        record = self.tiles[self.position(tile_id)]
        return Tile(record.id, record.row, record.col, self.grid.tile_size)

    def valid_fractions(self, year: int) -> np.ndarray:
        """Valid fraction of every tile for ``year`` (float64 ``[N]``).

        Raises:
            InputDataError: ``year`` has not been tiled.
        """
        self.require_year(year)
        return np.array([t.valid_fraction.get(year, 0.0) for t in self.tiles], dtype=np.float64)

    def coarse_valid_fractions(self, year: int) -> np.ndarray:
        """Valid fraction of every tile's coarse product for ``year`` (float64 ``[N]``).

        Raises:
            InputDataError: ``year`` has not been tiled.
        """
        self.require_year(year)
        return np.array(
            [t.coarse_valid_fraction.get(year, 0.0) for t in self.tiles], dtype=np.float64
        )


def load_index(tiles_dir: str | Path) -> TileIndex:
    """Read ``<tiles_dir>/index.json``.

    Raises:
        InputDataError: The index is missing or damaged.
    """
    path = TilesLayout(Path(tiles_dir)).index
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise missing_input(path, "carbongeo tile") from err
    except OSError as err:
        raise InputDataError(f"{path}: cannot read ({err.strerror})") from err
    try:
        data = json.loads(text)
    except ValueError as err:
        raise InputDataError(
            f"{path} is not valid JSON ({err}); delete the tiles folder and tile again"
        ) from err
    if not isinstance(data, dict):
        raise InputDataError(f"{path} is not a tile index; delete the tiles folder and tile again")
    return TileIndex.from_dict(data)


def write_index(tiles_dir: str | Path, index: TileIndex) -> Path:
    """Write ``<tiles_dir>/index.json`` atomically; returns its path.

    Raises:
        OutputError: The file cannot be written.
    """
    path = TilesLayout(Path(tiles_dir)).index
    write_json_atomic(path, index.to_dict())
    return path


# --------------------------------------------------------------------------- writing cubes
def cube_shapes(grid: Grid, n_aux: int, has_coarse: bool) -> dict[CubeKind, tuple[int, ...]]:
    """The shape of each cube of one year: ``X``, ``Y`` and (with a coarse product) ``C``."""
    n = grid.tile_rows * grid.tile_cols
    ts = grid.tile_size
    shapes: dict[CubeKind, tuple[int, ...]] = {"X": (n, n_aux, ts, ts), "Y": (n, 1, ts, ts)}
    if has_coarse:
        shapes["C"] = (n, 1, ts // grid.scale, ts // grid.scale)
    return shapes


def create_cube(path: str | Path, shape: tuple[int, ...]) -> None:
    """Create an empty float32 ``.npy`` cube of ``shape`` at ``path`` (its blocks come later).

    Raises:
        OutputError: The file cannot be created.
    """
    try:
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    except OSError as err:
        raise output_error(path, err) from err


def write_block(
    path: str | Path, data: np.ndarray, tile_row: int, tile_col: int, tile_cols: int
) -> None:
    """Write a block ``[C, h, w]`` of whole tiles into the cube at ``path``.

    The block's upper-left tile is at ``(tile_row, tile_col)`` of a grid ``tile_cols`` tiles wide;
    the tile side is the cube's. The cube is opened here (memory-mapped, ``r+``) and closed again,
    so any thread or process can write its own disjoint tiles, and the written pages do not
    accumulate in this process.

    Raises:
        OSError: The cube cannot be opened or written (the caller names the file).
    """
    cube = np.load(path, mmap_mode="r+")
    try:
        tile_size = cube.shape[-1]
        n_cols = data.shape[2] // tile_size
        for i in range(data.shape[1] // tile_size):
            band = data[:, i * tile_size : (i + 1) * tile_size, :]
            tiles = band.reshape(data.shape[0], tile_size, n_cols, tile_size).transpose(2, 0, 1, 3)
            first = (tile_row + i) * tile_cols + tile_col
            cube[first : first + n_cols] = tiles
        cube.flush()
    finally:
        del cube


# --------------------------------------------------------------------------- reading cubes
@dataclass(frozen=True)
class YearCubes:
    """The memory-mapped cubes of one year.

    Attributes:
        year: The year.
        aux: ``X_<year>.npy`` ``[N, C, ts, ts]``.
        target: ``Y_<year>.npy`` ``[N, 1, ts, ts]``, or None (not asked for, or no target).
        coarse: ``C_<year>.npy`` ``[N, 1, ts/s, ts/s]``, or None (not asked for, or none).
    """

    year: int
    aux: np.ndarray
    target: np.ndarray | None
    coarse: np.ndarray | None


def _missing_cube(path: Path, year: int) -> CarbongeoError:
    return missing_input(path, f"carbongeo tile --year {year}")


def expected_shape(index: TileIndex, kind: CubeKind) -> tuple[int, int, int, int]:
    """The shape of a cube of ``kind`` for ``index``: ``[N, C, t, t]``."""
    side = index.tile_size // index.scale if kind == "C" else index.tile_size
    channels = len(index.bands) if kind == "X" else 1
    return (index.n_tiles, channels, side, side)


def open_cube(
    tiles_dir: str | Path, kind: CubeKind, year: int, index: TileIndex | None = None
) -> np.ndarray:
    """Memory-map one cube read-only, after checking that it is a readable cube.

    A cube that is truncated, holds Python objects, or (given ``index``) has another dtype or
    shape than the tile index says is refused with one line naming the file and the command.

    Raises:
        InputDataError: The cube is missing, unreadable or does not fit the index, naming
            ``carbongeo tile --year <year>``.
    """
    path = TilesLayout(Path(tiles_dir)).cube(kind, year)
    fix = f"rerun: carbongeo tile --year {year}"
    try:
        cube = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as err:
        raise _missing_cube(path, year) from err
    except (ValueError, OSError, EOFError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise InputDataError(f"{path}: not a readable cube ({reason[:160]}); {fix}") from None
    if index is not None:
        want = expected_shape(index, kind)
        if cube.dtype != np.float32 or cube.shape != want:
            raise InputDataError(
                f"{path}: {cube.dtype} {list(cube.shape)} does not fit the tile index (float32 "
                f"{list(want)}: {index.n_tiles} tiles, {want[1]} band(s) of {want[2]} px); {fix}"
            )
    return cube


def _wanted(
    index: TileIndex, tiles_dir: str | Path, year: int, target: bool | None, coarse: bool | None
) -> tuple[CubeKind, ...]:
    """The cubes to open for ``year``; raises when one that is asked for cannot exist."""
    index.require_year(year)
    kinds: list[CubeKind] = ["X"]
    if target or (target is None and index.has_target(year)):
        index.require_target(year)
        kinds.append("Y")
    if coarse and not index.has_coarse:
        raise InputDataError(
            f"the tiles in {tiles_dir} were cut without a [coarse] product; add one to the "
            "pipeline file and run 'carbongeo tile' again"
        )
    if coarse or (coarse is None and index.has_coarse):
        kinds.append("C")
    return tuple(kinds)


def check_cubes(
    tiles_dir: str | Path,
    index: TileIndex,
    years: Iterable[int],
    *,
    target: bool | None = None,
    coarse: bool | None = None,
) -> None:
    """Check that the cubes :func:`open_year` would open exist for every year, before any work.

    Args:
        tiles_dir: The tiles folder.
        index: Its index.
        years: The years to check.
        target: True: the target cube is needed; False: not; None: when the year has one.
        coarse: The same for the coarse product.

    Raises:
        InputDataError: The first year that is not tiled or misses a cube, or whose cube is
            damaged or does not fit the index, naming the command that makes it.
    """
    for year in sorted(set(years)):
        for kind in _wanted(index, tiles_dir, year, target, coarse):
            open_cube(tiles_dir, kind, year, index)  # present, readable, of the index's shape


def open_year(
    tiles_dir: str | Path,
    index: TileIndex,
    year: int,
    *,
    target: bool | None = None,
    coarse: bool | None = None,
) -> YearCubes:
    """Memory-map the cubes of one tiled year (read-only).

    The aux cube is always opened. ``target`` and ``coarse`` say whether the target and the
    coarse-product cubes are needed (True), not wanted (False), or opened when the index says the
    year has them (None); a cube the index lists must exist.

    Raises:
        InputDataError: The year is not tiled, a needed cube was never made or is missing (naming
            the command that makes it), or the aux cube has other bands than the index.
    """
    cubes = {
        kind: open_cube(tiles_dir, kind, year, index)
        for kind in _wanted(index, tiles_dir, year, target, coarse)
    }
    aux = cubes["X"]
    if aux.ndim != 4 or aux.shape[1] != len(index.bands):
        path = TilesLayout(Path(tiles_dir)).cube("X", year)
        raise InputDataError(
            f"{path} has shape {aux.shape} but the index lists {len(index.bands)} bands; "
            f"run 'carbongeo tile --year {year}' again"
        )
    return YearCubes(year, aux, cubes.get("Y"), cubes.get("C"))


def open_aux_target(
    tiles_dir: str | Path, index: TileIndex, year: int
) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map the aux and target cubes of a year that must have a target (training, checks).

    Raises:
        InputDataError: As :func:`open_year` with ``target=True``.
    """
    cubes = open_year(tiles_dir, index, year, target=True, coarse=False)
    assert cubes.target is not None  # open_year raises when a needed target is missing
    return cubes.aux, cubes.target


def read_window(
    cube: np.ndarray, index_or_grid: TileIndex | Grid, window: Window, fill: float = np.nan
) -> np.ndarray:
    """Assemble an arbitrary window from a tile cube.

    Works on any cube of the tile layout (``[N, C, t, t]`` with ``N`` = tile rows x tile cols of
    the grid), including memory-mapped ones: only the tiles the window touches are read. The
    window is in pixels of the cube's own resolution: fine pixels for ``X``/``Y`` cubes, coarse
    cells for ``C`` cubes (whose tile side is ``tile_size / scale``).

    Args:
        cube: The cube ``[N, C, t, t]``.
        index_or_grid: The tile index or the grid the cube was cut from.
        window: Pixels to read; it may straddle tiles, the padding, or leave the padded grid.
        fill: Value of the pixels outside the padded grid.

    Returns:
        Array ``[C, window.height, window.width]`` of the cube's dtype.
    """
    grid = index_or_grid.grid if isinstance(index_or_grid, TileIndex) else index_or_grid
    if cube.ndim != 4 or cube.shape[-1] != cube.shape[-2]:
        raise ValueError(f"expected a cube [N, C, t, t], got shape {cube.shape}")
    n_tiles, channels, size = cube.shape[0], cube.shape[1], cube.shape[-1]
    if n_tiles != grid.tile_rows * grid.tile_cols:
        raise ValueError(
            f"cube has {n_tiles} tiles but the grid has {grid.tile_rows} x {grid.tile_cols}"
        )
    out = np.full((channels, window.height, window.width), fill, dtype=cube.dtype)
    inside = window.clip(grid.tile_rows * size, grid.tile_cols * size)
    if inside.height == 0 or inside.width == 0:
        return out
    row_end, col_end = inside.row + inside.height, inside.col + inside.width
    for tile_row in range(inside.row // size, (row_end - 1) // size + 1):
        r0, r1 = max(inside.row, tile_row * size), min(row_end, (tile_row + 1) * size)
        for tile_col in range(inside.col // size, (col_end - 1) // size + 1):
            c0, c1 = max(inside.col, tile_col * size), min(col_end, (tile_col + 1) * size)
            tile = cube[tile_row * grid.tile_cols + tile_col]
            out[:, r0 - window.row : r1 - window.row, c0 - window.col : c1 - window.col] = tile[
                :,
                r0 - tile_row * size : r1 - tile_row * size,
                c0 - tile_col * size : c1 - tile_col * size,
            ]
    return out


# --------------------------------------------------------------------------- one tile at a time
@dataclass(frozen=True)
class TileData:
    """Everything the evaluation needs on one tile of one year.

    Attributes:
        tile_id: Tile id.
        window: The tile's window on the padded grid.
        truth: ``[ts, ts]`` float64 truth (NaN nodata and outside the scene), or None for a year
            tiled without a target.
        coarse: ``[ts / s, ts / s]`` float64 coarse input: the coarse product when tiled, else the
            truth summed over coarse cells.
        inside: ``[ts, ts]`` bool, pixels inside the unpadded scene.
        domain: ``[ts, ts]`` bool, pixels where a baseline may place mass (inside the scene and
            in the aux domain).
        aux: ``[C, ts, ts]`` float64 aux bands in raw units (log1p undone).
        bands: Aux band names.
        prediction: ``[ts, ts]`` float64 model prediction (NaN nodata), or None.
        allowed: ``[ts, ts]`` bool, pixels that are not a hard zero class (``zero_classes`` of
            the config), or None when no band declares any.
    """

    tile_id: int
    window: Window
    truth: np.ndarray | None
    coarse: np.ndarray
    inside: np.ndarray
    domain: np.ndarray
    aux: np.ndarray
    bands: tuple[str, ...]
    prediction: np.ndarray | None
    allowed: np.ndarray | None = None

    def band(self, name: str) -> np.ndarray:
        """Raw values of aux band ``name``."""
        return self.aux[self.bands.index(name)]

    @property
    def water(self) -> np.ndarray | None:
        """Bool mask where a band named ``water`` is 1, or None without such a band."""
        if WATER_BAND not in self.bands:
            return None
        return np.isclose(self.band(WATER_BAND), 1.0)


class TileStore:
    """Read tiles, coarse inputs and predictions of a tiled pipeline (memory-mapped).

    Args:
        config: The pipeline.

    Raises:
        InputDataError: If the tile index is missing.
    """

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.layout = config.layout
        self.tiles_dir = self.layout.tiles_dir
        self.index = load_index(self.tiles_dir)
        self.grid = self.index.grid
        self.scale = self.grid.scale
        self.tile_size = self.grid.tile_size
        self.bands = tuple(self.index.bands)
        # The transform the cubes were made with (the index), else the config's.
        transforms = {a.name: a.transform for a in config.aux}
        transforms |= {a["name"]: a["transform"] for a in self.index.aux if "transform" in a}
        self.log1p_bands = [transforms.get(b) == "log1p" for b in self.bands]
        self._cubes: dict[int, YearCubes] = {}
        self._predictions: dict[int, np.ndarray] = {}

    @property
    def tile_ids(self) -> list[int]:
        """Every tile id in the index."""
        return [t.id for t in self.index.tiles]

    def prediction_path(self, year: int) -> Path:
        """``predictions/Pred_<year>.npy``."""
        return self.layout.prediction_npy(year)

    def has_prediction(self, year: int) -> bool:
        """True when the ``.npy`` prediction of ``year`` exists."""
        return self.prediction_path(year).is_file()

    def _year(self, year: int) -> YearCubes:
        if year not in self._cubes:
            self._cubes[year] = open_year(self.tiles_dir, self.index, year)
        return self._cubes[year]

    def _prediction(self, year: int) -> np.ndarray:
        from carbongeo.store.predictions import open_prediction

        if year not in self._predictions:
            self._predictions[year] = open_prediction(self.layout, year, self.grid)
        return self._predictions[year]

    def _truth_cube(self, year: int) -> np.ndarray:
        self.index.require_target(year)
        cube = self._year(year).target
        assert cube is not None
        return cube

    def cube_aux(self, year: int, tile_id: int) -> np.ndarray:
        """The aux values ``[C, ts, ts]`` of one tile as the cube holds them (after the band
        transforms, float32, NaN nodata): the network's input before normalisation."""
        return np.asarray(self._year(year).aux[self.index.position(tile_id)])

    def truth_total(self, year: int, tile_id: int) -> float:
        """Sum of the valid truth of one tile.

        Raises:
            InputDataError: ``year`` has no target.
        """
        cube = self._truth_cube(year)
        return float(np.nansum(cube[self.index.position(tile_id), 0], dtype=np.float64))

    def truth_range(self, years: Sequence[int], tile_ids: Sequence[int]) -> tuple[float, float]:
        """Linear and log1p truth range (max - min) over the given tiles and years.

        Raises:
            InputDataError: One of ``years`` has no target.
        """
        return _ranges(
            self._truth_cube(year)[self.index.position(tile_id), 0]
            for year in years
            for tile_id in tile_ids
        )

    def coarse_range(self, years: Sequence[int], tile_ids: Sequence[int]) -> tuple[float, float]:
        """Linear and log1p range of the coarse input (:attr:`TileData.coarse`) over the tiles.

        Raises:
            InputDataError: A year has neither a coarse product nor a target.
        """
        return _ranges(
            self.load(year, tile_id, with_prediction=False).coarse
            if self._year(year).coarse is None
            else self._year(year).coarse[self.index.position(tile_id), 0]
            for year in years
            for tile_id in tile_ids
        )

    def load(self, year: int, tile_id: int, *, with_prediction: bool = True) -> TileData:
        """The truth, coarse input, aux and prediction of one tile in one year.

        Raises:
            InputDataError: A cube or the prediction is missing (naming the command to run), or
                the year has neither a target nor a coarse product.
        """
        # Imported here so that reading the index or a cube never imports torch.
        from carbongeo.ops.blocks import block_sum
        from carbongeo.ops.domain import allowed_pixels, aux_domain

        cubes = self._year(year)
        prediction_scene = self._prediction(year) if with_prediction else None
        position = self.index.position(tile_id)
        record = self.index.tiles[position]
        ts, s = self.tile_size, self.scale
        window = Window(record.row, record.col, ts, ts)
        inner = window.clip(self.grid.height, self.grid.width)
        inside = np.zeros((ts, ts), dtype=bool)
        inside[: inner.height, : inner.width] = True

        truth = None
        if cubes.target is not None:
            truth = np.where(inside, np.asarray(cubes.target[position, 0], np.float64), np.nan)
        aux = np.asarray(cubes.aux[position], dtype=np.float64).copy()
        for channel, is_log in enumerate(self.log1p_bands):
            if is_log:
                aux[channel] = np.expm1(aux[channel])
        domain = inside & aux_domain(aux)
        if cubes.coarse is not None:
            coarse = np.asarray(cubes.coarse[position, 0], dtype=np.float64)
        elif truth is not None:
            coarse = block_sum(np.where(inside, truth, np.nan), s, nodata_as_zero=True)
        else:
            raise InputDataError(
                f"year {year} has neither a target nor a coarse product in {self.tiles_dir}; "
                f"run 'carbongeo tile --year {year}' with a [coarse] product"
            )

        prediction = None
        if prediction_scene is not None:
            prediction = np.full((ts, ts), np.nan)
            rows, cols = inner.slices()
            prediction[: inner.height, : inner.width] = prediction_scene[rows, cols]
        return TileData(
            tile_id=tile_id,
            window=window,
            truth=truth,
            coarse=coarse,
            inside=inside,
            domain=domain,
            aux=aux,
            bands=self.bands,
            prediction=prediction,
            allowed=allowed_pixels(aux, self.bands, self.config.zero_classes()),
        )


def _ranges(arrays: Iterable[np.ndarray]) -> tuple[float, float]:
    """Linear and log1p range (max - min) of the finite values of ``arrays`` (0.0 when none)."""
    lo, hi = math.inf, -math.inf
    for array in arrays:
        values = np.asarray(array, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if hi < lo:
        return 0.0, 0.0
    return hi - lo, float(np.log1p(max(hi, 0.0)) - np.log1p(max(lo, 0.0)))
