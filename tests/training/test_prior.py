"""The fitted log-linear prior: it recovers a known allocation, from fine or coarse labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from carbongeo.models.losses import CoarseLevelLoss, HybridLoss
from carbongeo.models.network import DSTCarbonFormer
from carbongeo.ops.blocks import block_sum
from carbongeo.training.prior import fit_prior

SCALE, SIZE, BANDS = 4, 16, 3
TRUE_WEIGHTS = (1.5, -0.8, 0.0)


def _world(n: int, coarse_labels: bool, flat: bool = False) -> list[dict[str, Any]]:
    """Samples whose fine truth is ``exp(TRUE_WEIGHTS . aux)`` up to a level per sample."""
    rng = np.random.default_rng(0)
    items = []
    for _ in range(n):
        # Varying from cell to cell too, so that the product's cells carry the signal.
        per_cell = rng.normal(size=(BANDS, 3, SIZE // SCALE, SIZE // SCALE))
        aux = np.kron(per_cell, np.ones((SCALE, SCALE))) + 0.5 * rng.normal(
            size=(BANDS, 3, SIZE, SIZE)
        )
        aux = aux.astype(np.float32)
        if flat:
            aux[:] = 0.0
        level = rng.gamma(2.0, 5.0)
        truth = (level * np.exp(np.tensordot(TRUE_WEIGHTS, aux, axes=1)))[None].astype(np.float32)
        coarse = torch.from_numpy(block_sum(truth, SCALE).astype(np.float32))
        if coarse_labels:  # ProductDataset: the product is both the input and the label
            target = coarse[:, 1]
            mask = torch.ones((1, SIZE // SCALE, SIZE // SCALE), dtype=torch.bool)
        else:
            target = torch.from_numpy(truth[:, 1])
            mask = torch.ones((1, SIZE, SIZE), dtype=torch.bool)
        items.append(
            {"aux": torch.from_numpy(aux), "coarse": coarse, "target": target, "mask": mask}
        )
    return items


def _model() -> DSTCarbonFormer:
    torch.manual_seed(0)
    return DSTCarbonFormer(BANDS, SCALE, dim=8, depth=1, value_scale=10.0)


def test_fit_on_the_fine_truth_recovers_the_allocation() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = HybridLoss(SCALE, value_scale=10.0)
    fit = fit_prior(
        model, loss, _world(24, False), factors=(), seed=0, device=torch.device("cpu"), steps=80
    )
    assert fit.samples == 24 and fit.loss_after < 0.2 * fit.loss_before
    np.testing.assert_allclose(fit.weights, TRUE_WEIGHTS, atol=0.25)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == ["aux_prior.weight"]
    assert fit.describe(("a", "b", "c")).startswith("prior: log-linear allocation fitted on 24")


def test_fit_on_the_coarse_product_alone_recovers_it_too() -> None:
    model = _model()
    loss = CoarseLevelLoss(SCALE, (2,), value_scale=10.0)
    fit = fit_prior(
        model, loss, _world(24, True), factors=(2,), seed=0, device=torch.device("cpu"), steps=80
    )
    assert fit.loss_after < 0.2 * fit.loss_before
    np.testing.assert_allclose(fit.weights, TRUE_WEIGHTS, atol=0.25)


def test_fit_is_deterministic_and_keeps_uniform_shares_when_nothing_helps() -> None:
    world = _world(8, False)
    fits = [
        fit_prior(
            _model(),
            HybridLoss(SCALE, value_scale=10.0),
            world,
            factors=(),
            seed=3,
            device=torch.device("cpu"),
            samples=6,
            steps=20,
        )
        for _ in range(2)
    ]
    assert fits[0].weights == fits[1].weights and fits[0].samples == 6
    flat = _model()
    fit = fit_prior(
        flat,
        HybridLoss(SCALE, value_scale=10.0),
        _world(4, False, flat=True),
        factors=(),
        seed=0,
        device=torch.device("cpu"),
        steps=5,
    )
    assert fit.weights == (0.0, 0.0, 0.0) and fit.loss_after == pytest.approx(fit.loss_before)
    assert torch.count_nonzero(flat.aux_prior.weight) == 0
