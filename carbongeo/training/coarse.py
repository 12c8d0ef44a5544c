"""Coarse supervision: learning to downscale from the coarse product alone.

Without a fine truth the task is moved one level up. The real product (cells of ``s x s`` fine
pixels) is the label; the network's input is that product aggregated by a factor ``k`` of
``train.coarse_factors`` (cells of ``k s`` pixels, block sums in linear units). The network
predicts the fine map with mass conserved on the ``k s`` cells
(:meth:`carbongeo.models.network.DSTCarbonFormer.forward` with ``factor = k``), and the loss
(:class:`carbongeo.models.losses.CoarseLevelLoss`) compares the prediction summed to the ``s x s``
cells with the product. At mosaic time the input is the real product (``k = 1``) and mass is
conserved on its cells: the same network, one level down.

Each training batch uses one factor, drawn from ``(train.seed, epoch, step)`` so that a resumed
run and every process of a distributed one draw the same. Validation scores every factor on every
validation sample and pools them: the coarse-level metrics of :class:`PooledMetrics` on the cell
map (the prediction's ``s x s`` sums against the product), whose MAE drives early stopping.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from carbongeo.evaluation.metrics import PooledMetrics
from carbongeo.models.losses import CoarseLevelLoss
from carbongeo.ops.blocks import block_sum
from carbongeo.training.data import model_allowed, model_inputs
from carbongeo.training.distributed import DistContext, all_reduce
from carbongeo.training.interrupt import DeferredInterrupt, InterruptGuard
from carbongeo.training.normalization import Normalization

__all__ = ["aggregate", "coarse_loss", "step_factor", "validate_coarse"]


def step_factor(factors: tuple[int, ...], seed: int, epoch: int, step: int) -> int:
    """The aggregation factor of one training step, a pure function of its position."""
    rng = np.random.default_rng([seed, epoch, step])
    return int(factors[int(rng.integers(len(factors)))])


def aggregate(product: Tensor, factor: int) -> Tensor:
    """The product ``[..., h, w]`` aggregated by ``factor`` (block sums; nodata already 0)."""
    return block_sum(product, factor)


def coarse_loss(
    model: nn.Module,
    loss_fn: CoarseLevelLoss,
    batch: dict[str, Any],
    device: torch.device,
    factor: int,
    autocast: Callable[[], AbstractContextManager[Any]],
) -> tuple[Tensor, dict[str, Tensor]]:
    """The coarse-level loss of one batch whose input is the product aggregated by ``factor``.

    Args:
        model: The network (possibly compiled or wrapped for DDP).
        loss_fn: The coarse-level loss.
        batch: A batch of :class:`~carbongeo.training.data.ProductDataset`.
        device: Where to run.
        factor: ``k``.
        autocast: Makes the mixed-precision context of the run.

    Returns:
        ``(total, terms)`` of :meth:`CoarseLevelLoss.forward`.
    """
    aux, product = model_inputs(batch, device)
    target = batch["target"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    coarse = aggregate(product, factor)
    with autocast():
        pred = model(aux, coarse, factor, allowed=model_allowed(batch, device))
    centre = coarse[:, :, coarse.shape[2] // 2]
    return loss_fn(pred.float(), target, centre, mask, factor)


@torch.no_grad()
def validate_coarse(
    model: nn.Module,
    loader: DataLoader[dict[str, Any]],
    device: torch.device,
    norm: Normalization,
    scale: int,
    factors: tuple[int, ...],
    *,
    autocast: Callable[[], AbstractContextManager[Any]],
    ctx: DistContext | None = None,
    interrupt: InterruptGuard | None = None,
) -> dict[str, float]:
    """Coarse-level metrics of ``model``, pooled over ``loader`` and every factor.

    The prediction from the product aggregated by ``k`` is summed to the product's ``s x s``
    cells and scored against the product on its valid cells; ``mass_err_pooled`` is the error
    of the ``k x k`` cell sums against the input, ``mae_above_threshold`` covers the cells at or
    above ``norm.hotspot_threshold`` (per cell). Under a distributed run the sums are
    all-reduced.

    Returns:
        The metrics of :meth:`carbongeo.evaluation.metrics.PooledMetrics.compute`.
    """
    ctx = ctx or DistContext()
    model.eval()
    meters = {k: PooledMetrics(k, norm.hotspot_threshold, norm.hotspot_threshold) for k in factors}
    for batch in loader:
        aux, product = model_inputs(batch, device)
        target = batch["target"].to(device)
        mask = batch["mask"].to(device)
        for k in factors:
            coarse = aggregate(product, k)
            with autocast():
                pred = model(aux, coarse, k, allowed=model_allowed(batch, device))
            cells = block_sum(pred.float(), scale)
            meters[k].update(cells, target, mask, coarse[:, :, coarse.shape[2] // 2])
        if interrupt is not None and interrupt.requested and not ctx.distributed:
            raise DeferredInterrupt
    pooled = PooledMetrics(1, norm.hotspot_threshold, norm.hotspot_threshold)
    sums = torch.stack([m.sums for m in meters.values()]).sum(dim=0)
    pooled.merge(all_reduce(sums.to(device), ctx))
    return pooled.compute()
