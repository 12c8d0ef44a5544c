"""Figures: a per-tile comparison panel and a whole-scene map of a prediction.

* :func:`preview` writes ``reports/preview_<year>.png``: for the test tiles with the largest
  emissions, the guiding aux band, the coarse input, the truth, the model's prediction, the best
  proxy baseline, the learned-dasymetric forest's map (fitted on the training tiles' coarse cells)
  and the error maps of the model and the best proxy baseline;
* :func:`scene_map` writes ``reports/scene_<year>.png`` from ``predictions/Pred_<year>.tif``,
  read decimated so memory stays small for any scene size.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (Agg, no pyplot state) and written
atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Colormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mpl_toolkits.axes_grid1 import make_axes_locatable

from carbongeo.config import PipelineConfig
from carbongeo.errors import CarbongeoError, MissingRunFileError, ParameterError, RunFileError
from carbongeo.evaluation.forest import LEARNED_DASYMETRIC, FittedForest
from carbongeo.ops.blocks import upsample_blocks
from carbongeo.stages.evaluate import proxy_bands, tile_baselines
from carbongeo.stages.forests import fit_store_forest, forest_sample
from carbongeo.stages.freshness import check_tiles
from carbongeo.store.predictions import require_prediction
from carbongeo.store.reports import read_evaluation, write_figure
from carbongeo.store.split import load_split
from carbongeo.store.tiles import TileData, TileStore

__all__ = ["best_baseline", "preview", "scene_map", "select_tiles"]

DPI = 110
EMISSION_CMAP = "magma"
ERROR_CMAP = "RdBu_r"
AUX_CMAP = "viridis"
NODATA_COLOUR = "#d9d9d9"
LOG_VMIN_PERCENTILE = 2.0
ERROR_PERCENTILE = 99.5
SCENE_MAX_PIXELS = 1500


def select_tiles(store: TileStore, year: int, tile_ids: list[int], n_tiles: int) -> list[int]:
    """The ``n_tiles`` tiles with the largest truth totals (ties by id: deterministic)."""
    totals = [(store.truth_total(year, tile_id), tile_id) for tile_id in tile_ids]
    ranked = sorted(totals, key=lambda item: (-item[0] if math.isfinite(item[0]) else 0, item[1]))
    return [tile_id for _, tile_id in ranked[:n_tiles]]


def best_baseline(config: PipelineConfig, store: TileStore) -> str:
    """The best proxy baseline (uniform, bicubic, dasymetric) by MAE in ``evaluation.json``,
    else ``dasymetric:ntl`` or uniform. The forests are not proxy baselines."""
    available = {"uniform", "bicubic", *(f"dasymetric:{b}" for b in proxy_bands(store))}
    report = read_evaluation(config.layout)
    if report is not None:
        try:
            sections = report.get("sections", [])
            ranking = list(sections[0].get("ranking", [])) if sections else []
        except (AttributeError, IndexError, KeyError, TypeError):
            ranking = []
        for name in ranking:
            if name in available:
                return str(name)
    return "dasymetric:ntl" if "dasymetric:ntl" in available else "uniform"


def _units(config: PipelineConfig) -> str:
    return config.emission_units or "t / cell"


def _sample_tiles(config: PipelineConfig, store: TileStore) -> list[int]:
    """Tiles of the evaluated split, or every tile when there is no split yet."""
    try:
        ids = load_split(config.tiles_dir).ids(config.evaluate.split)
    except CarbongeoError:
        ids = []
    return ids or store.tile_ids


def _log_norm(*fields: np.ndarray) -> LogNorm:
    """A log colour scale from a small positive percentile to the maximum of ``fields``."""
    values = np.concatenate([f[np.isfinite(f)].ravel() for f in fields])
    positive = values[values > 0]
    if positive.size == 0:
        return LogNorm(vmin=1e-3, vmax=1.0)
    vmin = float(np.percentile(positive, LOG_VMIN_PERCENTILE))
    vmax = float(positive.max())
    if vmax <= vmin:
        vmin = vmax / 10.0
    return LogNorm(vmin=vmin, vmax=vmax)


def _error_limit(*errors: np.ndarray) -> float:
    values = np.concatenate([np.abs(e[np.isfinite(e)]).ravel() for e in errors])
    if values.size == 0:
        return 1.0
    limit = float(np.percentile(values, ERROR_PERCENTILE))
    return limit if limit > 0 else (float(values.max()) or 1.0)


def _for_log(x: np.ndarray, norm: LogNorm) -> np.ma.MaskedArray:
    """Values for a log scale: zeros at the bottom colour, NaN masked (grey)."""
    assert norm.vmin is not None
    return np.ma.masked_invalid(np.where(np.isfinite(x), np.maximum(x, norm.vmin), np.nan))


def _cmap(name: str) -> Colormap:
    return colormaps[name].with_extremes(bad=NODATA_COLOUR)


def _aux_panel(store: TileStore, tile: TileData) -> tuple[np.ndarray, str]:
    """The band to show (``ntl`` when present, else the first one), log1p'd when configured."""
    band = "ntl" if "ntl" in tile.bands else tile.bands[0]
    values = tile.band(band)
    if store.log1p_bands[tile.bands.index(band)]:
        return np.log1p(np.maximum(values, 0.0)), f"log1p({band})"
    return values, band


def _mae(pred: np.ndarray, truth: np.ndarray) -> float:
    mask = np.isfinite(truth)
    if not mask.any():
        return float("nan")
    return float(np.abs(np.nan_to_num(pred[mask], nan=0.0) - truth[mask]).mean())


def preview(
    config: PipelineConfig, year: int, *, n_tiles: int = 4, out: Path | None = None
) -> list[Path]:
    """Write the per-tile comparison panel and the whole-scene map of ``year``.

    Args:
        config: The pipeline.
        year: The predicted year to show.
        n_tiles: Number of sample tiles (rows): the evaluated split's tiles with the largest truth
            totals.
        out: Output folder; default ``<workdir>/reports``.

    Returns:
        ``[preview_<year>.png, scene_<year>.png]``.

    Raises:
        ParameterError: ``n_tiles`` is below 1.
        MissingRunFileError: Missing tiles or prediction (naming the command to run).
    """
    if n_tiles < 1:
        raise ParameterError(f"must be >= 1, got {n_tiles}", param="n_tiles")
    folder = Path(out) if out is not None else config.reports_dir
    store = TileStore(config)
    check_tiles(config, store.index)
    require_prediction(config.layout, year)
    tile_ids = select_tiles(store, year, _sample_tiles(config, store), n_tiles)
    if not tile_ids:
        raise MissingRunFileError(f"{config.tiles_dir} holds no tiles; run: carbongeo tile")
    baseline = best_baseline(config, store)
    tiles = [store.load(year, tile_id) for tile_id in tile_ids]
    forest = fit_store_forest(store, LEARNED_DASYMETRIC)
    panel = _write_panel(store, tiles, baseline, forest, year, _units(config), folder)
    return [panel, scene_map(config, year, out=folder)]


# aux, coarse input, truth, prediction, baseline, learned dasymetric, prediction error,
# baseline error
_N_COLUMNS = 8


def _write_panel(
    store: TileStore,
    tiles: list[TileData],
    baseline: str,
    forest: FittedForest | None,
    year: int,
    units: str,
    folder: Path,
) -> Path:
    s = store.scale
    fig = Figure(figsize=(2.45 * _N_COLUMNS, 2.35 * len(tiles) + 0.6), dpi=DPI)
    axes = fig.subplots(len(tiles), _N_COLUMNS, squeeze=False)
    emission_cmap, error_cmap, aux_cmap = _cmap(EMISSION_CMAP), _cmap(ERROR_CMAP), _cmap(AUX_CMAP)
    for row, tile in enumerate(tiles):
        assert tile.truth is not None and tile.prediction is not None
        truth = tile.truth
        pred = np.where(tile.inside, tile.prediction, np.nan)
        base = tile_baselines(store, tile, [baseline])[baseline]
        learned = (
            forest.allocate(forest_sample(store, tile))
            if forest is not None
            else np.full(truth.shape, np.nan)
        )
        density = np.where(tile.inside, upsample_blocks(tile.coarse / float(s * s), s), np.nan)
        aux, aux_label = _aux_panel(store, tile)
        norm = _log_norm(truth, pred, base, learned, density)
        pred_err = np.where(np.isfinite(truth), np.nan_to_num(pred, nan=0.0) - truth, np.nan)
        base_err = np.where(np.isfinite(truth), np.nan_to_num(base, nan=0.0) - truth, np.nan)
        limit = _error_limit(pred_err, base_err)
        error_norm = Normalize(vmin=-limit, vmax=limit)
        ax = axes[row]

        image = ax[0].imshow(np.ma.masked_invalid(aux), cmap=aux_cmap, interpolation="nearest")
        fig.colorbar(image, ax=ax[0], fraction=0.046, pad=0.03)
        ax[0].set_title(aux_label, fontsize=8)
        ax[0].set_ylabel(f"tile {tile.tile_id}", fontsize=9)
        titles = [
            f"coarse / {s}² (total {tile.coarse[np.isfinite(tile.coarse)].sum():.3g})",
            f"truth {year}",
            f"prediction (MAE {_mae(pred, truth):.3g})",
            f"{baseline} (MAE {_mae(base, truth):.3g})",
            f"{LEARNED_DASYMETRIC} (MAE {_mae(learned, truth):.3g})"
            if forest is not None
            else f"{LEARNED_DASYMETRIC}: nothing to learn from",
        ]
        for col, (field, title) in enumerate(
            zip((density, truth, pred, base, learned), titles, strict=True), start=1
        ):
            image = ax[col].imshow(
                _for_log(field, norm), cmap=emission_cmap, norm=norm, interpolation="nearest"
            )
            ax[col].set_title(title, fontsize=8)
        fig.colorbar(image, ax=ax[5], fraction=0.046, pad=0.03).set_label(units, fontsize=7)
        for col, (err, title) in enumerate(
            ((pred_err, "prediction - truth"), (base_err, f"{baseline} - truth")), start=6
        ):
            image = ax[col].imshow(
                np.ma.masked_invalid(err), cmap=error_cmap, norm=error_norm, interpolation="nearest"
            )
            ax[col].set_title(title, fontsize=8)
        fig.colorbar(image, ax=ax[7], fraction=0.046, pad=0.03).set_label(units, fontsize=7)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(
        f"carbongeo preview {year}: emissions on a log scale ({units}); grey = nodata",
        fontsize=11,
    )
    fig.tight_layout()
    return write_figure(fig, store.layout.preview_png(year, folder), dpi=DPI)


def scene_map(
    config: PipelineConfig,
    year: int,
    *,
    out: Path | None = None,
    max_pixels: int = SCENE_MAX_PIXELS,
) -> Path:
    """Write a map of the whole predicted scene of ``year`` from ``Pred_<year>.tif``.

    Scenes larger than ``max_pixels`` on a side are read decimated (the mean of each displayed
    block of cells), so memory stays small.

    Args:
        config: The pipeline.
        year: The predicted year.
        out: Output folder; default ``<workdir>/reports``.
        max_pixels: Largest displayed side in pixels.

    Returns:
        The path of ``scene_<year>.png``.
    """
    import rasterio
    from rasterio.enums import Resampling

    path = require_prediction(config.layout, year, "tif")
    try:
        with rasterio.open(path) as src:
            factor = max(1, math.ceil(max(src.height, src.width) / max_pixels))
            shape = (math.ceil(src.height / factor), math.ceil(src.width / factor))
            data = src.read(1, out_shape=shape, masked=True, resampling=Resampling.average)
            bounds, crs = src.bounds, src.crs
    except rasterio.errors.RasterioIOError as err:
        raise RunFileError(f"{path}: cannot read the prediction ({err})") from err
    values = np.ma.filled(data.astype(np.float64), np.nan)
    units = _units(config)
    norm = _log_norm(values)
    aspect = shape[0] / shape[1]
    width_in = 8.0 if aspect <= 1 else max(8.0 / aspect, 4.0)
    fig = Figure(figsize=(width_in + 1.6, min(max(width_in * aspect, 3.0), 12.0) + 1.0), dpi=DPI)
    ax = fig.subplots()
    image = ax.imshow(
        _for_log(values, norm),
        cmap=_cmap(EMISSION_CMAP),
        norm=norm,
        extent=(bounds.left, bounds.right, bounds.bottom, bounds.top),
        interpolation="nearest",
    )
    label = units if factor == 1 else f"{units} (mean of {factor} x {factor} cells)"
    cax = make_axes_locatable(ax).append_axes("right", size="4%", pad=0.15)
    fig.colorbar(image, cax=cax).set_label(label)
    if crs is not None and crs.is_geographic:
        ax.set_xlabel("longitude (degrees)")
        ax.set_ylabel("latitude (degrees)")
    else:
        linear = crs.linear_units if crs is not None else "CRS units"
        ax.set_xlabel(f"x ({linear})")
        ax.set_ylabel(f"y ({linear})")
    ax.ticklabel_format(style="plain", useOffset=False)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.set_title(f"Predicted emissions {year} ({units})")
    fig.tight_layout()
    return write_figure(fig, config.layout.scene_png(year, out), dpi=DPI)
