"""The fitted log-linear prior: it recovers a known allocation, from fine or coarse labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _cubes import SCALE as CUBE_SCALE
from _cubes import YEARS, write_cubes

from carbongeo.models.losses import CoarseLevelLoss, HybridLoss
from carbongeo.models.network import DSTCarbonFormer
from carbongeo.ops.blocks import block_sum
from carbongeo.training.data import CubeDataset
from carbongeo.training.normalization import compute_normalization
from carbongeo.training.prior import cache_forest_values, fit_forest_prior, fit_prior

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


def test_the_forest_prior_learns_from_the_fine_truth_and_is_deterministic(
    tmp_path: Path,
) -> None:
    ids = write_cubes(tmp_path, n_tiles=4)
    norm = compute_normalization(tmp_path, ids, YEARS, high_quantile=0.9)
    dataset = CubeDataset(tmp_path, ids, list(YEARS), norm, augment=True)
    kwargs = {"aux_channels": len(norm.aux_mean), "scale": CUBE_SCALE, "dim": 8, "depth": 1}
    cpu = torch.device("cpu")
    fit = fit_forest_prior(kwargs, dataset, seed=0, device=cpu, pixels=2000, threads=1)
    again = fit_forest_prior(kwargs, dataset, seed=0, device=cpu, pixels=2000, threads=2)
    assert fit.samples == len(dataset) and 0 < fit.pixels <= 2000 + len(dataset)
    pairs = zip(fit.forest.buffers(), again.forest.buffers(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert "random forest of" in fit.describe()
    model = DSTCarbonFormer(**kwargs, forest=fit.forest.size, value_scale=norm.value_scale)
    model.forest.load_state_dict(fit.forest.state_dict())
    plain_set = CubeDataset(tmp_path, ids, list(YEARS), norm)
    cache_forest_values(model, plain_set, cpu)
    item = plain_set[0]
    with torch.no_grad():
        direct = model.forest_values(item["aux"][None], item["coarse"][None])
    assert torch.equal(item["forest"], direct[0])
    # The forest's map beats uniform allocation on the pixels it learnt from.
    plain = [dataset.plain_item(i) for i in range(len(dataset))]
    errors = {"forest": 0.0, "uniform": 0.0}
    with torch.no_grad():
        for it in plain:
            aux, coarse, target, mask = (
                it["aux"][None],
                it["coarse"][None],
                it["target"],
                it["mask"],
            )
            forest = model(aux, coarse)[0]
            uniform = DSTCarbonFormer(**kwargs, value_scale=norm.value_scale).prior_forward(
                aux, coarse, weight=torch.zeros(1, kwargs["aux_channels"], 1, 1)
            )[0]
            errors["forest"] += float((forest - target).abs()[mask].sum())
            errors["uniform"] += float((uniform - target).abs()[mask].sum())
    assert errors["forest"] < errors["uniform"]
