"""The network's starting prior: a log-linear dasymetric allocation fitted on the training split.

DSTCarbonFormer's log-ratio has a per-pixel linear path from the centre year's normalised aux
bands (``aux_prior``, :meth:`~carbongeo.models.network.DSTCarbonFormer.prior_forward`): alone,
under the mass constraint, it shares each cell's mass in proportion to ``exp(w . aux)``, e.g. to
``(1 + population) ** k`` through a log1p band. Trained jointly with the deep layers it hardly
moves: an Adam step moves a weight by about the learning rate, so a run of a few hundred steps at
``lr = 2e-3`` leaves ``w`` far from the ``w ~ 1.6`` that the population band needs on the demo
world. So before the first epoch ``w`` is fitted alone, on the run's own loss and its training
samples only, and the deep layers then learn what the prior misses.

Under coarse supervision this is a disaggregation regression: the product aggregated by each
``k`` of ``train.coarse_factors`` is shared by ``exp(w . aux)`` and the prediction summed back to
the product's cells is scored against the product (:class:`~carbongeo.models.losses.
CoarseLevelLoss`), so no fine truth is read. On the demo world's validation tiles the fitted
prior alone scores a fine MAE of 69.6 t against 82.2 t for the population dasymetric map (which
it contains) and 174 t for uniform allocation.

The fit is deterministic: the samples are the first ones of a permutation seeded by
``train.seed``, the optimisation is full-batch Adam, and it reads no random state that the
training draws from afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from carbongeo.models.losses import CoarseLevelLoss, HybridLoss
from carbongeo.models.network import DSTCarbonFormer
from carbongeo.training.coarse import aggregate

__all__ = ["PRIOR_LR", "PRIOR_SAMPLES", "PRIOR_STEPS", "PriorFit", "fit_prior"]

PRIOR_SAMPLES = 256
"""Most training samples the prior is fitted on (it has one weight per aux band)."""

PRIOR_STEPS = 150
"""Full-batch Adam steps; the loss of the demo world's prior settles within about 100."""

PRIOR_LR = 0.05
"""Adam's step: weights of order 1 are reached in tens of steps."""

_CHUNK = 32
"""Samples per forward pass while the gradient of the full batch is accumulated."""


@dataclass(frozen=True)
class PriorFit:
    """What fitting the prior did.

    Attributes:
        weights: The fitted weight of each aux band (normalised units).
        samples: Training samples it was fitted on.
        loss_before: The run's loss of the prior at ``w = 0`` (uniform shares).
        loss_after: The run's loss of the fitted prior.
        seconds: Time taken.
    """

    weights: tuple[float, ...]
    samples: int
    loss_before: float
    loss_after: float
    seconds: float

    def describe(self, bands: tuple[str, ...]) -> str:
        """One line: the loss change, the samples and the largest weights by band."""
        order = np.argsort(-np.abs(np.asarray(self.weights)))[:4]
        largest = ", ".join(f"{bands[i]} {self.weights[i]:+.2f}" for i in order)
        return (
            f"prior: log-linear allocation fitted on {self.samples} training samples in "
            f"{self.seconds:.1f} s, loss {self.loss_before:.4g} -> {self.loss_after:.4g} "
            f"(largest weights: {largest})"
        )


def fit_prior(
    model: DSTCarbonFormer,
    loss_fn: HybridLoss | CoarseLevelLoss,
    dataset: Dataset[dict[str, Any]],
    *,
    factors: tuple[int, ...],
    seed: int,
    device: torch.device,
    samples: int = PRIOR_SAMPLES,
    steps: int = PRIOR_STEPS,
    lr: float = PRIOR_LR,
) -> PriorFit:
    """Fit ``model.aux_prior`` alone on training samples and write it into the model.

    Args:
        model: The freshly initialised network; only its ``aux_prior`` weight changes.
        loss_fn: The run's loss (:class:`HybridLoss` under fine supervision,
            :class:`CoarseLevelLoss` under coarse supervision).
        dataset: The training dataset (:class:`~carbongeo.training.data.CubeDataset` or
            :class:`~carbongeo.training.data.ProductDataset`), read as at epoch 0 (a flip or
            rotation of a sample changes nothing for a per-pixel model).
        factors: ``train.coarse_factors`` under coarse supervision (the loss sums every ``k``);
            empty under fine supervision.
        seed: Seeds which samples are used.
        device: Where to compute.
        samples: Most samples used.
        steps: Adam steps.
        lr: Adam's learning rate.

    Returns:
        The fitted weights and the loss before and after.
    """
    start = time.perf_counter()
    order = np.random.default_rng(seed).permutation(len(dataset))[:samples]
    batches = [
        _stack([dataset[int(i)] for i in order[j : j + _CHUNK]], device)
        for j in range(0, len(order), _CHUNK)
    ]
    weight = model.aux_prior.weight
    fitted = torch.zeros_like(weight, requires_grad=True)
    optimizer = torch.optim.Adam([fitted], lr=lr)

    def full_loss(backward: bool) -> float:
        total = 0.0
        for batch in batches:
            share = batch["aux"].shape[0] / len(order)
            loss = share * _batch_loss(model, loss_fn, batch, fitted, factors)
            if backward:
                loss.backward()
            total += float(loss.detach())
        return total

    with torch.no_grad():
        before = full_loss(backward=False)
    for _ in range(steps):
        optimizer.zero_grad()
        full_loss(backward=True)
        optimizer.step()
    with torch.no_grad():
        after = full_loss(backward=False)
        if after < before:
            weight.copy_(fitted.detach())
        else:  # nothing to learn (a flat world): keep uniform shares
            weight.zero_()
            after = before
    return PriorFit(
        weights=tuple(float(v) for v in weight.detach().flatten().cpu()),
        samples=len(order),
        loss_before=before,
        loss_after=after,
        seconds=time.perf_counter() - start,
    )


def _stack(items: list[dict[str, Any]], device: torch.device) -> dict[str, Tensor]:
    """The samples as one batch; of the aux bands only the centre year, which the prior reads."""
    keys = [k for k in ("aux", "coarse", "target", "mask", "allowed") if k in items[0]]
    batch = {k: torch.stack([item[k] for item in items]) for k in keys}
    centre = batch["aux"].shape[2] // 2
    batch["aux"] = batch["aux"][:, :, centre : centre + 1].contiguous()
    return {k: v.to(device) for k, v in batch.items()}


def _batch_loss(
    model: DSTCarbonFormer,
    loss_fn: HybridLoss | CoarseLevelLoss,
    batch: dict[str, Tensor],
    weight: Tensor,
    factors: tuple[int, ...],
) -> Tensor:
    """The run's loss of the prior with ``aux_prior`` weights ``weight`` on one batch."""
    aux, coarse, allowed = batch["aux"], batch["coarse"], batch.get("allowed")
    aux = aux.expand(-1, -1, model.temporal, -1, -1)  # a view: only the centre year is read
    target, mask = batch["target"], batch["mask"]
    if isinstance(loss_fn, CoarseLevelLoss):
        total = torch.zeros((), device=aux.device)
        for k in factors:
            inputs = aggregate(coarse, k)
            pred = model.prior_forward(aux, inputs, k, allowed, weight)
            total = total + loss_fn(pred, target, inputs[:, :, inputs.shape[2] // 2], mask, k)[0]
        return total / len(factors)
    pred = model.prior_forward(aux, coarse, 1, allowed, weight)
    return loss_fn(pred, target, coarse[:, :, coarse.shape[2] // 2], mask)[0]
