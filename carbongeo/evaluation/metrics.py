"""Regression metrics pooled over every valid pixel of a data set, in physical units.

Metrics are never averaged per batch or per tile: :class:`PooledMetrics` accumulates sums (in
float64) and computes the metrics once at the end, so the result does not depend on the batch size,
and the sums can be all-reduced across processes to give exactly the single-process result. The
hotspot threshold and the SSIM value range come from the training target (see
:class:`carbongeo.training.normalization.Normalization`), never from the data being scored.

Metrics:

* ``mae``, ``rmse``: mean absolute and root mean squared error over valid pixels;
* ``r2``: ``1 - SSE / SST`` with ``SST`` around the pooled target mean;
* ``ssim``: mean SSIM over every 11 x 11 Gaussian window (sigma 1.5) that lies entirely on valid
  pixels, with both fields divided by ``ssim_range`` (C1 = 0.01^2, C2 = 0.03^2);
* ``mass_error``: ``sum |block_sum(pred) - coarse| / sum |coarse|`` over the coarse cells whose
  pixels are all valid, i.e. the relative violation of mass conservation;
* ``hotspot_mae``: MAE over valid pixels whose target is at or above ``hotspot_threshold``.

Undefined metrics (no pixel, no hotspot, constant target) are NaN.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from carbongeo.ops.blocks import block_sum

METRIC_NAMES: tuple[str, ...] = ("mae", "rmse", "r2", "ssim", "mass_error", "hotspot_mae")

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5

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


def _gaussian_window(device: torch.device) -> Tensor:
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float32, device=device) - SSIM_WINDOW // 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, SSIM_WINDOW, SSIM_WINDOW)


def ssim_map(pred: Tensor, target: Tensor, data_range: float) -> Tensor:
    """SSIM of every full 11 x 11 window ("valid" convolution) of ``[N, 1, H, W]`` fields.

    Returns:
        ``[N, 1, H - 10, W - 10]`` SSIM values (empty when a side is below 11 pixels).
    """
    window = _gaussian_window(pred.device)
    x = pred.float() / data_range
    y = target.float() / data_range
    c1, c2 = 0.01**2, 0.03**2
    mu_x = F.conv2d(x, window)
    mu_y = F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x**2
    var_y = F.conv2d(y * y, window) - mu_y**2
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )


class PooledMetrics:
    """Accumulates pixel sums over batches and computes pooled metrics.

    Args:
        scale: Fine pixels per coarse cell side (for the mass error).
        hotspot_threshold: Target value at or above which a pixel is a hotspot (from the training
            target, e.g. ``Normalization.hotspot_threshold``).
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
        if min(p.shape[-2:]) >= SSIM_WINDOW:
            ssim = ssim_map(torch.where(m, p, 0.0), y_valid, self.ssim_range).double()
            # A window counts only when all its pixels are valid.
            full = F.max_pool2d((~m).float(), SSIM_WINDOW, stride=1) == 0
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
        """The pooled metrics (see the module docstring), plus ``n_pixels`` and ``n_hotspot``."""
        s = dict(zip(_FIELDS, self.sums.tolist(), strict=True))
        n = s["count"]
        nan = math.nan
        sst = s["target_sq"] - s["target_sum"] ** 2 / n if n > 0 else 0.0
        return {
            "mae": s["abs_err"] / n if n > 0 else nan,
            "rmse": math.sqrt(s["sq_err"] / n) if n > 0 else nan,
            "r2": 1.0 - s["sq_err"] / sst if n > 1 and sst > 0 else nan,
            "ssim": s["ssim_sum"] / s["ssim_count"] if s["ssim_count"] > 0 else nan,
            "mass_error": s["mass_abs_err"] / s["mass_coarse"] if s["mass_coarse"] > 0 else nan,
            "hotspot_mae": s["hot_abs_err"] / s["hot_count"] if s["hot_count"] > 0 else nan,
            "n_pixels": n,
            "n_hotspot": s["hot_count"],
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
    """Pooled metrics of one prediction (a scene ``[H, W]`` or a batch ``[..., H, W]``).

    Args:
        pred: Predicted fine field in physical units.
        target: True fine field; NaN marks nodata.
        mask: Bool validity; by default where ``target`` and ``pred`` are finite.
        scale: Fine pixels per coarse cell side.
        hotspot_threshold: Training-target threshold of the hotspot MAE.
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
