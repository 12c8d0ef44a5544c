"""Evaluation: the model's mosaicked prediction and the baselines against the fine truth.

Metrics are pooled over every evaluated pixel of every evaluated tile and year (not averaged per
tile). A pixel is evaluated when its truth is valid; a prediction that is NaN there placed no
mass and counts as 0 (the count is reported as ``pred_nodata_pixels``).

Definitions (``t`` truth, ``p`` prediction, over evaluated pixels):

* ``mae``, ``rmse``: mean absolute and root mean squared error, in the target's units per cell;
* ``r2``: ``1 - SSE / SST`` with SST about the pooled truth mean;
* ``mae_log1p``, ``r2_log1p``: the same on ``log1p(max(x, 0))``;
* ``ssim``, ``ssim_log1p``: SSIM with a 7 x 7 uniform window (sample covariance, K1 = 0.01,
  K2 = 0.03, as scikit-image), local statistics over the truth-valid pixels of each tile only,
  ``data_range`` = truth max - min over the evaluated set; averaged over evaluated pixels;
* ``psnr``: ``10 log10(data_range**2 / MSE)`` in dB;
* ``pbias``: ``(sum p - sum t) / sum t``;
* ``hotspot_recall`` / ``hotspot_precision``: the truth's top 1 % cells (ties at the threshold
  included, zeros excluded) against the prediction's top 1 %; ``hotspot_mae`` is the MAE on the
  truth's top cells;
* ``mass_err_max`` / ``mass_err_mean``: ``|block sum of p - coarse| / coarse`` over the coarse
  cells with a coarse value > 0 and at least one finite prediction pixel, against the coarse input
  (the real coarse product when tiled, else the truth summed over blocks);
* ``mass_on_zero_truth``: share of the predicted mass put on cells whose truth is exactly 0 (e.g.
  water); ``mass_on_water``: share put on cells where an aux band named ``water`` is 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from carbongeo.config import PipelineConfig
from carbongeo.errors import CarbongeoError
from carbongeo.evaluation.baselines import block_sum, run_baselines, unplaced_mass
from carbongeo.grid import Window
from carbongeo.stages.freshness import check_prediction, check_split, check_tiles
from carbongeo.training.normalization import RunningMoments, aux_domain

__all__ = [
    "METRICS",
    "EvaluationReport",
    "MetricPool",
    "SectionResult",
    "SsimReference",
    "TileData",
    "TileStore",
    "block_mass_errors",
    "compute_metrics",
    "evaluate",
    "hotspot_mask",
    "ssim_map",
]

HOTSPOT_FRACTION = 0.01
SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03
MODEL = "model"
WATER_BAND = "water"
EVALUATION_MD = "evaluation.md"
EVALUATION_JSON = "evaluation.json"

#: Metric keys in report order, with the Markdown column header (``{u}`` = target units).
METRICS: dict[str, str] = {
    "mae": "MAE ({u})",
    "rmse": "RMSE ({u})",
    "r2": "R²",
    "mae_log1p": "MAE log1p",
    "r2_log1p": "R² log1p",
    "ssim": "SSIM",
    "ssim_log1p": "SSIM log1p",
    "psnr": "PSNR dB",
    "pbias": "total bias",
    "hotspot_recall": "top-1% recall",
    "hotspot_precision": "top-1% precision",
    "hotspot_mae": "top-1% MAE ({u})",
    "mass_err_max": "block mass err max",
    "mass_err_mean": "block mass err mean",
    "mass_on_zero_truth": "mass on zero truth",
    "mass_on_water": "mass on water",
}


# =========================================================================== pure metrics
class SsimReference:
    """The reference side of a masked SSIM: local statistics of the truth, computed once.

    Where the whole window is valid, :meth:`map` is scikit-image's ``structural_similarity`` map
    (uniform ``window x window`` filter, sample covariance, K1 = 0.01, K2 = 0.03); near nodata the
    window's means and (co)variances are taken over its valid pixels only, so nodata never leaks in
    as a fake value.

    Args:
        truth: ``[H, W]`` reference.
        mask: ``[H, W]`` bool, the pixels to use (the truth is finite there).
        data_range: ``L`` in the SSIM constants ``(K1 L)**2`` and ``(K2 L)**2``.
        window: Window side in pixels.
    """

    def __init__(
        self, truth: np.ndarray, mask: np.ndarray, data_range: float, *, window: int = SSIM_WINDOW
    ) -> None:
        self.mask = np.asarray(mask, dtype=bool)
        self.window = window
        self.c1 = (SSIM_K1 * data_range) ** 2
        self.c2 = (SSIM_K2 * data_range) ** 2
        self.y = np.where(self.mask, truth, 0.0).astype(np.float64)
        weight = self._mean(self.mask.astype(np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            self.inv = np.where(weight > 1e-12, 1.0 / weight, 0.0)
            n = weight * window * window
            self.cov_norm = np.where(n > 1.5, n / (n - 1.0), 1.0)
        self.my = self._mean(self.y) * self.inv
        self.vy = self.cov_norm * (self._mean(self.y * self.y) * self.inv - self.my * self.my)

    def _mean(self, a: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(a, size=self.window, mode="reflect")

    def map(self, pred: np.ndarray) -> np.ndarray:
        """``[H, W]`` float64 SSIM of ``pred`` against the truth, NaN outside the mask."""
        x = np.where(self.mask, pred, 0.0).astype(np.float64)
        mx = self._mean(x) * self.inv
        vx = self.cov_norm * (self._mean(x * x) * self.inv - mx * mx)
        vxy = self.cov_norm * (self._mean(x * self.y) * self.inv - mx * self.my)
        num = (2.0 * mx * self.my + self.c1) * (2.0 * vxy + self.c2)
        den = (mx * mx + self.my * self.my + self.c1) * (vx + self.vy + self.c2)
        return np.where(self.mask, num / den, np.nan)


def ssim_map(
    pred: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    data_range: float,
    *,
    window: int = SSIM_WINDOW,
) -> np.ndarray:
    """Local SSIM with a uniform window whose statistics use only the masked pixels.

    See :class:`SsimReference`, which this wraps for a single prediction.

    Args:
        pred: ``[H, W]`` prediction.
        truth: ``[H, W]`` reference.
        mask: ``[H, W]`` bool, the pixels to use (both arrays finite there).
        data_range: ``L`` in the SSIM constants ``(K1 L)**2`` and ``(K2 L)**2``.
        window: Window side in pixels.

    Returns:
        ``[H, W]`` float64 SSIM, NaN outside ``mask``.
    """
    return SsimReference(truth, mask, data_range, window=window).map(pred)


def block_mass_errors(pred: np.ndarray, coarse: np.ndarray, s: int) -> np.ndarray:
    """Relative block-sum errors ``|sum_block(pred) - coarse| / coarse``.

    Only coarse cells with a finite value > 0 and at least one finite prediction pixel count.

    Args:
        pred: ``[h * s, w * s]`` fine prediction (NaN nodata).
        coarse: ``[h, w]`` coarse values.
        s: Scale.

    Returns:
        1-D float64 array of the counted cells' relative errors.
    """
    coarse = np.asarray(coarse, dtype=np.float64)
    placed = block_sum(np.isfinite(pred), s) > 0
    counted = placed & np.isfinite(coarse) & (coarse > 0)
    sums = block_sum(pred, s)
    return np.abs(sums[counted] - coarse[counted]) / coarse[counted]


def hotspot_mask(values: np.ndarray, fraction: float = HOTSPOT_FRACTION) -> np.ndarray:
    """Cells in the top ``fraction`` of ``values`` (ties at the threshold included, zeros not).

    Args:
        values: 1-D finite values.
        fraction: Share of cells, e.g. 0.01 for the top 1 %.

    Returns:
        Bool mask of the hotspot cells.
    """
    n = values.size
    if n == 0:
        return np.zeros(0, dtype=bool)
    k = min(n, max(1, math.ceil(fraction * n)))
    threshold = np.partition(values, n - k)[n - k]
    return (values >= threshold) & (values > 0)


def _log1p(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(x, 0.0))


@dataclass
class _Sums:
    """Running float64 sums of one method over the evaluated pixels."""

    abs_err: float = 0.0
    sq_err: float = 0.0
    abs_err_log: float = 0.0
    sq_err_log: float = 0.0
    ssim: float = 0.0
    ssim_log: float = 0.0
    ssim_pixels: int = 0
    pred_total: float = 0.0
    pred_on_zero_truth: float = 0.0
    pred_on_water: float = 0.0
    nodata_pixels: int = 0
    mass_err_max: float = 0.0
    mass_err_sum: float = 0.0
    mass_err_cells: int = 0
    values: list[np.ndarray] = field(default_factory=list)


class MetricPool:
    """Pooled metrics of several methods against one truth, accumulated tile by tile.

    Sums and moments are kept in float64 (so the result does not depend on how the pixels are cut
    into tiles); the evaluated values are also kept, as float32, for the rank-based hotspot
    metrics, which need the top 1 % over the whole evaluated set.

    Args:
        methods: Method names.
        data_range: SSIM/PSNR data range in linear units (truth max - min over the evaluated set).
        log_data_range: The same on ``log1p`` values.
        hotspot_fraction: Share of cells that are hotspots.
    """

    def __init__(
        self,
        methods: Sequence[str],
        *,
        data_range: float,
        log_data_range: float,
        hotspot_fraction: float = HOTSPOT_FRACTION,
    ) -> None:
        self.methods = list(methods)
        # A constant truth has no range; 1 keeps the SSIM constants finite.
        self.data_range = data_range if data_range > 0 else 1.0
        self.log_data_range = log_data_range if log_data_range > 0 else 1.0
        self.hotspot_fraction = hotspot_fraction
        self.n_pixels = 0
        self.has_water = False
        self._truth: list[np.ndarray] = []
        self._moments = RunningMoments(1)
        self._log_moments = RunningMoments(1)
        self._truth_total = 0.0
        self._sums = {name: _Sums() for name in self.methods}

    def add(
        self,
        truth: np.ndarray,
        coarse: np.ndarray,
        s: int,
        valid: np.ndarray,
        preds: Mapping[str, np.ndarray],
        *,
        water: np.ndarray | None = None,
    ) -> None:
        """Add one tile.

        Args:
            truth: ``[H, W]`` fine truth (NaN nodata).
            coarse: ``[H / s, W / s]`` coarse input of the tile.
            s: Scale.
            valid: ``[H, W]`` bool, pixels that may be evaluated (intersected with finite truth).
            preds: ``[H, W]`` prediction per method name (NaN where nothing was placed).
            water: Optional ``[H, W]`` bool water mask.
        """
        mask = np.asarray(valid, dtype=bool) & np.isfinite(truth)
        t = np.asarray(truth, dtype=np.float64)[mask]
        t_log = _log1p(t)
        self.n_pixels += int(t.size)
        self._truth.append(t.astype(np.float32))
        self._moments.update(t[None])
        self._log_moments.update(t_log[None])
        self._truth_total += float(t.sum())
        zero_truth = t == 0
        on_water = None
        if water is not None:
            self.has_water = True
            on_water = np.asarray(water, dtype=bool)[mask]
        truth_full = np.where(mask, truth, 0.0)
        ssim_ref = SsimReference(truth_full, mask, self.data_range)
        ssim_log_ref = SsimReference(_log1p(truth_full), mask, self.log_data_range)
        for name in self.methods:
            pred = np.asarray(preds[name], dtype=np.float64)
            acc = self._sums[name]
            finite = np.isfinite(pred)
            p_full = np.where(finite, pred, 0.0)
            p = p_full[mask]
            err = p - t
            err_log = _log1p(p) - t_log
            acc.abs_err += float(np.abs(err).sum())
            acc.sq_err += float((err * err).sum())
            acc.abs_err_log += float(np.abs(err_log).sum())
            acc.sq_err_log += float((err_log * err_log).sum())
            acc.pred_total += float(p.sum())
            acc.pred_on_zero_truth += float(p[zero_truth].sum())
            if on_water is not None:
                acc.pred_on_water += float(p[on_water].sum())
            acc.nodata_pixels += int((~finite[mask]).sum())
            if t.size:
                acc.ssim += float(np.nansum(ssim_ref.map(p_full)))
                acc.ssim_log += float(np.nansum(ssim_log_ref.map(_log1p(p_full))))
                acc.ssim_pixels += int(t.size)
            errors = block_mass_errors(pred, coarse, s)
            if errors.size:
                acc.mass_err_max = max(acc.mass_err_max, float(errors.max()))
                acc.mass_err_sum += float(errors.sum())
                acc.mass_err_cells += int(errors.size)
            acc.values.append(p.astype(np.float32))

    def results(self, *, hotspot_threshold: float | None = None) -> dict[str, dict[str, float]]:
        """The pooled metrics per method.

        Args:
            hotspot_threshold: Truth value from which a cell is a hotspot; default: the truth's
                top ``hotspot_fraction`` of the evaluated cells.

        Returns:
            ``{method: {metric: value}}``; a metric that cannot be computed is NaN.
        """
        nan = float("nan")
        truth = np.concatenate(self._truth).astype(np.float64) if self._truth else np.zeros(0)
        n = truth.size
        sst = float(self._moments.m2[0])
        sst_log = float(self._log_moments.m2[0])
        truth_total = self._truth_total
        if hotspot_threshold is None:
            hot_truth = hotspot_mask(truth, self.hotspot_fraction)
        else:
            hot_truth = (truth >= hotspot_threshold) & (truth > 0)
        n_hot = int(hot_truth.sum())
        out: dict[str, dict[str, float]] = {}
        for name in self.methods:
            acc = self._sums[name]
            pred = np.concatenate(acc.values).astype(np.float64) if acc.values else np.zeros(0)
            hot_pred = hotspot_mask(pred, self.hotspot_fraction)
            both = int((hot_truth & hot_pred).sum())
            mse = acc.sq_err / n if n else nan
            metrics = {
                "mae": acc.abs_err / n if n else nan,
                "rmse": math.sqrt(mse) if n else nan,
                "r2": 1.0 - acc.sq_err / sst if n and sst > 0 else nan,
                "mae_log1p": acc.abs_err_log / n if n else nan,
                "r2_log1p": 1.0 - acc.sq_err_log / sst_log if n and sst_log > 0 else nan,
                "ssim": acc.ssim / acc.ssim_pixels if acc.ssim_pixels else nan,
                "ssim_log1p": acc.ssim_log / acc.ssim_pixels if acc.ssim_pixels else nan,
                "psnr": _psnr(mse, self.data_range) if n else nan,
                "pbias": (acc.pred_total - truth_total) / truth_total if truth_total else nan,
                "hotspot_recall": both / n_hot if n_hot else nan,
                "hotspot_precision": both / int(hot_pred.sum()) if hot_pred.any() else nan,
                "hotspot_mae": float(np.abs(pred[hot_truth] - truth[hot_truth]).mean())
                if n_hot
                else nan,
                "mass_err_max": acc.mass_err_max if acc.mass_err_cells else nan,
                "mass_err_mean": acc.mass_err_sum / acc.mass_err_cells
                if acc.mass_err_cells
                else nan,
                "mass_on_zero_truth": acc.pred_on_zero_truth / acc.pred_total
                if acc.pred_total
                else nan,
            }
            if self.has_water:
                metrics["mass_on_water"] = (
                    acc.pred_on_water / acc.pred_total if acc.pred_total else nan
                )
            metrics["pred_nodata_pixels"] = float(acc.nodata_pixels)
            metrics["n_pixels"] = float(n)
            out[name] = metrics
        return out


def _psnr(mse: float, data_range: float) -> float:
    if mse <= 0:
        return float("inf")
    return 10.0 * math.log10(data_range * data_range / mse)


def _ranges(truth: np.ndarray) -> tuple[float, float]:
    """Linear and log1p data range (max - min) of the finite values of ``truth``."""
    finite = truth[np.isfinite(truth)]
    if finite.size == 0:
        return 0.0, 0.0
    lo, hi = float(finite.min()), float(finite.max())
    return hi - lo, float(_log1p(np.array(hi)) - _log1p(np.array(lo)))


def compute_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    coarse: np.ndarray,
    s: int,
    valid: np.ndarray,
    *,
    hotspot_threshold: float | None = None,
    zero_aux: np.ndarray | None = None,
) -> dict[str, float]:
    """All evaluation metrics of one prediction on one tile or scene.

    Args:
        pred: ``[H, W]`` prediction (NaN where nothing was placed: counts as 0).
        truth: ``[H, W]`` truth (NaN nodata: not evaluated).
        coarse: ``[H / s, W / s]`` coarse input, for the block mass error.
        s: Scale.
        valid: ``[H, W]`` bool, the pixels to evaluate (intersected with finite truth).
        hotspot_threshold: Truth value from which a cell is a hotspot; default: top 1 %.
        zero_aux: Optional ``[H, W]`` bool mask of cells that should get no emission (water);
            adds ``mass_on_water``.

    Returns:
        ``{metric: value}`` as described in the module docstring, plus ``n_pixels`` and
        ``pred_nodata_pixels``.
    """
    mask = np.asarray(valid, dtype=bool) & np.isfinite(truth)
    data_range, log_range = _ranges(np.where(mask, truth, np.nan))
    pool = MetricPool(["pred"], data_range=data_range, log_data_range=log_range)
    pool.add(truth, coarse, s, mask, {"pred": pred}, water=zero_aux)
    return pool.results(hotspot_threshold=hotspot_threshold)["pred"]


# =========================================================================== tile access
@dataclass(frozen=True)
class TileData:
    """Everything the evaluation needs on one tile of one year.

    Attributes:
        tile_id: Tile id.
        window: The tile's window on the padded grid.
        truth: ``[ts, ts]`` float64 truth (NaN nodata and outside the scene).
        coarse: ``[ts / s, ts / s]`` float64 coarse input.
        inside: ``[ts, ts]`` bool, pixels inside the unpadded scene.
        domain: ``[ts, ts]`` bool, pixels where a baseline may place mass (inside the scene and
            every aux band valid).
        aux: ``[C, ts, ts]`` float64 aux bands in raw units (log1p undone).
        bands: Aux band names.
        prediction: ``[ts, ts]`` float64 model prediction (NaN nodata), or None.
    """

    tile_id: int
    window: Window
    truth: np.ndarray
    coarse: np.ndarray
    inside: np.ndarray
    domain: np.ndarray
    aux: np.ndarray
    bands: tuple[str, ...]
    prediction: np.ndarray | None

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
        CarbongeoError: If the tile index is missing.
    """

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        from carbongeo.stages.tile import load_index

        self.tiles_dir = config.tiles_dir
        self.index = load_index(self.tiles_dir)
        check_tiles(config, self.index)
        self.grid = self.index.grid
        self.scale = self.grid.scale
        self.tile_size = self.grid.tile_size
        self.bands = tuple(self.index.bands)
        # The transform the cubes were made with (the index), else the config's.
        transforms = {a.name: a.transform for a in config.aux}
        transforms |= {a["name"]: a["transform"] for a in self.index.aux if "transform" in a}
        self.log1p_bands = [transforms.get(b) == "log1p" for b in self.bands]
        self._positions = {t.id: i for i, t in enumerate(self.index.tiles)}
        self._cubes: dict[int, dict[str, np.ndarray | None]] = {}

    @property
    def tile_ids(self) -> list[int]:
        """Every tile id in the index."""
        return list(self._positions)

    def prediction_path(self, year: int, suffix: str = "npy") -> Path:
        """``predictions/Pred_<year>.<suffix>``."""
        return self.config.predictions_dir / f"Pred_{year}.{suffix}"

    def has_prediction(self, year: int) -> bool:
        """True when the ``.npy`` prediction of ``year`` exists."""
        return self.prediction_path(year).is_file()

    def _year(self, year: int, *, with_prediction: bool) -> dict[str, np.ndarray | None]:
        cached = self._cubes.get(year)
        if cached is not None and (cached["pred"] is not None or not with_prediction):
            return cached
        from carbongeo.store.cube_files import open_cube

        cubes: dict[str, np.ndarray | None] = {}
        for key in ("X", "Y"):
            cubes[key] = open_cube(self.tiles_dir, key, year, self.index)
        cubes["C"] = None
        if self.index.has_coarse:
            cubes["C"] = open_cube(self.tiles_dir, "C", year, self.index)
        cubes["pred"] = None
        if with_prediction:
            cubes["pred"] = self._load_prediction(year)
        self._cubes[year] = cubes
        return cubes

    def _load_prediction(self, year: int) -> np.ndarray:
        path = self.prediction_path(year)
        if not path.is_file():
            raise CarbongeoError(
                f"{path} not found; run: carbongeo mosaic --config {self.config.path} "
                f"--years {year}"
            )
        check_prediction(self.config, self.prediction_path(year, "tif"), year)
        pred = np.load(path, mmap_mode="r")
        if pred.shape != (self.grid.height, self.grid.width):
            raise CarbongeoError(
                f"{path} has shape {pred.shape} but the grid is "
                f"{self.grid.height} x {self.grid.width}; rerun: carbongeo mosaic "
                f"--config {self.config.path} --years {year}"
            )
        return pred

    def truth_total(self, year: int, tile_id: int) -> float:
        """Sum of the valid truth of one tile."""
        cube = self._year(year, with_prediction=False)["Y"]
        assert cube is not None
        return float(np.nansum(cube[self._position(tile_id), 0], dtype=np.float64))

    def truth_range(self, years: Sequence[int], tile_ids: Sequence[int]) -> tuple[float, float]:
        """Linear and log1p truth range (max - min) over the given tiles and years."""
        lo, hi = math.inf, -math.inf
        for year in years:
            cube = self._year(year, with_prediction=False)["Y"]
            assert cube is not None
            for tile_id in tile_ids:
                values = np.asarray(cube[self._position(tile_id), 0], dtype=np.float64)
                finite = values[np.isfinite(values)]
                if finite.size:
                    lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        if hi < lo:
            return 0.0, 0.0
        return hi - lo, float(_log1p(np.array(hi)) - _log1p(np.array(lo)))

    def _position(self, tile_id: int) -> int:
        if tile_id not in self._positions:
            raise CarbongeoError(
                f"tile {tile_id} is not in the tile index; the split is older than the tiles, "
                f"rerun: carbongeo split --config {self.config.path}"
            )
        return self._positions[tile_id]

    def load(self, year: int, tile_id: int, *, with_prediction: bool = True) -> TileData:
        """The truth, coarse input, aux and prediction of one tile in one year."""
        cubes = self._year(year, with_prediction=with_prediction)
        position = self._position(tile_id)
        record = self.index.tiles[position]
        ts, s = self.tile_size, self.scale
        window = Window(record.row, record.col, ts, ts)
        inner = window.clip(self.grid.height, self.grid.width)
        inside = np.zeros((ts, ts), dtype=bool)
        inside[: inner.height, : inner.width] = True

        y_cube, x_cube, c_cube = cubes["Y"], cubes["X"], cubes["C"]
        assert y_cube is not None and x_cube is not None
        truth = np.where(inside, np.asarray(y_cube[position, 0], dtype=np.float64), np.nan)
        aux = np.asarray(x_cube[position], dtype=np.float64).copy()
        for channel, is_log in enumerate(self.log1p_bands):
            if is_log:
                aux[channel] = np.expm1(aux[channel])
        domain = inside & aux_domain(aux)
        if c_cube is not None:
            coarse = np.asarray(c_cube[position, 0], dtype=np.float64)
        else:
            coarse = block_sum(np.where(inside, truth, np.nan), s)

        prediction = None
        if cubes["pred"] is not None:
            prediction = np.full((ts, ts), np.nan)
            rows, cols = inner.slices()
            prediction[: inner.height, : inner.width] = cubes["pred"][rows, cols]
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
        )

    def proxy_bands(self) -> list[str]:
        """The dasymetric proxy bands of the config that exist in the tiles."""
        return [b for b in self.config.dasymetric_bands() if b in self.bands]

    def baselines(
        self, tile: TileData, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The baselines on one tile (all of them, or only ``names``)."""
        proxies = {b: tile.band(b) for b in self.proxy_bands()}
        if names is not None:
            wanted = {n.split(":", 1)[1] for n in names if n.startswith("dasymetric:")}
            proxies = {b: p for b, p in proxies.items() if b in wanted}
        results = run_baselines(tile.coarse, self.scale, tile.domain, proxies)
        return results if names is None else {n: results[n] for n in names if n in results}


# =========================================================================== the report
@dataclass(frozen=True)
class SectionResult:
    """Metrics of every method on one set of tiles and years.

    Attributes:
        name: Section title (``test`` or ``holdout <year>``).
        split: The tile set (``train``, ``val``, ``test`` or ``all``).
        years: Evaluated years.
        n_tiles: Evaluated tiles (per year).
        n_pixels: Evaluated pixels, all years together.
        metrics: ``{method: {metric: value}}``.
        data_range: Truth max - min over the evaluated set (SSIM/PSNR).
        coarse_total: Total coarse input over the evaluated tiles.
        unplaced_mass: Coarse mass in blocks where no aux pixel is valid (no baseline can place it).
    """

    name: str
    split: str
    years: tuple[int, ...]
    n_tiles: int
    n_pixels: int
    metrics: dict[str, dict[str, float]]
    data_range: float
    coarse_total: float
    unplaced_mass: float

    def ranking(self) -> list[str]:
        """Methods by increasing MAE (NaN last)."""
        return sorted(self.metrics, key=lambda m: _sort_key(self.metrics[m]["mae"]))

    @property
    def best_baseline(self) -> str | None:
        """The baseline with the lowest MAE."""
        baselines = [m for m in self.ranking() if m != MODEL]
        return baselines[0] if baselines else None

    def verdict(self, units: str) -> str:
        """One line: the model against the best baseline by MAE."""
        best = self.best_baseline
        if MODEL not in self.metrics or best is None:
            return "no model prediction to compare"
        model_mae = self.metrics[MODEL]["mae"]
        base_mae = self.metrics[best]["mae"]
        if not (math.isfinite(model_mae) and math.isfinite(base_mae)):
            return "MAE could not be computed (no evaluated pixels)"
        if base_mae <= 1e-9 * model_mae or base_mae == 0:
            # Rounding-level baseline error: the proxy is the truth itself.
            return (
                f"model MAE {_num(model_mae)} {units}; the best baseline ({best}) is exact "
                f"(MAE {base_mae:.1e})"
            )
        change = (base_mae - model_mae) / base_mae * 100.0
        word = "lower (better)" if change >= 0 else "higher (worse)"
        return (
            f"model MAE {_num(model_mae)} vs best baseline {best} {_num(base_mae)} {units}: "
            f"{abs(change):.1f}% {word}"
        )

    def to_dict(self, units: str) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "name": self.name,
            "split": self.split,
            "years": list(self.years),
            "tiles": self.n_tiles,
            "pixels": self.n_pixels,
            "data_range": self.data_range,
            "coarse_total": self.coarse_total,
            "unplaced_mass": self.unplaced_mass,
            "ranking": self.ranking(),
            "best_baseline": self.best_baseline,
            "verdict": self.verdict(units),
            "methods": self.metrics,
        }


@dataclass(frozen=True)
class EvaluationReport:
    """The result of :func:`evaluate`.

    Attributes:
        sections: The main split section, then the held-out year (when there is one).
        units: Units of the target.
        scale: Fine pixels per coarse cell side.
        holdout_year: The held-out year of the split, if any.
        markdown_path: ``reports/evaluation.md``.
        json_path: ``reports/evaluation.json``.
    """

    sections: tuple[SectionResult, ...]
    units: str
    scale: int
    holdout_year: int | None
    markdown_path: Path
    json_path: Path

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the content of ``evaluation.json``; NaN and inf become null)."""
        return _json_safe(
            {
                "units": self.units,
                "scale": self.scale,
                "holdout_year": self.holdout_year,
                "metrics": list(METRICS),
                "sections": [s.to_dict(self.units) for s in self.sections],
                "markdown": str(self.markdown_path),
            }
        )

    def to_markdown(self) -> str:
        """The Markdown report."""
        lines = ["# carbongeo evaluation", ""]
        lines.append(
            f"Units: {self.units} (MAE, RMSE). Coarse scale {self.scale} x {self.scale}. "
            "Metrics pooled over every evaluated (truth-valid) pixel; see the definitions below."
        )
        for section in self.sections:
            lines += ["", *_section_markdown(section, self.units)]
        lines += ["", "## Definitions", ""]
        lines += [
            "- R² = 1 - SSE/SST; log1p columns use log1p(max(x, 0)).",
            "- SSIM: 7x7 uniform window over truth-valid pixels, data range = truth max - min "
            "over the evaluated set; PSNR uses the same range.",
            "- top-1%: the truth's top 1 % cells against the prediction's top 1 % (zeros "
            "excluded); top-1% MAE is the MAE on the truth's top cells.",
            "- block mass err: |block sum - coarse| / coarse over coarse cells > 0 with a "
            "prediction; mass on zero truth: share of predicted mass on cells whose truth is 0.",
            "- total bias: (sum pred - sum truth) / sum truth.",
        ]
        return "\n".join(lines) + "\n"


def _section_markdown(section: SectionResult, units: str) -> list[str]:
    years = ", ".join(str(y) for y in section.years)
    lines = [
        f"## {section.name}",
        "",
        f"Tiles: {section.n_tiles} ({section.split}) x {len(section.years)} year(s) ({years}); "
        f"evaluated pixels: {section.n_pixels:,}.",
    ]
    if section.coarse_total > 0 and section.unplaced_mass > 0:
        share = section.unplaced_mass / section.coarse_total
        lines.append(
            f"Coarse mass in blocks without valid aux (unplaceable by the baselines): "
            f"{_num(section.unplaced_mass)} ({share:.2%})."
        )
    missing = {
        name: int(m.get("pred_nodata_pixels", 0))
        for name, m in section.metrics.items()
        if m.get("pred_nodata_pixels", 0) > 0
    }
    if missing:
        listed = ", ".join(f"{name} {count:,}" for name, count in missing.items())
        lines.append(f"Truth-valid pixels without a prediction (counted as 0): {listed}.")
    lines.append("")
    columns = [k for k in METRICS if any(k in m for m in section.metrics.values())]
    header = ["method", *(METRICS[k].format(u=units) for k in columns)]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    best = section.best_baseline
    for name in section.ranking():
        label = name
        if name == MODEL:
            label = "**model**"
        elif name == best:
            label = f"{name} (best baseline)"
        cells = [_cell(key, section.metrics[name].get(key, float("nan"))) for key in columns]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    lines += ["", f"Verdict: {section.verdict(units)}."]
    return lines


def _cell(key: str, value: float) -> str:
    if not math.isfinite(value):
        return "inf" if value == math.inf else "-"
    if key.startswith("mass_err"):
        return f"{value:.1e}"
    if key in ("pbias", "mass_on_zero_truth", "mass_on_water"):
        return f"{value:.2%}"
    if key in ("r2", "r2_log1p", "ssim", "ssim_log1p", "hotspot_recall", "hotspot_precision"):
        return f"{value:.3f}"
    if key == "psnr":
        return f"{value:.2f}"
    return _num(value)


def _num(value: float) -> str:
    """A readable number: 4 significant digits, thousands separators for large values."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:#.4g}"


def _sort_key(value: float) -> tuple[int, float]:
    return (0, value) if math.isfinite(value) else (1, 0.0)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# =========================================================================== the command
def evaluate(
    config: PipelineConfig,
    *,
    years: Sequence[int] | None = None,
    split: str | None = None,
    progress: bool = True,
) -> EvaluationReport:
    """Evaluate the model's predictions and the baselines; write the reports.

    Args:
        config: The pipeline.
        years: Years to evaluate; default: every config year with a prediction.
        split: Tile set (``train``, ``val`` or ``test``); default ``[evaluate] split``.
        progress: Show a progress bar over tiles.

    Returns:
        The report; ``reports/evaluation.md`` and ``reports/evaluation.json`` are written.

    Raises:
        CarbongeoError: Missing tiles, split or predictions (naming the command to run).
    """
    from carbongeo.stages.split import load_split

    subset = split if split is not None else config.evaluate.split
    if subset not in ("train", "val", "test"):
        raise CarbongeoError(f"--split: {subset!r} is not one of train, val, test")
    store = TileStore(config)
    tile_split = load_split(config.tiles_dir)
    check_split(config, tile_split)
    years = _years_with_predictions(config, store, years)
    holdout = tile_split.holdout_year
    sections: list[SectionResult] = []
    main_years = [y for y in years if y != holdout]
    if main_years:
        ids = tile_split.ids(subset)
        if not ids:
            raise CarbongeoError(
                f"split.json has no {subset} tiles; change split.ratios and rerun: "
                f"carbongeo split --config {config.path}"
            )
        sections.append(_evaluate_section(store, subset, subset, main_years, ids, progress))
    if holdout is not None and holdout in years:
        sections.append(
            _evaluate_section(
                store, f"holdout {holdout}", "all", [holdout], store.tile_ids, progress
            )
        )
    report = EvaluationReport(
        sections=tuple(sections),
        units=config.target.units or "t / cell",
        scale=store.scale,
        holdout_year=holdout,
        markdown_path=config.reports_dir / EVALUATION_MD,
        json_path=config.reports_dir / EVALUATION_JSON,
    )
    _write_reports(report)
    return report


def _years_with_predictions(
    config: PipelineConfig, store: TileStore, years: Sequence[int] | None
) -> list[int]:
    if years is not None:
        missing = [y for y in years if not store.has_prediction(y)]
        if missing:
            raise CarbongeoError(
                f"no prediction for {missing[0]} ({store.prediction_path(missing[0])}); run: "
                f"carbongeo mosaic --config {config.path} --years {_year_range(missing)}"
            )
        return sorted(years)
    found = [y for y in config.years if store.has_prediction(y)]
    if not found:
        raise CarbongeoError(
            f"no predictions in {config.predictions_dir}; run: carbongeo mosaic "
            f"--config {config.path} --years {_year_range(config.years)}"
        )
    return found


def _year_range(years: Sequence[int]) -> str:
    years = sorted(years)
    return str(years[0]) if len(years) == 1 else f"{years[0]}-{years[-1]}"


def _evaluate_section(
    store: TileStore,
    name: str,
    subset: str,
    years: Sequence[int],
    tile_ids: Sequence[int],
    progress: bool,
) -> SectionResult:
    from tqdm.auto import tqdm

    data_range, log_range = store.truth_range(years, tile_ids)
    methods = [MODEL, "uniform", "bicubic", *(f"dasymetric:{b}" for b in store.proxy_bands())]
    pool = MetricPool(methods, data_range=data_range, log_data_range=log_range)
    coarse_total = 0.0
    unplaced = 0.0
    s = store.scale
    with tqdm(
        total=len(years) * len(tile_ids),
        desc=f"evaluate {name}",
        unit="tile",
        disable=not progress,
        leave=False,
    ) as bar:
        for year in years:
            for tile_id in tile_ids:
                tile = store.load(year, tile_id)
                assert tile.prediction is not None
                preds = {MODEL: tile.prediction, **store.baselines(tile)}
                pool.add(tile.truth, tile.coarse, s, tile.inside, preds, water=tile.water)
                coarse_total += float(np.nansum(tile.coarse))
                unplaced += unplaced_mass(tile.coarse, s, tile.domain)
                bar.update()
    return SectionResult(
        name=name,
        split=subset,
        years=tuple(years),
        n_tiles=len(tile_ids),
        n_pixels=pool.n_pixels,
        metrics=pool.results(),
        data_range=data_range,
        coarse_total=coarse_total,
        unplaced_mass=unplaced,
    )


def _write_reports(report: EvaluationReport) -> None:
    from carbongeo.io.atomic import write_json_atomic, write_text_atomic

    report.markdown_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(report.markdown_path, report.to_markdown())
    write_json_atomic(report.json_path, report.to_dict())
