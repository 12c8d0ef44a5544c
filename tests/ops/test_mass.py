"""Tests of carbongeo.ops.mass: allocation, re-projection and mass errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carbongeo.models.constraints import mass_conserve
from carbongeo.ops.mass import (
    allocate,
    block_mass_errors,
    mass_balance,
    reproject_mass,
    unplaced_mass,
)


# --------------------------------------------------------------------------- allocation
def test_allocate_shares_each_cell_in_proportion_to_the_weight() -> None:
    coarse = np.array([[12.0, 8.0]])
    valid = np.ones((2, 4), dtype=bool)
    valid[1, 3] = False
    weight = np.array([[1.0, 2.0, 0.0, 0.0], [3.0, -5.0, 0.0, np.nan]])
    out = allocate(coarse, 2, valid, weight)
    np.testing.assert_allclose(out[:, :2], [[2.0, 4.0], [6.0, 0.0]])  # the negative weight is 0
    # No positive weight in cell 2: its valid pixels share it equally; the invalid one is NaN.
    np.testing.assert_allclose(out[0, 2:], [8.0 / 3, 8.0 / 3])
    assert out[1, 2] == pytest.approx(8.0 / 3) and np.isnan(out[1, 3])


def test_allocate_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="scale"):
        allocate(np.ones((2, 2)), 4, np.ones((7, 8), dtype=bool), np.ones((7, 8)))
    with pytest.raises(ValueError, match="weight"):
        allocate(np.ones((2, 2)), 4, np.ones((8, 8), dtype=bool), np.ones((8, 7)))


# --------------------------------------------------------------------------- re-projection
def test_reproject_mass_keeps_nodata_massless_and_spreads_starving_cells() -> None:
    pred = np.array([[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    valid = np.array([[True, True, True, False], [False, True, False, False]])
    coarse = np.array([[10.0, 6.0]], dtype=np.float32)
    out = reproject_mass(pred, valid, coarse, 2)
    assert np.isnan(out[~valid]).all()
    # Cell 1 has weight only at (0, 0); cell 2 has no weight, so its only valid pixel takes it all.
    np.testing.assert_allclose(out[valid], [10.0, 0.0, 6.0, 0.0])
    balance = mass_balance(out, coarse, 2)
    assert balance.worst_rel_error < 1e-12 and balance.coarse_mass == 16.0
    assert balance.unplaced_mass == 0.0 and balance.valid_pixels == 4


def test_reproject_mass_matches_the_model_constraint_where_all_pixels_are_valid() -> None:
    rng = np.random.default_rng(3)
    pred = rng.gamma(0.5, 2.0, (32, 48))
    pred[:8, :8] = 0.0  # a cell without weight is spread uniformly
    pred[8:16, 8:16] = -1.0
    coarse = rng.uniform(0.0, 50.0, (4, 6))
    coarse[0, 2] = 0.0
    ours = reproject_mass(pred, np.ones(pred.shape, bool), coarse, 8)
    theirs = mass_conserve(torch.from_numpy(pred), torch.from_numpy(coarse), 8).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- mass errors
def test_block_mass_errors_skip_empty_and_zero_cells() -> None:
    pred = np.full((4, 4), np.nan)
    pred[:2, :2] = 1.0
    coarse = np.array([[5.0, 3.0], [0.0, 1.0]])
    np.testing.assert_allclose(block_mass_errors(pred, coarse, 2), [0.2])


def test_block_mass_errors_count_nodata_pixels_as_zero() -> None:
    pred = np.array([[1.0, np.nan], [2.0, 3.0]])
    np.testing.assert_allclose(block_mass_errors(pred, np.array([[12.0]]), 2), [0.5])


def test_unplaced_mass_is_the_positive_mass_of_cells_without_valid_pixels() -> None:
    coarse = np.array([[4.0, 3.0, -2.0, np.nan]])
    valid = np.zeros((2, 8), dtype=bool)
    valid[:, :2] = True  # only the first cell has valid pixels
    assert unplaced_mass(coarse, 2, valid) == 3.0  # negative and nodata cells carry no mass
    assert unplaced_mass(coarse, 2, np.ones_like(valid)) == 0.0


def test_mass_balance_reports_mass_without_valid_pixels() -> None:
    out = np.full((2, 4), np.nan)
    out[:, :2] = 1.0
    balance = mass_balance(out, np.array([[4.0, 3.0]]), 2)
    assert balance.worst_rel_error == 0.0 and balance.coarse_mass == 7.0
    assert balance.unplaced_mass == 3.0 and balance.valid_pixels == 4
    off = mass_balance(out * 1.5, np.array([[4.0, 3.0]]), 2)
    assert off.worst_rel_error == pytest.approx(0.5)
