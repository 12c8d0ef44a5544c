"""Metrics, defined once: the training validation and the evaluation report.

Both pool their sums over every evaluated pixel (never an average of per-batch or per-tile
values), so the result does not depend on how the pixels are cut into batches or tiles. They
answer different questions and their names say so; a name they share (``mae``, ``rmse``, ``r2``)
means the same thing in both.

**Validation** (:class:`PooledMetrics`, the ``val_*`` columns of ``train_log.csv``), in torch on
the validation tiles, in physical units over the pixels whose target is valid. The hotspot
threshold and the SSIM data range come from the training target (see
:class:`carbongeo.training.normalization.Normalization`), never from the data being scored. The
sums can be all-reduced across processes to give exactly the single-process result.

* ``mae``, ``rmse``: mean absolute and root mean squared error;
* ``r2``: ``1 - SSE / SST`` with ``SST`` around the pooled target mean;
* ``ssim_gauss11``: mean SSIM over every 11 x 11 Gaussian window (sigma 1.5) that lies entirely
  on valid pixels, on physical values with data range ``ssim_range``
  (:func:`carbongeo.models.ssim.ssim_map`);
* ``mass_err_pooled``: ``sum |block_sum(pred) - coarse| / sum |coarse|`` over the coarse cells
  whose pixels are all valid, i.e. the relative violation of mass conservation;
* ``mae_above_threshold``: MAE over the valid pixels whose target is at or above
  ``hotspot_threshold``.

**Report** (:class:`MetricPool`, ``evaluation.md`` / ``evaluation.json``), in numpy float64 on the
mosaicked prediction and the baselines against the fine truth. A pixel is evaluated when its truth
is valid; a prediction that is NaN there placed no mass and counts as 0 (the count is reported as
``pred_nodata_pixels``). With ``t`` the truth and ``p`` the prediction over evaluated pixels:

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
  (:func:`carbongeo.ops.mass.block_mass_errors`);
* ``mass_on_zero_truth``: share of the predicted mass put on cells whose truth is exactly 0 (e.g.
  water); ``mass_on_water``: share put on cells where an aux band named ``water`` is 1.

Undefined metrics (no pixel, no hotspot, constant truth) are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from carbongeo.models.ssim import GAUSSIAN_11, UNIFORM_7, SsimReference, ssim_map
from carbongeo.ops.blocks import block_sum
from carbongeo.ops.mass import block_mass_errors
from carbongeo.training.normalization import RunningMoments

__all__ = [
    "HOTSPOT_FRACTION",
    "REPORT_METRICS",
    "VALIDATION_METRICS",
    "MetricPool",
    "PooledMetrics",
    "compute_metrics",
    "hotspot_mask",
    "log1p_clipped",
    "regression_metrics",
    "report_ssim",
    "value_ranges",
]

# =========================================================================== validation (training)
VALIDATION_METRICS: tuple[str, ...] = (
    "mae",
    "rmse",
    "r2",
    "ssim_gauss11",
    "mass_err_pooled",
    "mae_above_threshold",
)
"""The metrics of :meth:`PooledMetrics.compute`, logged as ``val_<name>`` per epoch."""

VALIDATION_SSIM_WINDOW = GAUSSIAN_11

_FIELDS: tuple[str, ...] = (
    "count",
    "abs_err",
    "sq_err",
    "target_sum",
    "target_sq",
    "ssim_sum",
    "ssim_count",
    "mass_abs_err",
    "mass_coarse",
    "hot_count",
    "hot_abs_err",
)


def _as_images(x: Tensor | np.ndarray) -> Tensor:
    """``[..., H, W]`` as a ``[N, 1, H, W]`` tensor (no copy for tensors)."""
    tensor = torch.as_tensor(x)
    if tensor.dim() < 2:
        raise ValueError(f"expected a field shaped [..., H, W], got shape {tuple(tensor.shape)}")
    return tensor.reshape(-1, 1, *tensor.shape[-2:])


class PooledMetrics:
    """The validation metrics: accumulates pixel sums over batches and computes them pooled.

    Args:
        scale: Fine pixels per coarse cell side (for the mass error).
        hotspot_threshold: Target value at or above which a pixel counts in
            ``mae_above_threshold`` (from the training target, e.g.
            ``Normalization.hotspot_threshold``).
        ssim_range: Value range the SSIM constants refer to (e.g. the same training quantile).
    """

    def __init__(self, scale: int, hotspot_threshold: float, ssim_range: float) -> None:
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        if not ssim_range > 0:
            raise ValueError(f"ssim_range must be > 0, got {ssim_range}")
        self.scale = scale
        self.hotspot_threshold = float(hotspot_threshold)
        self.ssim_range = float(ssim_range)
        self.sums = torch.zeros(len(_FIELDS), dtype=torch.float64)

    @torch.no_grad()
    def update(
        self,
        pred: Tensor | np.ndarray,
        target: Tensor | np.ndarray,
        mask: Tensor | np.ndarray,
        coarse: Tensor | np.ndarray | None = None,
    ) -> None:
        """Add a batch.

        Args:
            pred: Predicted fine field ``[..., H, W]`` in physical units.
            target: True fine field, same shape (values under ``mask == False`` are ignored).
            mask: Bool, same shape: True where the target is valid.
            coarse: Optional coarse field ``[..., H/s, W/s]`` the prediction must conserve.
        """
        p = _as_images(pred).double()
        y = _as_images(target).to(p.device).double()
        m = _as_images(mask).to(p.device).bool()
        if p.shape != y.shape or p.shape != m.shape:
            raise ValueError(
                f"pred {tuple(p.shape)}, target {tuple(y.shape)} and mask {tuple(m.shape)} differ"
            )
        err = torch.where(m, p - y, 0.0)
        y_valid = torch.where(m, y, 0.0)
        hot = m & (y >= self.hotspot_threshold)
        values = {
            "count": m.sum(),
            "abs_err": err.abs().sum(),
            "sq_err": (err**2).sum(),
            "target_sum": y_valid.sum(),
            "target_sq": (y_valid**2).sum(),
            "hot_count": hot.sum(),
            "hot_abs_err": torch.where(hot, err.abs(), 0.0).sum(),
        }
        size = VALIDATION_SSIM_WINDOW.size
        if min(p.shape[-2:]) >= size:
            ssim = ssim_map(
                torch.where(m, p, 0.0).float(),
                y_valid.float(),
                data_range=self.ssim_range,
                window=VALIDATION_SSIM_WINDOW,
            ).double()
            # A window counts only when all its pixels are valid.
            full = F.max_pool2d((~m).float(), size, stride=1) == 0
            values["ssim_sum"] = torch.where(full, ssim, 0.0).sum()
            values["ssim_count"] = full.sum()
        if coarse is not None:
            c = _as_images(coarse).to(p.device).double()
            blocks = block_sum(p, self.scale)
            if blocks.shape != c.shape:
                raise ValueError(
                    f"coarse {tuple(c.shape)} does not match the block sums {tuple(blocks.shape)}"
                )
            valid_blocks = block_sum(m.double(), self.scale) == self.scale**2
            values["mass_abs_err"] = torch.where(valid_blocks, (blocks - c).abs(), 0.0).sum()
            values["mass_coarse"] = torch.where(valid_blocks, c.abs(), 0.0).sum()
        vector = torch.zeros(len(_FIELDS), dtype=torch.float64, device=p.device)
        for name, value in values.items():
            vector[_FIELDS.index(name)] = value
        self.sums += vector.cpu()

    def merge(self, sums: Tensor) -> None:
        """Replace the sums by ``sums`` (e.g. after an all-reduce across processes)."""
        self.sums = sums.detach().to("cpu", torch.float64).clone()

    def compute(self) -> dict[str, float]:
        """The pooled validation metrics, plus ``n_pixels`` and ``n_above_threshold``."""
        s = dict(zip(_FIELDS, self.sums.tolist(), strict=True))
        n = s["count"]
        nan = math.nan
        sst = s["target_sq"] - s["target_sum"] ** 2 / n if n > 0 else 0.0
        return {
            "mae": s["abs_err"] / n if n > 0 else nan,
            "rmse": math.sqrt(s["sq_err"] / n) if n > 0 else nan,
            "r2": 1.0 - s["sq_err"] / sst if n > 1 and sst > 0 else nan,
            "ssim_gauss11": s["ssim_sum"] / s["ssim_count"] if s["ssim_count"] > 0 else nan,
            "mass_err_pooled": s["mass_abs_err"] / s["mass_coarse"]
            if s["mass_coarse"] > 0
            else nan,
            "mae_above_threshold": s["hot_abs_err"] / s["hot_count"] if s["hot_count"] > 0 else nan,
            "n_pixels": n,
            "n_above_threshold": s["hot_count"],
        }


def regression_metrics(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None = None,
    *,
    scale: int,
    hotspot_threshold: float,
    ssim_range: float,
    coarse: Tensor | np.ndarray | None = None,
) -> dict[str, float]:
    """Pooled validation metrics of one prediction (a scene ``[H, W]`` or a batch).

    Args:
        pred: Predicted fine field in physical units.
        target: True fine field; NaN marks nodata.
        mask: Bool validity; by default where ``target`` and ``pred`` are finite.
        scale: Fine pixels per coarse cell side.
        hotspot_threshold: Training-target threshold of ``mae_above_threshold``.
        ssim_range: Value range the SSIM constants refer to.
        coarse: Optional coarse field for the mass error.

    Returns:
        The metrics of :meth:`PooledMetrics.compute`.
    """
    p = torch.as_tensor(pred)
    y = torch.as_tensor(target)
    valid = torch.isfinite(y) & torch.isfinite(p)
    if mask is not None:
        valid &= torch.as_tensor(mask).bool()
    meter = PooledMetrics(scale, hotspot_threshold, ssim_range)
    meter.update(torch.nan_to_num(p), torch.nan_to_num(y), valid, coarse)
    return meter.compute()


# =========================================================================== report (evaluation)
HOTSPOT_FRACTION = 0.01

REPORT_METRICS: tuple[str, ...] = (
    "mae",
    "rmse",
    "r2",
    "mae_log1p",
    "r2_log1p",
    "ssim",
    "ssim_log1p",
    "psnr",
    "pbias",
    "hotspot_recall",
    "hotspot_precision",
    "hotspot_mae",
    "mass_err_max",
    "mass_err_mean",
    "mass_on_zero_truth",
    "mass_on_water",
)
"""The metrics of :meth:`MetricPool.results`, in report order (``mass_on_water`` only with a
water band)."""

REPORT_SSIM_WINDOW = UNIFORM_7


def report_ssim(truth: np.ndarray, mask: np.ndarray, data_range: float) -> SsimReference:
    """The report's SSIM against ``[H, W]`` ``truth``: see the module docstring.

    Where the whole window is valid it is scikit-image's ``structural_similarity`` map; near
    nodata the window's statistics use its ``mask`` pixels only.
    """
    return SsimReference(
        _image(truth),
        data_range=data_range,
        window=REPORT_SSIM_WINDOW,
        padding="reflect",
        mask=torch.from_numpy(np.asarray(mask, dtype=bool))[None, None],
        sample_covariance=True,
    )


def _image(values: np.ndarray) -> Tensor:
    """``[H, W]`` float64 values as a ``[1, 1, H, W]`` tensor."""
    return torch.from_numpy(np.asarray(values, dtype=np.float64))[None, None]


def _ssim_sums(reference: SsimReference, preds: np.ndarray) -> np.ndarray:
    """Sum of the SSIM map of each ``[N, H, W]`` prediction over the reference's mask."""
    maps = reference.map(torch.from_numpy(preds)[:, None]).numpy()
    return np.nansum(maps.reshape(len(preds), -1), axis=1)


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


def log1p_clipped(x: np.ndarray) -> np.ndarray:
    """``log1p(max(x, 0))``: the log space of the ``*_log1p`` metrics."""
    return np.log1p(np.maximum(x, 0.0))


def value_ranges(values: np.ndarray) -> tuple[float, float]:
    """Linear and log1p data range (max - min) of the finite ``values`` (0.0 when none)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 0.0
    lo, hi = float(finite.min()), float(finite.max())
    return hi - lo, float(log1p_clipped(np.array(hi)) - log1p_clipped(np.array(lo)))


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
    """The report metrics of several methods against one truth, accumulated tile by tile.

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
        t_log = log1p_clipped(t)
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
        fulls = []
        for name in self.methods:
            pred = np.asarray(preds[name], dtype=np.float64)
            acc = self._sums[name]
            finite = np.isfinite(pred)
            p_full = np.where(finite, pred, 0.0)
            p = p_full[mask]
            err = p - t
            err_log = log1p_clipped(p) - t_log
            acc.abs_err += float(np.abs(err).sum())
            acc.sq_err += float((err * err).sum())
            acc.abs_err_log += float(np.abs(err_log).sum())
            acc.sq_err_log += float((err_log * err_log).sum())
            acc.pred_total += float(p.sum())
            acc.pred_on_zero_truth += float(p[zero_truth].sum())
            if on_water is not None:
                acc.pred_on_water += float(p[on_water].sum())
            acc.nodata_pixels += int((~finite[mask]).sum())
            errors = block_mass_errors(pred, coarse, s)
            if errors.size:
                acc.mass_err_max = max(acc.mass_err_max, float(errors.max()))
                acc.mass_err_sum += float(errors.sum())
                acc.mass_err_cells += int(errors.size)
            acc.values.append(p.astype(np.float32))
            fulls.append(p_full)
        if t.size and fulls:
            # Every method against the tile's truth at once: the truth's statistics are computed
            # once and the filters run on one batch.
            stacked = np.stack(fulls)
            ssim = _ssim_sums(report_ssim(truth_full, mask, self.data_range), stacked)
            ssim_log = _ssim_sums(
                report_ssim(log1p_clipped(truth_full), mask, self.log_data_range),
                log1p_clipped(stacked),
            )
            for k, name in enumerate(self.methods):
                acc = self._sums[name]
                acc.ssim += float(ssim[k])
                acc.ssim_log += float(ssim_log[k])
                acc.ssim_pixels += int(t.size)

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
    """All report metrics of one prediction on one tile or scene.

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
    data_range, log_range = value_ranges(np.where(mask, truth, np.nan))
    pool = MetricPool(["pred"], data_range=data_range, log_data_range=log_range)
    pool.add(truth, coarse, s, mask, {"pred": pred}, water=zero_aux)
    return pool.results(hotspot_threshold=hotspot_threshold)["pred"]
