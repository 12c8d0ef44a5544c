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

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import RandomForestRegressor
from torch import Tensor
from torch.utils.data import Dataset

from carbongeo.models.losses import CoarseLevelLoss, HybridLoss
from carbongeo.models.network import DSTCarbonFormer
from carbongeo.models.trees import TreeEnsemble
from carbongeo.training.coarse import aggregate
from carbongeo.training.data import CubeDataset, model_inputs

__all__ = [
    "FOREST_PIXELS",
    "PRIOR_LR",
    "PRIOR_SAMPLES",
    "PRIOR_STEPS",
    "ForestFit",
    "PriorFit",
    "cache_forest_values",
    "fit_forest_prior",
    "fit_prior",
]

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
    batch = _collate(items)
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


# --------------------------------------------------------------------------- the forest prior
FOREST_PIXELS = 300_000
"""Training pixels the forest prior is fitted on at most, drawn evenly from every sample."""

FOREST_TREES = 50
FOREST_MIN_LEAF = 5
FOREST_MAX_DEPTH = 14
"""Trees, samples per leaf and depth of the forest prior. The depth bounds its size in the
checkpoint and the steps of a prediction (one per level)."""

_FEATURE_BATCH = 16
"""Samples per forward pass while features or forest values are computed."""


@dataclass(frozen=True)
class ForestFit:
    """The fitted forest prior.

    Attributes:
        forest: The trees, ready to load into a model built with ``forest=forest.size``.
        pixels: Training pixels it was fitted on.
        samples: Training samples they were drawn from.
        seconds: Time taken.
    """

    forest: TreeEnsemble
    pixels: int
    samples: int
    seconds: float

    def describe(self) -> str:
        """One line: trees, size, pixels and time."""
        size = self.forest.size
        return (
            f"prior: random forest of {size['trees']} trees (depth <= {size['depth']}, "
            f"{size['nodes']} nodes) fitted on {self.pixels} pixels of {self.samples} training "
            f"samples in {self.seconds:.1f} s"
        )


def fit_forest_prior(
    model_kwargs: Mapping[str, Any],
    dataset: CubeDataset,
    *,
    seed: int,
    device: torch.device,
    pixels: int = FOREST_PIXELS,
    threads: int = -1,
) -> ForestFit:
    """Fit the forest prior on the fine truth of the training samples.

    The features are the network's own (:meth:`~carbongeo.models.network.DSTCarbonFormer.
    forest_features`), computed from the model inputs of each sample, so the forest reads at
    prediction what it learnt from. The label is the fine target of the sample's pixels where it
    and every aux band are known.

    Args:
        model_kwargs: The network's keyword arguments (without ``forest``).
        dataset: The training :class:`~carbongeo.training.data.CubeDataset` (fine truth).
        seed: Seeds the pixel sampling and the forest.
        device: Where the features are computed.
        pixels: Training pixels at most, drawn evenly from every sample.
        threads: Threads of the fit (-1: all cores); the forest does not depend on it.

    Returns:
        The fitted forest.

    Raises:
        ValueError: If the samples hold no pixel with a target.
    """
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # the run's model initialisation stays as it was
        helper = DSTCarbonFormer(**{**model_kwargs, "forest": None}).to(device).eval()
    rng = np.random.default_rng(seed)
    per_sample = max(1, math.ceil(pixels / max(len(dataset), 1)))
    rows, labels = [], []
    for _, items in _plain_batches(dataset):
        aux, coarse = model_inputs(items, device)
        with torch.no_grad():
            features = helper.forest_features(aux, coarse).cpu().numpy()
        targets, masks = items["target"].numpy(), items["mask"].numpy()
        for i in range(features.shape[0]):
            usable = np.flatnonzero(masks[i, 0])
            if usable.size == 0:
                continue
            chosen = np.sort(rng.choice(usable, size=min(per_sample, usable.size), replace=False))
            rows.append(features[i].reshape(features.shape[1], -1)[:, chosen].T)
            labels.append(targets[i, 0].reshape(-1)[chosen])
    if not rows:
        raise ValueError("the training samples hold no pixel with a target to fit a forest on")
    y = np.concatenate(labels)
    return ForestFit(
        forest=_fit_trees(np.concatenate(rows), y, seed, threads),
        pixels=len(y),
        samples=len(dataset),
        seconds=time.perf_counter() - start,
    )


def _fit_trees(x: np.ndarray, y: np.ndarray, seed: int, threads: int) -> TreeEnsemble:
    estimator = RandomForestRegressor(
        n_estimators=FOREST_TREES,
        min_samples_leaf=FOREST_MIN_LEAF,
        max_depth=FOREST_MAX_DEPTH,
        max_features=0.5,
        random_state=seed,
        n_jobs=threads,
    )
    return TreeEnsemble.from_sklearn(estimator.fit(x, y))


def cache_forest_values(model: DSTCarbonFormer, dataset: CubeDataset, device: torch.device) -> None:
    """Compute the model's forest values of every sample once and hand them to ``dataset``
    (:meth:`~carbongeo.training.data.CubeDataset.set_forest_values`), so that validation pays for
    the trees once instead of every epoch."""
    values: list[np.ndarray] = []
    model = model.eval()
    for _, items in _plain_batches(dataset):
        aux, coarse = model_inputs(items, device)
        with torch.no_grad():
            values.extend(model.forest_values(aux, coarse).cpu().numpy()[:, 0])
    dataset.set_forest_values(np.stack(values) if values else None)


def _plain_batches(dataset: CubeDataset) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(first sample index, batch)`` over every sample in order, without augmentation."""
    for first in range(0, len(dataset), _FEATURE_BATCH):
        last = min(first + _FEATURE_BATCH, len(dataset))
        yield first, _collate([dataset.plain_item(i) for i in range(first, last)])


def _collate(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """The samples' model inputs, labels and masks as one batch."""
    keys = [k for k in ("aux", "coarse", "target", "mask", "allowed") if k in items[0]]
    return {k: torch.stack([item[k] for item in items]) for k in keys}
