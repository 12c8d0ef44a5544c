"""Hybrid training loss for fine emission maps with nodata masks.

All terms but the consistency term compare ``log1p(x / value_scale)`` of the prediction and the
target, the normalised space in which a few tonnes and thousands of tonnes both matter. Nodata
pixels (``mask`` False) are replaced by the same value in the prediction and the target with
``torch.where`` (so even NaN there is harmless) and excluded from every average: the loss and its
gradient do not depend on them at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carbongeo.models.ssim import GAUSSIAN_11, ssim_map
from carbongeo.ops.blocks import block_sum

TERMS: tuple[str, ...] = ("pixel", "ssim", "edge", "consistency", "tv")

CHARBONNIER_EPS = 1e-3
SSIM_WINDOW = GAUSSIAN_11
SSIM_DATA_RANGE = 1.0
"""The normalised space has unit scale by construction (``value_scale`` is a typical pixel)."""


def charbonnier(x: Tensor, eps: float = CHARBONNIER_EPS) -> Tensor:
    """Charbonnier penalty ``sqrt(x**2 + eps**2) - eps``: smooth L1 that is exactly 0 at 0."""
    return torch.sqrt(x * x + eps * eps) - eps


def masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean ``sum(w * v) / sum(w)``; 0 (with a gradient path) when all weights are 0."""
    total = weights.sum()
    return (values * weights).sum() / total.clamp_min(1e-12)


def _sobel(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel derivatives of ``[B, 1, H, W]``, 'valid' convolution -> two ``[B, 1, H-2, W-2]``."""
    kernel = torch.tensor(
        [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device
    )
    gx = F.conv2d(x, kernel.reshape(1, 1, 3, 3))
    gy = F.conv2d(x, kernel.t().reshape(1, 1, 3, 3))
    return gx, gy


def _all_valid(mask: Tensor, size: int) -> Tensor:
    """1 where every pixel of the ``size x size`` window is valid ('valid' positions only)."""
    return -F.max_pool2d(-mask, kernel_size=size, stride=1)


def _both_valid(mask: Tensor, dim: int) -> Tensor:
    """1 for each pair of neighbours along ``dim`` that are both valid."""
    length = mask.shape[dim] - 1
    return mask.narrow(dim, 1, length) * mask.narrow(dim, 0, length)


def _centre_crop(x: Tensor, height: int, width: int) -> Tensor:
    """The central ``height x width`` window of ``[..., H, W]``."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class HybridLoss(nn.Module):
    """Masked hybrid loss: Charbonnier pixel + SSIM + edge + mass consistency + excess TV.

    Terms (each 0 when ``pred == target`` and growing with the error):

    * ``pixel``: Charbonnier distance in the normalised space, with weight ``high_weight`` on
      pixels whose target exceeds ``high_threshold`` (physical units), to counter the all-zero
      collapse on sparse emission maps.
    * ``ssim``: ``1 - SSIM`` (:func:`carbongeo.models.ssim.ssim_map`, 11-px Gaussian window,
      sigma 1.5, valid edges, data range 1), averaged over the positions centred on valid pixels.
    * ``edge``: Charbonnier distance between the Sobel gradients of prediction and target,
      over positions whose 3x3 stencil is entirely valid.
    * ``consistency``: relative block-sum error in linear units,
      ``|sum_block(pred) - coarse| / (|coarse| + value_scale * s**2)``, averaged over the coarse
      cells whose ``s x s`` pixels are all valid (a block with nodata has no defined total). The
      floor ``value_scale * s**2`` (a typical cell total) keeps near-empty cells from dominating.
      It is ~0 when the model's mass constraint is on.
    * ``tv``: excess total variation of the prediction,
      ``mean(max(|grad pred| - |grad target|, 0))`` over neighbour pairs of valid pixels. Unlike
      plain TV it does not penalise structure that the target has, only added roughness.

    Args:
        scale: Fine pixels per coarse cell side.
        value_scale: Typical fine-pixel emission; the normalised space is
            ``log1p(x / value_scale)``.
        pixel: Weight of the pixel term.
        ssim: Weight of the SSIM term.
        edge: Weight of the edge term.
        consistency: Weight of the consistency term.
        tv: Weight of the excess-TV term.
        high_weight: Pixel-term weight of pixels whose target exceeds ``high_threshold``.
        high_threshold: Physical threshold of "high" pixels; ``None`` weights all pixels equally.
    """

    def __init__(
        self,
        scale: int,
        *,
        value_scale: float = 1.0,
        pixel: float = 1.0,
        ssim: float = 0.2,
        edge: float = 0.1,
        consistency: float = 0.1,
        tv: float = 0.01,
        high_weight: float = 5.0,
        high_threshold: float | None = None,
    ) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        if not value_scale > 0:
            raise ValueError(f"value_scale must be positive, got {value_scale}")
        weights = {"pixel": pixel, "ssim": ssim, "edge": edge, "consistency": consistency, "tv": tv}
        for name, weight in weights.items():
            if weight < 0:
                raise ValueError(f"loss weight {name!r} must be >= 0, got {weight}")
        if high_weight <= 0:
            raise ValueError(f"high_weight must be positive, got {high_weight}")
        self.scale = scale
        self.value_scale = float(value_scale)
        self.weights = weights
        self.high_weight = float(high_weight)
        self.high_threshold = high_threshold

    def forward(
        self, pred: Tensor, target: Tensor, coarse: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            pred: Predicted fine emissions ``[B, 1, H, W]``, physical linear units.
            target: Target fine emissions ``[B, 1, H, W]``, physical units; any value (NaN
                included) where ``mask`` is False.
            coarse: Coarse emissions ``[B, 1, H/s, W/s]``, physical units (totals per cell).
            mask: ``[B, 1, H, W]`` bool, True where the target is valid.

        Returns:
            ``(total, terms)``: the weighted sum, and the unweighted terms (detached) under the
            keys ``pixel``, ``ssim``, ``edge``, ``consistency`` and ``tv``.
        """
        if pred.shape != target.shape or pred.shape != mask.shape or pred.dim() != 4:
            raise ValueError(
                "pred, target and mask must all be [B, 1, H, W]; got "
                f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}"
            )
        batch, channels, height, width = pred.shape
        expected = (batch, channels, height // self.scale, width // self.scale)
        if height % self.scale or width % self.scale or tuple(coarse.shape) != expected:
            raise ValueError(
                f"coarse must be {expected} for a {height}x{width} tile at scale {self.scale}, "
                f"got {tuple(coarse.shape)}"
            )
        with torch.autocast(device_type=pred.device.type, enabled=False):
            terms = self._terms(pred.float(), target.float(), coarse.float(), mask.bool())
        total = torch.stack([self.weights[name] * terms[name] for name in TERMS]).sum()
        return total, {name: value.detach() for name, value in terms.items()}

    def _terms(
        self, pred: Tensor, target: Tensor, coarse: Tensor, mask: Tensor
    ) -> dict[str, Tensor]:
        zero = torch.zeros((), dtype=pred.dtype, device=pred.device)
        pred_lin = torch.where(mask, pred, zero)
        target_lin = torch.where(mask, target, zero)
        valid = mask.to(pred.dtype)
        p = torch.log1p(pred_lin.clamp_min(0.0) / self.value_scale)
        t = torch.log1p(target_lin.clamp_min(0.0) / self.value_scale)

        weights = valid
        if self.high_threshold is not None:
            high = target_lin > self.high_threshold
            weights = valid * torch.where(high, self.high_weight, 1.0)
        pixel = masked_mean(charbonnier(p - t), weights)

        similarity = ssim_map(p, t, data_range=SSIM_DATA_RANGE, window=SSIM_WINDOW)
        centres = _centre_crop(valid, similarity.shape[-2], similarity.shape[-1])
        ssim = 1.0 - masked_mean(similarity, centres)
        # A map without any valid centre has no SSIM; report 0 rather than 1.
        ssim = torch.where(centres.sum() > 0, ssim, zero)

        gx_p, gy_p = _sobel(p)
        gx_t, gy_t = _sobel(t)
        stencil = _all_valid(valid, 3)
        edge = masked_mean(charbonnier(gx_p - gx_t) + charbonnier(gy_p - gy_t), stencil)

        block_valid = block_sum(valid, self.scale) == self.scale * self.scale
        floor = self.value_scale * self.scale * self.scale
        coarse_safe = torch.where(block_valid, coarse, zero)
        error = (block_sum(pred_lin, self.scale) - coarse_safe).abs()
        consistency = masked_mean(error / (coarse_safe.abs() + floor), block_valid.to(pred.dtype))

        tv = zero
        for dim in (-1, -2):
            pairs = _both_valid(valid, dim)
            excess = (p.diff(dim=dim).abs() - t.diff(dim=dim).abs()).clamp_min(0.0)
            tv = tv + masked_mean(excess, pairs)

        return {"pixel": pixel, "ssim": ssim, "edge": edge, "consistency": consistency, "tv": tv}


class CoarseLevelLoss(nn.Module):
    """The hybrid loss one level up, for coarse supervision (no fine truth at all).

    The label is the real coarse product on its cells of ``s x s`` pixels; the network's input is
    that product aggregated by ``k``. The prediction is summed over ``s x s`` blocks and compared
    with the product by :class:`HybridLoss` at the cell level: its "pixels" are the product's
    cells, its coarse field the input's cells (scale ``k``), its normalised space
    ``log1p(x / (value_scale * s**2))`` (a typical cell total) and ``high_threshold`` is in
    tonnes per cell. Every term keeps its meaning there: Charbonnier distance per cell, SSIM and
    Sobel edges on the cell map (SSIM is 0 on tiles of fewer than 11 cells a side), consistency
    against the input cells (about 0 under the mass constraint) and the excess TV of the cell
    map over the product's.

    Args:
        scale: Fine pixels per cell side of the product, ``s``.
        factors: The aggregation factors ``k`` the input may come with.
        value_scale: Typical fine-pixel emission.
        high_threshold: Cell total above which a cell is weighted ``high_weight``; None: none.
        **weights: ``pixel``, ``ssim``, ``edge``, ``consistency``, ``tv`` and ``high_weight``, as
            in :class:`HybridLoss`.
    """

    def __init__(
        self,
        scale: int,
        factors: tuple[int, ...],
        *,
        value_scale: float = 1.0,
        high_threshold: float | None = None,
        **weights: float,
    ) -> None:
        super().__init__()
        if not factors or min(factors) < 1:
            raise ValueError(f"factors must be positive integers, got {factors}")
        self.scale = scale
        self.levels = nn.ModuleDict(
            {
                str(k): HybridLoss(
                    k,
                    value_scale=value_scale * scale * scale,
                    high_threshold=high_threshold,
                    **weights,
                )
                for k in factors
            }
        )

    def forward(
        self, pred: Tensor, product: Tensor, coarse: Tensor, mask: Tensor, factor: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss of a batch whose input was aggregated by ``factor``.

        Args:
            pred: Predicted fine emissions ``[B, 1, H, W]``, physical units.
            product: The real coarse product ``[B, 1, H/s, W/s]`` (any value where ``mask`` is
                False).
            coarse: The network's input of the centre year, ``[B, 1, H/(k s), W/(k s)]``.
            mask: ``[B, 1, H/s, W/s]`` bool, True on the product's valid cells.
            factor: ``k``, one of the factors given at construction.

        Returns:
            ``(total, terms)`` as :meth:`HybridLoss.forward`.
        """
        if str(factor) not in self.levels:
            raise ValueError(f"factor {factor} is not one of {list(self.levels)}")
        cells = block_sum(pred, self.scale)
        return self.levels[str(factor)](cells, product, coarse, mask)
