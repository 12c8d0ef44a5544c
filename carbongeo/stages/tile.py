"""``carbongeo tile``: align every source onto the grid and cut georeferenced year cubes.

For each year the stage writes, under ``<workdir>/tiles``, the aux cube ``X_<year>.npy``, the
target cube ``Y_<year>.npy`` (only in a year with a target, ``target.years``), the coarse-product
cube ``C_<year>.npy`` (only with a ``[coarse]`` product) and, last, ``index.json`` (formats and
readers in :mod:`carbongeo.store.tiles`), which records the years with a target.

The grid is processed in square blocks of tiles. Each block is one dask task that reads only the
source windows it needs and writes its own tiles into the cubes, so memory stays bounded whatever
the scene size, and blocks run in parallel (threads by default, or processes of a
``dask.distributed`` cluster: each task opens the cube files itself). Every cube is written under a
temporary name and renamed when all blocks are done; ``index.json`` is written last. All sources of
all requested years are validated before anything is written, so a bad input leaves no partial
output.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError

from carbongeo.config import PipelineConfig, SourceConfig
from carbongeo.errors import ConfigError, GridError, InputDataError, OutputError
from carbongeo.grid import Grid, Window
from carbongeo.io.atomic import AtomicGroup, file_lock, output_error, remove_stale_temps
from carbongeo.io.sources import (
    GDAL_CACHE_MB,
    Bounds,
    RasterSource,
    SourceInfo,
    align_window,
    describe_source,
    limit_gdal_cache,
    source_total,
    validate_source,
)
from carbongeo.parallel import check_options, picklable_errors, run_tasks, worker_count
from carbongeo.store.layout import TilesLayout
from carbongeo.store.tiles import (
    TileIndex,
    TileRecord,
    create_cube,
    cube_shapes,
    load_index,
    write_block,
    write_index,
)

log = logging.getLogger(__name__)

# Default block side in pixels: about 4 MB per band of float32, a good balance between GDAL call
# overhead and memory per parallel task.
_BLOCK_PIXELS = 1024


# --------------------------------------------------------------------------- the grid
def build_grid(config: PipelineConfig) -> Grid:
    """The fine grid of a pipeline.

    ``[grid] crs / resolution / bounds`` when given; otherwise the grid of the target raster of
    the first target year whose file exists, or, without a target, the coarse product's grid
    refined by ``scale``. ``tile_size`` and ``scale`` come from ``[grid]``.

    Raises:
        ConfigError: The grid CRS is invalid or no target (coarse) file exists.
        InputDataError: The raster cannot be read or has no CRS.
    """
    gc = config.grid
    if gc.crs is not None and gc.resolution is not None and gc.bounds is not None:
        try:
            wkt = CRS.from_user_input(gc.crs).to_wkt()
        except CRSError as err:
            raise ConfigError(
                f'grid.crs: {gc.crs!r} is not a CRS GDAL knows; use e.g. "EPSG:32650" ({err})'
            ) from err
        return Grid.from_bounds(
            wkt, gc.resolution, tuple(gc.bounds), tile_size=gc.tile_size, scale=gc.scale
        )
    target = config.target
    if target is None:
        assert config.coarse is not None  # the config requires one without a target
        return _grid_of(config, config.coarse, config.years, refine=True)
    return _grid_of(config, target, config.target_years, refine=False)


def _grid_of(
    config: PipelineConfig, src: SourceConfig, years: Sequence[int], *, refine: bool
) -> Grid:
    """The grid of ``src``'s raster in the first of ``years`` with a file (refined by scale)."""
    gc = config.grid
    key = config.source_key(src)
    year = next((y for y in years if src.path_for(y).exists()), years[0])
    if not src.path_for(year).exists():
        what = "coarse product's grid refined by grid.scale" if refine else "target raster's grid"
        raise ConfigError(
            f"{key}: no {src.name} file found for any year (first: {src.path_for(year)}); the "
            f"default grid is the {what}"
        )
    source = raster_source(config, src, year)
    meta = describe_source(source)
    try:
        if refine:
            return Grid.from_coarse(
                meta.crs,
                meta.transform,
                meta.height,
                meta.width,
                tile_size=gc.tile_size,
                scale=gc.scale,
            )
        return Grid(meta.crs, meta.transform, meta.height, meta.width, gc.tile_size, gc.scale)
    except GridError as err:
        raise GridError(f"{source.label}: {err}") from err


def coarse_scene_grid(grid: Grid) -> Grid:
    """The coarse cells that touch the scene, as a grid (the coarse grid without empty padding).

    Same origin and cell size as :meth:`Grid.coarse_grid`, but ``ceil(height / scale)`` x
    ``ceil(width / scale)`` cells: coarse cells entirely in the padding are left NaN.
    """
    return Grid(
        grid.crs,
        grid.coarse_transform,
        math.ceil(grid.height / grid.scale),
        math.ceil(grid.width / grid.scale),
        tile_size=1,
        scale=1,
    )


# --------------------------------------------------------------------------- blocks
@dataclass(frozen=True)
class Block:
    """A rectangle of whole tiles processed by one task: tile rows/cols ``[r0, r1) x [c0, c1)``."""

    r0: int
    r1: int
    c0: int
    c1: int

    def window(self, tile_size: int) -> Window:
        """The block's window on the padded grid, in pixels of ``tile_size``-pixel tiles."""
        return Window(
            self.r0 * tile_size,
            self.c0 * tile_size,
            (self.r1 - self.r0) * tile_size,
            (self.c1 - self.c0) * tile_size,
        )


def plan_blocks(grid: Grid, block_tiles: int) -> list[Block]:
    """Square blocks of ``block_tiles x block_tiles`` tiles (smaller at the edges), row-major."""
    if block_tiles < 1:
        raise ValueError(f"block_tiles must be >= 1, got {block_tiles}")
    return [
        Block(r, min(r + block_tiles, grid.tile_rows), c, min(c + block_tiles, grid.tile_cols))
        for r in range(0, grid.tile_rows, block_tiles)
        for c in range(0, grid.tile_cols, block_tiles)
    ]


def default_block_tiles(grid: Grid) -> int:
    """Tiles per block side so that a block is about 1024 x 1024 pixels."""
    return max(1, _BLOCK_PIXELS // grid.tile_size)


# --------------------------------------------------------------------------- one block
@dataclass(frozen=True)
class _Band:
    source: RasterSource
    info: SourceInfo
    transform: str = "none"


@dataclass(frozen=True)
class _YearPlan:
    year: int
    target: _Band | None  # None: a year without a target
    coarse: _Band | None
    aux: tuple[_Band, ...]


@dataclass(frozen=True)
class _YearOutput:
    """One year of a block task: its sources and the (temporary) cube files to write."""

    plan: _YearPlan
    x_path: str
    y_path: str | None
    c_path: str | None


@dataclass(frozen=True)
class _BlockJob:
    """Everything one block task needs; small and picklable."""

    grid: Grid
    block: Block
    years: tuple[_YearOutput, ...]


@dataclass(frozen=True)
class _BlockResult:
    year: int
    tile_ids: tuple[int, ...]
    valid_counts: tuple[int, ...]
    target_total: float
    coarse_total: float
    negative_count: int = 0
    lowest: float = math.inf
    coarse_valid_counts: tuple[int, ...] = ()


def apply_transform(values: np.ndarray, name: str) -> np.ndarray:
    """Apply an aux band's value transform (``none`` or ``log1p``) in place; NaN stays NaN.

    ``log1p`` of values below -1 is undefined and becomes NaN (nodata).
    """
    if name == "none":
        return values
    if name == "log1p":
        with np.errstate(invalid="ignore", divide="ignore"):
            np.log1p(values, out=values)
        values[~np.isfinite(values)] = np.nan
        return values
    raise ValueError(f"unknown transform {name!r}")


class _Aligner:
    """Aligns bands on one block window, once per source file even when years share it."""

    def __init__(self, job: _BlockJob) -> None:
        self.grid = job.grid
        self.window = job.block.window(job.grid.tile_size)
        s = job.grid.scale
        w = self.window
        self.coarse_grid = coarse_scene_grid(job.grid)
        self.coarse_window = Window(w.row // s, w.col // s, w.height // s, w.width // s)
        bands = [b for y in job.years for b in (y.plan.target, y.plan.coarse, *y.plan.aux)]
        # Static sources (the same file every year) are aligned once and kept for the next year.
        uses = Counter(b.source for b in bands if b is not None)
        self.shared = {source for source, n in uses.items() if n > 1}
        self._cache: dict[tuple[RasterSource, bool], np.ndarray] = {}

    def __call__(self, band: _Band, *, coarse: bool = False) -> np.ndarray:
        key = (band.source, coarse)
        if key in self._cache:
            return self._cache[key].copy()
        if coarse:
            values = align_window(band.source, band.info, self.coarse_grid, self.coarse_window)
        else:
            values = align_window(band.source, band.info, self.grid, self.window)
        if band.source in self.shared:
            self._cache[key] = values.copy()
        return values


@picklable_errors
def _run_block(job: _BlockJob) -> list[_BlockResult]:
    """Align every source on one block for each year, write the tiles, return counts, totals."""
    limit_gdal_cache()
    grid, block = job.grid, job.block
    ts = grid.tile_size
    align = _Aligner(job)
    results = []
    for out in job.years:
        plan = out.plan
        target = align(plan.target)[None] if plan.target is not None else None
        shape = (align.window.height, align.window.width)
        aux = np.empty((len(plan.aux), *shape), dtype=np.float32)
        for channel, band in enumerate(plan.aux):
            aux[channel] = apply_transform(align(band), band.transform)
        coarse = None
        if plan.coarse is not None:  # a cut cell carries only its share inside the scene
            coarse = align(plan.coarse, coarse=True)[None]
            coarse *= grid.coarse_inside_share(align.coarse_window)
        try:
            if target is not None and out.y_path is not None:
                write_block(out.y_path, target, block.r0, block.c0, grid.tile_cols)
            write_block(out.x_path, aux, block.r0, block.c0, grid.tile_cols)
            if coarse is not None and out.c_path is not None:
                write_block(out.c_path, coarse, block.r0, block.c0, grid.tile_cols)
        except OSError as err:
            raise output_error(err.filename or out.x_path, err) from err
        ids = [
            tile_row * grid.tile_cols + tile_col
            for tile_row in range(block.r0, block.r1)
            for tile_col in range(block.c0, block.c1)
        ]
        n_negative, lowest, counts = 0, math.inf, []
        if target is not None:
            negative = target[0] < 0  # NaN compares False
            n_negative = int(np.count_nonzero(negative))
            lowest = float(target[0][negative].min()) if n_negative else math.inf
            counts = _tile_counts(np.isfinite(target[0]), block, ts)
        results.append(
            _BlockResult(
                year=plan.year,
                tile_ids=tuple(ids),
                valid_counts=tuple(counts),
                target_total=(
                    float(np.nansum(target, dtype=np.float64)) if target is not None else 0.0
                ),
                coarse_total=(
                    float(np.nansum(coarse, dtype=np.float64)) if coarse is not None else 0.0
                ),
                negative_count=n_negative,
                lowest=lowest,
                coarse_valid_counts=(
                    tuple(_tile_counts(np.isfinite(coarse[0]), block, ts // grid.scale))
                    if coarse is not None
                    else ()
                ),
            )
        )
    return results


def _tile_counts(valid: np.ndarray, block: Block, side: int) -> list[int]:
    """Valid pixels of each tile of a block (row-major), on a grid of ``side``-pixel tiles."""
    counts = []
    for tile_row in range(block.r1 - block.r0):
        for tile_col in range(block.c1 - block.c0):
            r, c = tile_row * side, tile_col * side
            counts.append(int(valid[r : r + side, c : c + side].sum()))
    return counts


@picklable_errors
def _total_task(source: RasterSource, info: SourceInfo, bounds: Bounds) -> float:
    limit_gdal_cache()
    return source_total(source, info, bounds)


# --------------------------------------------------------------------------- planning
def raster_source(config: PipelineConfig, src: SourceConfig, year: int) -> RasterSource:
    """The raster of ``year`` described by a config entry, labelled with its config key."""
    return RasterSource(
        name=src.name,
        path=str(src.path_for(year)),
        kind=src.kind,
        band=src.band,
        nodata=src.nodata,
        key=config.source_key(src),
    )


def _plan_years(config: PipelineConfig, grid: Grid, years: Sequence[int]) -> list[_YearPlan]:
    """Validate every source of every year against the grid (before anything is written)."""
    coarse_grid = coarse_scene_grid(grid)
    cache: dict[tuple[RasterSource, bool], SourceInfo] = {}

    def band(src: SourceConfig, year: int, *, coarse: bool = False) -> _Band:
        source = raster_source(config, src, year)
        if (source, coarse) not in cache:
            cache[(source, coarse)] = validate_source(source, coarse_grid if coarse else grid)
        return _Band(source, cache[(source, coarse)], src.transform)

    return [
        _YearPlan(
            year=year,
            target=(
                band(config.target, year)
                if config.target is not None and config.has_target(year)
                else None
            ),
            coarse=band(config.coarse, year, coarse=True) if config.coarse else None,
            aux=tuple(band(a, year) for a in config.aux),
        )
        for year in years
    ]


def _index_meta(config: PipelineConfig) -> dict[str, Any]:
    return {
        "bands": config.aux_names,
        "aux": [
            {"name": a.name, "kind": a.kind, "transform": a.transform, "units": a.units}
            for a in config.aux
        ],
        "target": {"units": config.emission_units, "kind": "extensive"},
        "has_coarse": config.coarse is not None,
    }


def _existing_index(tiles_dir: Path) -> TileIndex | None:
    return load_index(tiles_dir) if TilesLayout(tiles_dir).index.exists() else None


def _check_compatible(
    existing: TileIndex, grid: Grid, meta: dict[str, Any], tiles_dir: Path
) -> None:
    fix = f"delete {tiles_dir} or use a new workdir to tile with the new settings"
    if not existing.grid.same_geometry(grid):
        raise ConfigError(
            f"grid: the existing tiles in {tiles_dir} were cut on another grid; {fix}"
        )
    old_aux = [(a.get("name"), a.get("kind"), a.get("transform")) for a in existing.aux]
    new_aux = [(a["name"], a["kind"], a["transform"]) for a in meta["aux"]]
    if existing.bands != meta["bands"] or old_aux != new_aux:
        raise ConfigError(
            f"aux: the existing tiles in {tiles_dir} have other bands "
            f"({', '.join(existing.bands)}) or band settings; {fix}"
        )
    if existing.has_coarse != meta["has_coarse"]:
        raise ConfigError(
            f"coarse: the existing tiles in {tiles_dir} were cut "
            f"{'with' if existing.has_coarse else 'without'} a [coarse] product; {fix}"
        )


def _check_free_space(tiles_dir: Path, needed: int) -> None:
    try:
        free = shutil.disk_usage(tiles_dir).free
    except OSError:
        return
    if needed > free:
        raise OutputError(
            f"{tiles_dir}: the cubes need {needed / 1e9:.2f} GB but only {free / 1e9:.2f} GB "
            "are free; free some space or choose another workdir"
        )


def tile_years(
    config: PipelineConfig,
    years: Sequence[int],
    *,
    progress: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
    block_tiles: int | None = None,
) -> TileIndex:
    """Align every source onto the grid and write the year cubes and ``index.json``.

    Years already in an existing index are kept (their cubes are rewritten only when tiled
    again); the index's years, valid fractions and totals are merged.

    Args:
        config: The pipeline.
        years: Years to tile.
        progress: Show a progress bar over blocks on stderr.
        scheduler: The address of a running dask scheduler (``"tcp://host:8786"``; its workers
            must see the same files), ``"distributed"`` (a local ``dask.distributed`` cluster),
            or a local dask scheduler name (``"threads"``, ``"synchronous"`` for debugging,
            ``"processes"``). Default: threads, or a local cluster when ``workers`` is given.
        workers: Processes of the local cluster (threads/processes of a local scheduler);
            None or 0: one per CPU. The rules are those of :func:`carbongeo.parallel.run_tasks`.
        block_tiles: Side of a block in tiles (default: about 1024 pixels); memory per task is
            about ``(block_tiles * tile_size) ** 2 * 4`` bytes per band.

    Returns:
        The index written to ``tiles/index.json``.

    Raises:
        ConfigError: A file is missing for a year, or the existing tiles were cut with another
            grid or other bands.
        InputDataError: A source is corrupt, has no CRS, lacks the band or misses the grid; or
            a year's target has no valid pixel on the grid or negative emissions.
        OutputError: The cubes cannot be written.
        ParameterError: ``workers`` is negative.
        ClusterError: The dask scheduler cannot be reached or the cluster failed.
    """
    years = sorted({int(y) for y in years})
    if not years:
        raise ConfigError("years: nothing to tile; give at least one year")
    check_options(scheduler, workers)  # a bad value fails before anything is written
    config.check_files(years)
    grid = build_grid(config)
    grid.check_tile_size()
    if config.coarse is not None and grid.cuts_coarse_cells:
        log.info(
            "grid: the scene (%d x %d px) is not a whole number of %d px coarse cells; the cut "
            "cells keep only the share of their coarse mass inside the scene",
            grid.height,
            grid.width,
            grid.scale,
        )
    plans = _plan_years(config, grid, years)
    meta = _index_meta(config)
    tiles_dir = config.tiles_dir
    tiles = config.layout.tiles
    existing = _existing_index(tiles_dir)
    if existing is not None:
        _check_compatible(existing, grid, meta, tiles_dir)

    shapes = cube_shapes(grid, len(config.aux), config.coarse is not None)
    try:
        tiles_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(tiles_dir, err) from err
    remove_stale_temps(tiles_dir)
    bytes_per_year = sum(4 * math.prod(shape) for shape in shapes.values())
    _check_free_space(tiles_dir, bytes_per_year * len(years))

    blocks = plan_blocks(grid, block_tiles or default_block_tiles(grid))
    prefix = f"carbongeo-tile-{os.getpid()}-"
    with AtomicGroup() as group:
        outputs: list[_YearOutput] = []
        for plan in plans:
            paths: dict[str, str] = {}
            for kind, shape in shapes.items():
                if kind == "Y" and plan.target is None:
                    continue  # a year without a target has no target cube
                tmp = group.add(tiles.cube(kind, plan.year))
                create_cube(tmp, shape)
                paths[kind] = str(tmp)
            outputs.append(_YearOutput(plan, paths["X"], paths.get("Y"), paths.get("C")))
        tasks: list[Any] = []
        for group_years in _year_groups(outputs, len(blocks), workers):
            for block in blocks:
                job = _BlockJob(grid, block, group_years)
                key = f"{prefix}block-{group_years[0].plan.year}-{block.r0}-{block.c0}"
                tasks.append(dask.delayed(_run_block, pure=False)(job, dask_key_name=key))
        totals_tasks, total_keys = _total_tasks(plans, grid, prefix)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            results = run_tasks(
                tasks + totals_tasks,
                scheduler=scheduler,
                workers=workers,
                progress=progress,
                desc="tile",
                unit="block",
            )
        block_results = [r for task_results in results[: len(tasks)] for r in task_results]
        source_totals = dict(zip(total_keys, results[len(tasks) :], strict=True))
        _check_target_values(plans, block_results)  # before anything is committed

        with file_lock(tiles.index_lock):
            # Re-read under the lock: another run may have added years meanwhile.
            existing = _existing_index(tiles_dir)
            if existing is not None:
                _check_compatible(existing, grid, meta, tiles_dir)
            index = _merge_index(existing, grid, meta, config, plans, block_results, source_totals)
            group.commit()
            index.years = [
                y
                for y in index.years
                if all(tiles.cube(kind, y).exists() for kind in index.cube_kinds(y))
            ]
            index.target_years = [y for y in index.target_years or [] if y in index.years]
            write_index(tiles_dir, index)
    _warn_on_totals(plans, index)
    return index


def _check_target_values(plans: list[_YearPlan], block_results: list[_BlockResult]) -> None:
    """Refuse a target year that has no valid pixel on the grid or holds negative emissions.

    Both are data errors (a wrong nodata value, a misplaced grid, a sign error): training on them
    would silently learn nothing or learn nonsense, so the tile stage stops with one line naming
    the file before any cube is published.

    Raises:
        InputDataError: The first such year, naming the file and the number of pixels.
    """
    valid: Counter[int] = Counter()
    negative: Counter[int] = Counter()
    lowest: dict[int, float] = {}
    for result in block_results:
        valid[result.year] += sum(result.valid_counts)
        negative[result.year] += result.negative_count
        lowest[result.year] = min(lowest.get(result.year, math.inf), result.lowest)
    for plan in plans:
        if plan.target is None:
            continue
        label = plan.target.source.label
        if valid[plan.year] == 0:
            raise InputDataError(
                f"{label}: no valid pixel on the grid for {plan.year} (all nodata); check the "
                f"file's nodata value (or target.nodata) and the grid, or leave {plan.year} out "
                "of years"
            )
        if negative[plan.year]:
            raise InputDataError(
                f"{label}: {negative[plan.year]} pixel(s) with negative emissions on the grid for "
                f"{plan.year} (lowest {lowest[plan.year]:.6g}); emissions cannot be negative: fix "
                "the file, or declare the value as nodata with target.nodata"
            )


def _year_groups(
    outputs: list[_YearOutput], n_blocks: int, workers: int | None
) -> list[tuple[_YearOutput, ...]]:
    """Split the years into groups, one task per block and group.

    A task aligns a static source once for all its years, so years are grouped as much as the
    parallelism allows: all in one group when there are enough blocks to keep every worker busy.
    """
    parallel = worker_count(workers)
    n_groups = min(len(outputs), max(1, math.ceil(2 * parallel / n_blocks)))
    size = math.ceil(len(outputs) / n_groups)
    return [tuple(outputs[i : i + size]) for i in range(0, len(outputs), size)]


def _total_tasks(plans: list[_YearPlan], grid: Grid, prefix: str) -> tuple[list[Any], list[str]]:
    """One task per distinct extensive source file: the source total inside the scene."""
    scene = grid.bounds
    tasks: list[Any] = []
    keys: list[str] = []
    for plan in plans:
        bands = [(band, scene) for band in (plan.target, plan.coarse) if band is not None]
        for band, bounds in bands:
            key = _total_key(band)
            if key in keys:
                continue
            keys.append(key)
            tasks.append(
                dask.delayed(_total_task, pure=False)(
                    band.source, band.info, bounds, dask_key_name=f"{prefix}total-{len(keys)}"
                )
            )
    return tasks, keys


def _total_key(band: _Band) -> str:
    return f"{band.source.path}|{band.source.band}|{band.source.nodata}|{band.source.variable}"


def _merge_index(
    existing: TileIndex | None,
    grid: Grid,
    meta: dict[str, Any],
    config: PipelineConfig,
    plans: list[_YearPlan],
    block_results: list[_BlockResult],
    source_totals: dict[str, float],
) -> TileIndex:
    """The new index: the existing one (if any) updated with this run's years."""
    tiles = [TileRecord(t.id, t.row, t.col) for t in grid.iter_tiles()]
    totals: dict[int, dict[str, float | None]] = {}
    new_years = {plan.year for plan in plans}
    old_years: list[int] = []
    old_target_years: set[int] = set()
    if existing is not None:
        old_years = [y for y in existing.years if y not in new_years]
        old_target_years = {y for y in old_years if existing.has_target(y)}
        for record, old in zip(tiles, existing.tiles, strict=True):
            record.valid_fraction = {y: f for y, f in old.valid_fraction.items() if y in old_years}
            record.coarse_valid_fraction = {
                y: f for y, f in old.coarse_valid_fraction.items() if y in old_years
            }
        totals = {y: t for y, t in existing.totals.items() if y in old_years}
    area = grid.tile_size * grid.tile_size
    cells = (grid.tile_size // grid.scale) ** 2
    aligned: dict[int, list[float]] = {y: [0.0, 0.0] for y in new_years}
    for result in block_results:
        for tile_id, count in zip(result.tile_ids, result.valid_counts, strict=False):
            tiles[tile_id].valid_fraction[result.year] = count / area
        for tile_id, count in zip(result.tile_ids, result.coarse_valid_counts, strict=False):
            tiles[tile_id].coarse_valid_fraction[result.year] = count / cells
        aligned[result.year][0] += result.target_total
        aligned[result.year][1] += result.coarse_total
    for plan in plans:
        totals[plan.year] = {
            "target_source": source_totals[_total_key(plan.target)] if plan.target else None,
            "target_aligned": aligned[plan.year][0] if plan.target else None,
            "coarse_source": source_totals[_total_key(plan.coarse)] if plan.coarse else None,
            "coarse_aligned": aligned[plan.year][1] if plan.coarse else None,
        }
    return TileIndex(
        grid=grid,
        years=sorted(set(old_years) | new_years),
        bands=list(meta["bands"]),
        aux=list(meta["aux"]),
        target=dict(meta["target"]),
        has_coarse=bool(meta["has_coarse"]),
        tiles=tiles,
        totals=totals,
        config_hash=config.tiles_hash(),
        target_years=sorted(old_target_years | {p.year for p in plans if p.target is not None}),
    )


def _warn_on_totals(plans: list[_YearPlan], index: TileIndex) -> None:
    """Log when an extensive source lying inside the grid lost or gained mass in alignment."""
    scenes = {"target": index.grid.bounds, "coarse": index.grid.bounds}
    for plan in plans:
        t = index.totals[plan.year]
        pairs = []
        if plan.target is not None:
            pairs.append(("target", plan.target, t["target_source"], t["target_aligned"]))
        if plan.coarse is not None:
            pairs.append(("coarse", plan.coarse, t["coarse_source"], t["coarse_aligned"]))
        for name, band, before, after in pairs:
            inside = band.info.complete and _inside(scenes[name], band.info.footprint)
            if inside and before and after is not None and abs(after / before - 1) > 1e-3:
                log.warning(
                    "%s %d: total changed by %.3g%% in alignment (%.6g -> %.6g)",
                    name,
                    plan.year,
                    100 * (after / before - 1),
                    before,
                    after,
                )


def _inside(outer: Bounds, inner: Bounds) -> bool:
    return (
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and inner[2] <= outer[2]
        and inner[3] <= outer[3]
    )
