"""Streaming mosaic: seamless, mass-conserving, georeferenced predictions of whole scenes.

The scene is covered by overlapping ``tile_size`` windows (``Grid.sliding_windows``), predicted
in batches and blended with smooth weights: a Hann (raised-cosine) ramp over the overlap on every
interior window edge and full weight on edges that touch the scene border, so every pixel has a
positive total weight and opposite ramps sum to one. ``sum(w * p)`` and ``sum(w)`` are accumulated
in a strip of rows as wide as the scene and only as tall as the windows being processed; rows that
no later window touches (always whole coarse cells) are normalised, re-projected onto the coarse
field so that every coarse cell of the output sums to its coarse total, and handed to the writers.
Memory is therefore flat in the scene area (it grows with the scene width only).

A pixel is nodata (NaN) when it lies outside the scene, when no aux band of the centre year has
data there (:func:`carbongeo.ops.domain.aux_domain`), or when its coarse cell is nodata;
nodata pixels carry no mass. Pixels of a hard zero class (``zero_classes``, e.g. water) are 0:
each cell's mass goes to its other valid pixels (:func:`carbongeo.ops.mass.mass_carriers`).

The prediction comes from the network of a checkpoint (``method="model"``) or from the
learned-dasymetric forest fitted on the run's coarse cells (``method="learned-dasymetric"``,
no network and no GPU); both stream through the same core and give the same kind of files.

:func:`predict_scene` is the pure streaming core: it takes any predict function, any window reader
and any row sink. :func:`mosaic_years` wires it to the tile cubes, a checkpoint and the outputs
``predictions/Pred_<year>.tif`` (a COG) and ``predictions/Pred_<year>.npy``, both published
atomically.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import torch
from tqdm import tqdm

from carbongeo.device import resolve_device
from carbongeo.errors import CheckpointError, InputDataError, ParameterError
from carbongeo.evaluation.forest import LEARNED_DASYMETRIC, FittedForest
from carbongeo.grid import Grid, Window
from carbongeo.models.finite import raw_prediction_guard
from carbongeo.ops.blocks import upsample_blocks
from carbongeo.ops.domain import allowed_pixels, aux_domain
from carbongeo.ops.mass import (
    cell_totals,
    mass_balance,
    mass_carriers,
    mass_on_masked,
    reproject_mass,
)
from carbongeo.outputs.units import cog_units
from carbongeo.parallel import check_options, picklable_errors, run_tasks
from carbongeo.stages.forests import fit_store_forest, forest_id, forest_predictor
from carbongeo.stages.freshness import check_checkpoint, check_tiles
from carbongeo.stages.prediction_checks import check_finite_predictions, non_finite_raw_prediction
from carbongeo.store.checkpoint import Checkpoint, load_checkpoint
from carbongeo.store.layout import missing_input
from carbongeo.store.predictions import file_sha256, open_prediction_pair, prediction_done
from carbongeo.store.tiles import (
    TileIndex,
    TileStore,
    check_cubes,
    load_index,
    open_cube,
    read_window,
)
from carbongeo.training.data import window_years
from carbongeo.training.normalization import Normalization
from carbongeo.training.setup import model_from_checkpoint

if TYPE_CHECKING:
    from carbongeo.config import PipelineConfig
    from carbongeo.models.network import DSTCarbonFormer

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]
"""``predict(aux [B, C, T, h, w], coarse [B, 1, T, h/s, w/s], allowed) -> [B, h, w]``.

``aux`` is as the reader gives it (normalised with nodata set to 0 for the network); ``coarse`` is
in physical units with nodata set to 0; ``allowed`` is the reader's hard zero-class mask
``[B, h, w]`` or None. The result (or ``[B, 1, h, w]``) is the centre year in physical units, or
any non-negative weights: the mosaic shares each cell's mass in proportion to it.
"""

RowSink = Callable[[np.ndarray], None]
"""Receives the finished output rows ``[n, width]`` (float32, NaN = nodata), top to bottom."""


@dataclass(frozen=True)
class WindowBatch:
    """Model inputs and masks of a batch of windows.

    Attributes:
        aux: float32 ``[B, C, T, h, w]``, normalised, nodata set to 0.
        coarse: float32 ``[B, 1, T, h/s, w/s]``, physical units, nodata set to 0.
        valid: bool ``[B, h, w]``, True inside the aux domain of the centre year.
        mass: float32 ``[B, h/s, w/s]``, the centre year's coarse totals the output must match,
            NaN where the coarse cell is nodata.
        allowed: bool ``[B, h, w]``, False on hard zero-class pixels, or None without any.
    """

    aux: np.ndarray
    coarse: np.ndarray
    valid: np.ndarray
    mass: np.ndarray
    allowed: np.ndarray | None = None


WindowReader = Callable[[Sequence[Window]], WindowBatch]
"""Reads the :class:`WindowBatch` of a list of windows (called from a background thread)."""


@dataclass
class SceneStats:
    """What :func:`predict_scene` measured while streaming a scene.

    Attributes:
        windows: Windows predicted.
        pixels: Scene pixels written (``height * width``).
        valid_pixels: Pixels with a value (not nodata).
        seconds: Wall time of the whole scene, reading and writing included.
        coarse_mass: Total of the positive coarse cells.
        unplaced_mass: Total of the positive coarse cells without a single valid pixel, which the
            output cannot carry.
        worst_cell_rel_error: Largest ``|sum(output) - coarse| / coarse`` over the coarse cells
            with a positive total and at least one valid pixel (0.0 when there is none).
        mass_on_masked: Total of the positive cells whose valid pixels are all of a zero class:
            their mass stays spread over those pixels.
    """

    windows: int = 0
    pixels: int = 0
    valid_pixels: int = 0
    seconds: float = 0.0
    coarse_mass: float = 0.0
    unplaced_mass: float = 0.0
    worst_cell_rel_error: float = 0.0
    mass_on_masked: float = 0.0

    @property
    def megapixels_per_s(self) -> float:
        """Scene throughput in megapixels per second."""
        return self.pixels / 1e6 / self.seconds if self.seconds > 0 else math.inf


# --------------------------------------------------------------------------- blending weights
def hann_ramp(length: int) -> np.ndarray:
    """A rising raised-cosine ramp of ``length`` values strictly between 0 and 1.

    ``ramp[i] = (1 - cos(pi * (i + 1) / (length + 1))) / 2``, so a ramp and the same ramp reversed
    sum to exactly one at every position: two windows that overlap by ``length`` pixels blend to
    weights that sum to one, and no pixel gets zero weight.
    """
    i = np.arange(1, length + 1, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(np.pi * i / (length + 1))).astype(np.float32)


def axis_profiles(starts: Sequence[int], size: int) -> dict[int, np.ndarray]:
    """1-D blending weights of windows of ``size`` pixels starting at ``starts`` along one axis.

    An edge shared with the previous (next) window gets a rising (falling) Hann ramp as long as
    the overlap between the two; the first and last edges touch the scene border and keep weight
    one. Ramps are capped at half the window, so the two ramps of one window never cross.

    Args:
        starts: Sorted, distinct window offsets along the axis.
        size: Window side in pixels.

    Returns:
        ``{start: weights}`` with float32 weights of length ``size``, all in ``(0, 1]``.
    """
    starts = sorted(set(starts))
    profiles: dict[int, np.ndarray] = {}
    for i, start in enumerate(starts):
        profile = np.ones(size, dtype=np.float32)
        if i > 0:
            rise = min(starts[i - 1] + size - start, size // 2)
            if rise > 0:
                profile[:rise] *= hann_ramp(rise)
        if i + 1 < len(starts):
            fall = min(start + size - starts[i + 1], size // 2)
            if fall > 0:
                profile[size - fall :] *= hann_ramp(fall)[::-1]
        profiles[start] = profile
    return profiles


def blend_profiles(
    windows: Sequence[Window], size: int
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Row and column blending profiles of a window grid; a window's weight is their outer product.

    Args:
        windows: The windows of :meth:`Grid.sliding_windows` (a regular grid of offsets).
        size: Window side in pixels.

    Returns:
        ``(rows, cols)``: ``rows[window.row]`` and ``cols[window.col]`` are 1-D weights.
    """
    rows = axis_profiles([w.row for w in windows], size)
    cols = axis_profiles([w.col for w in windows], size)
    return rows, cols


# --------------------------------------------------------------------------- the strip
class _Strip:
    """Accumulators for a band of rows as wide as the scene, starting at row ``top``."""

    def __init__(self, width: int, scale: int) -> None:
        self.width = width
        self.scale = scale
        self.top = 0
        self.weighted = np.zeros((0, width), dtype=np.float32)
        self.weight = np.zeros((0, width), dtype=np.float32)
        self.valid = np.zeros((0, width), dtype=bool)
        self.allowed = np.ones((0, width), dtype=bool)
        self.mass = np.full((0, width // scale), np.nan, dtype=np.float32)

    def _reserve(self, bottom: int) -> None:
        rows = bottom - self.top
        if rows <= self.weighted.shape[0]:
            return
        extra = rows - self.weighted.shape[0]
        self.weighted = np.concatenate([self.weighted, np.zeros((extra, self.width), np.float32)])
        self.weight = np.concatenate([self.weight, np.zeros((extra, self.width), np.float32)])
        self.valid = np.concatenate([self.valid, np.zeros((extra, self.width), bool)])
        self.allowed = np.concatenate([self.allowed, np.ones((extra, self.width), bool)])
        cells = np.full((extra // self.scale, self.width // self.scale), np.nan, np.float32)
        self.mass = np.concatenate([self.mass, cells])

    def add(
        self,
        window: Window,
        pred: np.ndarray,
        weight: np.ndarray,
        valid: np.ndarray,
        mass: np.ndarray,
        allowed: np.ndarray | None = None,
    ) -> None:
        """Accumulate one window; ``valid``, ``mass`` and ``allowed`` agree between windows, so
        they are set."""
        if window.row < self.top:
            raise ValueError(f"window at row {window.row} is above the flushed rows ({self.top})")
        self._reserve(window.row + window.height)
        rows = slice(window.row - self.top, window.row - self.top + window.height)
        cols = slice(window.col, window.col + window.width)
        self.weighted[rows, cols] += weight * pred
        self.weight[rows, cols] += weight
        self.valid[rows, cols] = valid
        if allowed is not None:
            self.allowed[rows, cols] = allowed
        s = self.scale
        cell_rows = slice(rows.start // s, rows.stop // s)
        self.mass[cell_rows, window.col // s : (window.col + window.width) // s] = mass

    def pop(self, bottom: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Remove rows ``[top, bottom)``; returns their blended values, validity, coarse cells
        and zero-class mask."""
        n = bottom - self.top
        self._reserve(bottom)
        with np.errstate(invalid="ignore", divide="ignore"):
            blended = self.weighted[:n] / self.weight[:n]
        valid = self.valid[:n] & (self.weight[:n] > 0)
        mass = self.mass[: n // self.scale].copy()
        allowed = self.allowed[:n].copy()
        for array in (self.weighted, self.weight, self.valid, self.allowed):
            array[: -n or None] = array[n:]  # numpy copies overlapping ranges correctly
        for array in (self.weighted, self.weight, self.valid):
            array[array.shape[0] - n :] = 0
        self.allowed[self.allowed.shape[0] - n :] = True
        cells = n // self.scale
        self.mass[: self.mass.shape[0] - cells] = self.mass[cells:]
        self.mass[self.mass.shape[0] - cells :] = np.nan
        self.top = bottom
        return blended, valid, mass, allowed


# --------------------------------------------------------------------------- the streaming core
_EMIT_COLUMNS = 2048  # about this many pixels per column chunk of a finished strip


def predict_scene(
    predict: Predictor,
    read: WindowReader,
    grid: Grid,
    sink: RowSink,
    *,
    overlap: int,
    batch_size: int = 8,
    window_size: int | None = None,
    conserve_mass: bool = True,
    progress: bool = False,
    desc: str = "mosaic",
) -> SceneStats:
    """Predict a whole scene window by window and stream the blended rows to ``sink``.

    Windows come from ``grid.sliding_windows(window_size, overlap)`` in row-major order; the next
    batch is read in a background thread while the current one is predicted. A pixel is valid
    (not NaN) when it lies inside the scene, every aux band of the centre year is present and its
    coarse cell is not nodata. With ``conserve_mass`` every coarse cell of the output sums to its
    coarse total (see :func:`carbongeo.ops.mass.reproject_mass`).

    Args:
        predict: The model as a function of numpy batches (see :data:`Predictor`).
        read: Reads the inputs of a batch of windows (see :data:`WindowReader`).
        grid: The scene grid.
        sink: Receives the output rows top to bottom, cropped to the scene width.
        overlap: Overlap of neighbouring windows in pixels (the stride is snapped to the scale).
        batch_size: Windows per call of ``predict``.
        window_size: Window side; defaults to ``grid.tile_size``.
        conserve_mass: Re-project the blended rows onto the coarse totals.
        progress: Show a progress bar over windows on stderr.
        desc: Label of the progress bar.

    Returns:
        Statistics of the run, including the worst coarse-cell relative error of the output.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = window_size or grid.tile_size
    s = grid.scale
    start_time = time.perf_counter()
    windows = grid.sliding_windows(size, overlap)
    row_profiles, col_profiles = blend_profiles(windows, size)
    extent_rows = max(w.row + w.height for w in windows)
    extent_cols = max(w.col + w.width for w in windows)
    strip = _Strip(extent_cols, s)
    batches = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    stats = SceneStats(windows=len(windows), pixels=grid.height * grid.width)
    inside_cols = np.arange(extent_cols) < grid.width
    chunk = s * max(_EMIT_COLUMNS // s, 1)  # whole coarse cells

    def emit(bottom: int) -> None:
        top = strip.top
        blended, valid, mass, allowed = strip.pop(bottom)
        inside_rows = np.arange(top, bottom) < grid.height
        valid &= inside_rows[:, None] & inside_cols[None, :]
        valid &= upsample_blocks(np.isfinite(mass), s)
        out = np.empty(blended.shape, dtype=np.float32)
        # Column chunks of whole cells bound the float64 temporaries of the re-projection.
        for c0 in range(0, extent_cols, chunk):
            cols = slice(c0, min(c0 + chunk, extent_cols))
            cells = slice(cols.start // s, cols.stop // s)
            carriers = mass_carriers(valid[:, cols], allowed[:, cols], s)
            if conserve_mass:
                out[:, cols] = reproject_mass(
                    blended[:, cols], valid[:, cols], mass[:, cells], s, allowed[:, cols]
                )
            else:
                out[:, cols] = np.where(carriers, blended[:, cols], 0.0)
                out[:, cols][~valid[:, cols]] = np.nan
            stats.mass_on_masked += mass_on_masked(
                mass[:, cells], s, valid[:, cols], allowed[:, cols]
            )
            balance = mass_balance(out[:, cols], mass[:, cells], s)
            stats.worst_cell_rel_error = max(stats.worst_cell_rel_error, balance.worst_rel_error)
            stats.coarse_mass += balance.coarse_mass
            stats.unplaced_mass += balance.unplaced_mass
            stats.valid_pixels += balance.valid_pixels
        rows = min(bottom, grid.height) - top
        if rows > 0:
            sink(np.ascontiguousarray(out[:rows, : grid.width]))

    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="mosaic-read") as pool,
        tqdm(
            total=len(windows),
            desc=desc,
            unit="win",
            file=sys.stderr,
            disable=not progress,
            dynamic_ncols=True,
        ) as bar,
    ):
        pending = pool.submit(read, batches[0])
        for k, batch in enumerate(batches):
            inputs = pending.result()
            if k + 1 < len(batches):
                pending = pool.submit(read, batches[k + 1])
            preds = np.asarray(predict(inputs.aux, inputs.coarse, inputs.allowed), np.float32)
            preds = preds.reshape(len(batch), size, size)
            check_finite_predictions(preds, inputs.valid, batch)
            for i, window in enumerate(batch):
                weight = np.outer(row_profiles[window.row], col_profiles[window.col])
                allowed = None if inputs.allowed is None else inputs.allowed[i]
                strip.add(window, preds[i], weight, inputs.valid[i], inputs.mass[i], allowed)
            bar.update(len(batch))
            done = batches[k + 1][0].row if k + 1 < len(batches) else extent_rows
            if done > strip.top:
                emit(done)
    stats.seconds = time.perf_counter() - start_time
    return stats


# --------------------------------------------------------------------------- model and inputs
def torch_predictor(model: torch.nn.Module, device: torch.device | str = "cpu") -> Predictor:
    """Wrap a network ``model(aux, coarse, allowed) -> [B, 1, H, W]`` as a :data:`Predictor`.

    The model runs in eval mode under ``torch.inference_mode``, with autocast (bf16, or fp16 on
    GPUs without bf16) on CUDA only; the output is returned as float32 on the CPU.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    amp_dtype = None
    if device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def predict(aux: np.ndarray, coarse: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        non_blocking = device.type == "cuda"
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None),
            raw_prediction_guard(model) as non_finite,
        ):
            aux_t = torch.from_numpy(aux).to(device, non_blocking=non_blocking)
            coarse_t = torch.from_numpy(coarse).to(device, non_blocking=non_blocking)
            allowed_t = None
            if allowed is not None:
                allowed_t = torch.from_numpy(allowed[:, None]).to(device, non_blocking=non_blocking)
            out = model(aux_t, coarse_t, allowed=allowed_t)
        if non_finite:  # the mass constraint would have hidden it as a uniform split
            raise non_finite_raw_prediction(non_finite[0])
        return out.float().cpu().numpy()

    return predict


def coarse_from_fine(fine: np.ndarray, scale: int) -> np.ndarray:
    """Sum ``[..., H, W]`` over ``scale`` blocks; nodata counts as 0, all-nodata blocks are NaN."""
    return cell_totals(fine, scale).astype(np.float32)


@dataclass(frozen=True)
class CubeReader:
    """A :data:`WindowReader` over the tile cubes of one centre year (picklable).

    The cubes are memory-mapped afresh for every batch, so the pages read are released with the
    batch and the process does not accumulate the whole cube in its resident memory.

    Attributes:
        tiles_dir: Folder with ``index.json`` and the cubes.
        grid: The grid of the tiles.
        norm: Aux normalisation of the checkpoint; None gives the cube values (after the band
            transforms, NaN nodata), as the forests read them.
        years: The input years in order (their centre is the predicted year); repeated years are
            read once.
        has_coarse: Read the coarse field from ``C_<year>.npy`` (a real coarse product) instead of
            summing the target ``Y_<year>.npy`` over coarse cells.
        bands: Aux band names in channel order (for ``zero_classes``).
        zero_classes: Class values per categorical band on which no emissions can be.
    """

    tiles_dir: Path
    grid: Grid
    norm: Normalization | None
    years: tuple[int, ...]
    has_coarse: bool
    bands: tuple[str, ...] = ()
    zero_classes: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __call__(self, windows: Sequence[Window]) -> WindowBatch:
        s = self.grid.scale
        distinct = sorted(set(self.years))
        aux_cubes = {y: open_cube(self.tiles_dir, "X", y) for y in distinct}
        kind = "C" if self.has_coarse else "Y"
        coarse_cubes = {y: open_cube(self.tiles_dir, kind, y) for y in distinct}
        centre = len(self.years) // 2
        aux_batch, coarse_batch = [], []
        for window in windows:
            aux_year = {y: read_window(aux_cubes[y], self.grid, window) for y in distinct}
            if self.has_coarse:
                cells = Window(
                    window.row // s, window.col // s, window.height // s, window.width // s
                )
                # C cubes are tiled like the fine grid, with tile_size / scale cells per tile.
                coarse_year = {y: read_window(coarse_cubes[y], self.grid, cells) for y in distinct}
            else:
                coarse_year = {
                    y: coarse_from_fine(read_window(coarse_cubes[y], self.grid, window), s)
                    for y in distinct
                }
            aux_batch.append(np.stack([aux_year[y] for y in self.years], axis=1))
            coarse_batch.append(np.stack([coarse_year[y] for y in self.years], axis=1))
        aux = np.stack(aux_batch).astype(np.float32, copy=False)  # [B, C, T, h, w]
        coarse = np.stack(coarse_batch).astype(np.float32, copy=False)  # [B, 1, T, h/s, w/s]
        valid = aux_domain(aux[:, :, centre], channel_axis=1)
        mass = coarse[:, 0, centre].copy()
        return WindowBatch(
            aux=aux if self.norm is None else self.norm.normalize_aux(aux, channel_axis=1),
            coarse=np.nan_to_num(coarse, nan=0.0, posinf=0.0, neginf=0.0),
            valid=valid,
            mass=mass,
            allowed=allowed_pixels(aux[:, :, centre], self.bands, self.zero_classes, 1),
        )


# --------------------------------------------------------------------------- years
@dataclass(frozen=True)
class MosaicResult:
    """The outcome of one year of :func:`mosaic_years`.

    Attributes:
        year: The predicted year.
        tif_path: ``predictions/Pred_<year>.tif``.
        npy_path: ``predictions/Pred_<year>.npy``.
        skipped: True when both outputs existed as one run's pair and were kept (no
            ``overwrite``; see :func:`carbongeo.store.predictions.pair_is_complete`).
        worst_cell_rel_error: Largest relative block-sum error over positive coarse cells.
        coarse_mass: Total of the positive coarse cells.
        unplaced_mass: Coarse mass over cells without a valid pixel (not in the output).
        mass_on_masked: Coarse mass over cells made only of zero-class pixels (kept on them).
        valid_pixels: Pixels with a value.
        windows: Windows predicted.
        seconds: Wall time of the year, writing included.
        megapixels_per_s: Scene megapixels per second.
    """

    year: int
    tif_path: Path
    npy_path: Path
    skipped: bool = False
    worst_cell_rel_error: float | None = None
    coarse_mass: float | None = None
    unplaced_mass: float | None = None
    mass_on_masked: float | None = None
    valid_pixels: int | None = None
    windows: int = 0
    seconds: float = 0.0
    megapixels_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (paths as strings)."""
        data = asdict(self)
        data["tif_path"] = str(self.tif_path)
        data["npy_path"] = str(self.npy_path)
        return data


def input_years(index: TileIndex, year: int, temporal: int) -> tuple[int, ...]:
    """The ``temporal`` input years centred on ``year``, ends replicating the nearest tiled year.

    Raises:
        MissingRunFileError: ``year`` is not tiled.
    """
    index.require_year(year)
    tiled = sorted(int(y) for y in index.years)
    return tuple(window_years(year, temporal, tiled[0], tiled[-1]))


def _check_inputs(tiles_dir: Path, index: TileIndex, years: Sequence[int]) -> None:
    """The cubes :class:`CubeReader` reads: aux, and the coarse product or else the target."""
    has_coarse = index.has_coarse
    check_cubes(tiles_dir, index, years, target=not has_coarse, coarse=has_coarse)


METHODS: tuple[str, ...] = ("model", LEARNED_DASYMETRIC)
"""What a mosaic can predict with: the network of a checkpoint, or the learned-dasymetric forest."""


@dataclass(frozen=True)
class _Job:
    """Everything one year needs besides the network (picklable, for dask tasks).

    ``checkpoint`` is the network's (method ``model``); ``forest`` the fitted forest (method
    ``learned-dasymetric``).
    """

    config: PipelineConfig
    year: int
    checkpoint: Path | None
    model_id: str
    overlap: int
    batch_size: int
    device: str
    threads: int
    units: str = "per_cell"
    forest: FittedForest | None = None


_Network = tuple["DSTCarbonFormer", Normalization, Checkpoint]


def _run_year(
    job: _Job, index: TileIndex, network: _Network | None, *, progress: bool
) -> MosaicResult:
    from carbongeo import __version__

    config = job.config
    grid = index.grid
    if job.forest is not None:
        years: tuple[int, ...] = (job.year,)
        reader = CubeReader(
            config.tiles_dir,
            grid,
            None,
            years,
            index.has_coarse,
            index.bands,
            config.zero_classes(),
        )
        predict = forest_predictor(job.forest)
        method_tags = {"method": LEARNED_DASYMETRIC, "forest": job.forest.describe()}
    else:
        assert network is not None and job.checkpoint is not None
        model, norm, state = network
        years = input_years(index, job.year, model.temporal)
        reader = CubeReader(
            config.tiles_dir,
            grid,
            norm,
            years,
            index.has_coarse,
            index.bands,
            config.zero_classes(),
        )
        predict = torch_predictor(model, resolve_device(job.device))
        method_tags = {
            "method": "model",
            "checkpoint": job.checkpoint.name,
            "training_data_hash": state.data_hash,
        }
    _check_inputs(config.tiles_dir, index, years)
    units = index.target.get("units") or config.emission_units
    cog = cog_units(units, job.units, grid, job.year)
    tags = {
        "units": units,
        "year": str(job.year),
        "model_id": job.model_id,
        **method_tags,
        "config_hash": config.data_hash(),
        "carbongeo_version": __version__,
        "scale": str(grid.scale),
        "tile_size": str(grid.tile_size),
        "overlap": str(job.overlap),
        "input_years": ",".join(str(y) for y in years),
        "TIFFTAG_SOFTWARE": f"carbongeo {__version__}",
        **cog.tags,
    }
    layout = config.layout
    tif_path, npy_path = layout.prediction_tif(job.year), layout.prediction_npy(job.year)
    outputs = open_prediction_pair(tif_path, npy_path, grid, tags, cog.label, cog.convert)
    with outputs as (sink, tif):
        stats = predict_scene(
            predict,
            reader,
            grid,
            sink,
            overlap=job.overlap,
            batch_size=job.batch_size,
            progress=progress,
            desc=f"mosaic {job.year}",
        )
        tif.update_tags(
            mass_worst_cell_rel_error=f"{stats.worst_cell_rel_error:.3e}",
            mass_unplaced=f"{stats.unplaced_mass:.6g}",
            mass_on_masked=f"{stats.mass_on_masked:.6g}",
        )
    if stats.worst_cell_rel_error > 1e-4:
        log.warning(
            "year %d: worst coarse-cell mass error %.2e exceeds 1e-4",
            job.year,
            stats.worst_cell_rel_error,
        )
    if stats.unplaced_mass > 0:
        log.warning(
            "year %d: %.6g of %.6g coarse mass lies on cells without valid aux pixels",
            job.year,
            stats.unplaced_mass,
            stats.coarse_mass,
        )
    if stats.mass_on_masked > 0:
        log.warning(
            "year %d: %.6g of %.6g coarse mass lies on cells made only of zero-class pixels; "
            "it is kept spread over them",
            job.year,
            stats.mass_on_masked,
            stats.coarse_mass,
        )
    return MosaicResult(
        year=job.year,
        tif_path=tif_path,
        npy_path=npy_path,
        worst_cell_rel_error=stats.worst_cell_rel_error,
        coarse_mass=stats.coarse_mass,
        unplaced_mass=stats.unplaced_mass,
        mass_on_masked=stats.mass_on_masked,
        valid_pixels=stats.valid_pixels,
        windows=stats.windows,
        seconds=stats.seconds,
        megapixels_per_s=stats.megapixels_per_s,
    )


def _load_model(checkpoint: Path, index: TileIndex) -> _Network:
    state = load_checkpoint(checkpoint, map_location="cpu")
    state.check_fits(index)
    return model_from_checkpoint(state), state.normalization, state


@picklable_errors
def _year_task(job: _Job) -> MosaicResult:
    """One year in a fresh process (a dask task): load the index and the model, then stream."""
    # PyTorch's CPU kernels round differently with different thread counts; using the submitting
    # process's count keeps the outputs bit-identical to a local run.
    torch.set_num_threads(job.threads)
    index = load_index(job.config.tiles_dir)
    network = None if job.checkpoint is None else _load_model(job.checkpoint, index)
    return _run_year(job, index, network, progress=False)


def mosaic_years(
    config: PipelineConfig,
    years: Sequence[int],
    *,
    checkpoint: Path | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
    units: str = "per_cell",
    method: str = "model",
) -> list[MosaicResult]:
    """Predict whole years from the tile cubes and write ``Pred_<year>.tif`` and ``.npy``.

    Each year is streamed window by window (see :func:`predict_scene`): the output is blended
    without seams, every coarse cell sums to its coarse input, nodata is NaN, and both files are
    published atomically when complete. Years whose two outputs already exist, written together
    (:func:`~carbongeo.store.predictions.pair_is_complete`), are skipped unless
    ``overwrite``.

    Args:
        config: The pipeline configuration.
        years: Years to predict; each must have been tiled.
        checkpoint: Model checkpoint; default ``<workdir>/checkpoints/best.pt``.
        overlap: Window overlap in pixels; default ``[mosaic] overlap``.
        batch_size: Windows per forward pass; default ``[mosaic] batch_size``.
        device: ``auto``, ``cpu`` or ``cuda``.
        overwrite: Recompute years whose outputs exist.
        progress: Show progress bars on stderr.
        scheduler: Where to run one task per year, as in :func:`carbongeo.parallel.run_tasks`
            (a scheduler address, ``"distributed"`` or a local scheduler name); default: in this
            process with the model loaded once, unless ``workers`` is given.
        workers: Without ``scheduler``, start a local dask cluster of this many worker
            processes; 0: one per CPU.
        units: Units of the COGs: ``per_cell`` (the target's, as the ``.npy``), ``per_km2`` or
            ``flux`` (see :mod:`carbongeo.outputs.units`); recorded in the tags.
        method: ``model`` (the network of ``checkpoint``) or ``learned-dasymetric`` (a random
            forest fitted on the coarse cells of the training tiles, see
            :mod:`carbongeo.evaluation.forest`: no network, no fine truth, no GPU).

    Returns:
        One result per year, in the order of ``years``.

    Raises:
        ParameterError: ``batch_size``, ``overlap``, ``workers``, ``device`` or ``method`` is
            invalid, or a ``checkpoint`` is given with the forest.
        InputDataError: The tiles are missing (run ``carbongeo tile``).
        CheckpointError: The checkpoint is missing or does not fit the tiles.
        OutputError: An output cannot be written.
        ClusterError: The dask scheduler cannot be reached or the cluster failed.
    """
    if method not in METHODS:
        raise ParameterError(f"{method!r} is not one of {', '.join(METHODS)}", param="method")
    if method != "model" and checkpoint is not None:
        raise ParameterError(
            f"a checkpoint is only read by method model, not {method}", param="method"
        )
    own_checkpoint = checkpoint is None  # the workdir's: it must come from this config
    checkpoint = Path(checkpoint) if checkpoint is not None else config.layout.best_checkpoint
    overlap = config.mosaic.overlap if overlap is None else overlap
    batch_size = config.mosaic.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise ParameterError(f"must be >= 1, got {batch_size}", param="batch_size")
    check_options(scheduler, workers)  # a bad value fails before any work
    resolve_device(device)  # fail before any work on a bad device
    index = load_index(config.tiles_dir)
    check_tiles(config, index)
    grid = index.grid
    if not 0 <= overlap < grid.tile_size:
        raise ParameterError(f"must be in [0, {grid.tile_size}), got {overlap}", param="overlap")
    for year in years:  # refuse units that cannot be converted before any work
        cog_units(index.target.get("units") or config.emission_units, units, grid, int(year))

    results: dict[int, MosaicResult] = {}
    todo: list[int] = []
    layout = config.layout
    made_with = {"config_hash": config.data_hash()}  # a year is done only by this config/model
    store = TileStore(config) if method != "model" else None
    if store is not None:
        made_with["model_id"] = forest_id(store, method)
    elif checkpoint.is_file():
        made_with["model_id"] = file_sha256(checkpoint)[:16]
    for year in dict.fromkeys(int(y) for y in years):
        tif_path, npy_path = layout.prediction_tif(year), layout.prediction_npy(year)
        if not overwrite and prediction_done(layout, year, made_with):
            log.info("year %d: %s exists, skipped (overwrite to recompute)", year, tif_path)
            results[year] = MosaicResult(year, tif_path, npy_path, skipped=True)
        else:
            if not overwrite and tif_path.is_file() and npy_path.is_file():
                log.warning(
                    "year %d: %s is stale or not one pair with its .npy; redone", year, tif_path
                )
            todo.append(year)
    if todo:
        network: _Network | None = None
        forest: FittedForest | None = None
        if store is not None:
            for year in todo:  # every input is checked before the forest is fitted
                _check_inputs(config.tiles_dir, index, (year,))
            forest = fit_store_forest(store, method)
            if forest is None:
                raise InputDataError(
                    f"{method}: the training tiles have no coarse cell with emissions to learn "
                    "from; check the coarse product and the split"
                )
            model_id = made_with["model_id"]
            checkpoint_used = None
        else:
            if not checkpoint.is_file():
                raise missing_input(checkpoint, "carbongeo train", CheckpointError)
            network = _load_model(checkpoint, index)
            if own_checkpoint:
                check_checkpoint(config, network[2], checkpoint)
            for year in todo:  # every input is checked before the first year starts
                _check_inputs(
                    config.tiles_dir, index, input_years(index, year, network[0].temporal)
                )
            model_id = file_sha256(checkpoint)[:16]
            checkpoint_used = checkpoint
        threads = torch.get_num_threads()
        jobs = [
            _Job(
                config,
                year,
                checkpoint_used,
                model_id,
                overlap,
                batch_size,
                device,
                threads,
                units,
                forest,
            )
            for year in todo
        ]
        if scheduler is not None or workers is not None:
            tasks = [dask.delayed(_year_task, pure=False)(job) for job in jobs]
            for result in run_tasks(
                tasks,
                scheduler=scheduler,
                workers=workers,
                progress=progress,
                desc="mosaic years",
                unit="year",
            ):
                results[result.year] = result
        else:
            for job in jobs:
                results[job.year] = _run_year(job, index, network, progress=progress)
    from carbongeo.outputs.stac import write_catalog  # local: the outputs package reads mosaic

    write_catalog(config)
    return [results[int(y)] for y in dict.fromkeys(int(y) for y in years)]
