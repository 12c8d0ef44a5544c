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
    mass_carriers,
    mass_on_masked,
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


# --------------------------------------------------------------------------- hard zero classes
def _masked_cells() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three 2 x 2 cells: partly masked, fully masked, unmasked; one nodata pixel in cell 1."""
    coarse = np.array([[12.0, 8.0, 4.0]])
    valid = np.ones((2, 6), dtype=bool)
    valid[1, 0] = False
    allowed = np.ones((2, 6), dtype=bool)
    allowed[0, 0] = False  # cell 0: one water pixel, one nodata pixel, two land pixels
    allowed[:, 2:4] = False  # cell 1: all water
    return coarse, valid, allowed


def test_mass_carriers_fall_back_to_the_valid_pixels_of_a_fully_masked_cell() -> None:
    _, valid, allowed = _masked_cells()
    carriers = mass_carriers(valid, allowed, 2)
    expected = np.ones((2, 6), dtype=bool)
    expected[0, 0] = expected[1, 0] = False
    np.testing.assert_array_equal(carriers, expected)
    np.testing.assert_array_equal(mass_carriers(valid, None, 2), valid)


def test_allocate_puts_nothing_on_masked_pixels_and_keeps_every_cell_total() -> None:
    coarse, valid, allowed = _masked_cells()
    weight = np.arange(12, dtype=float).reshape(2, 6) + 1.0
    out = allocate(coarse, 2, valid, weight, allowed)
    assert out[0, 0] == 0.0 and np.isnan(out[1, 0])
    np.testing.assert_allclose(np.nansum(out.reshape(1, 2, 3, 2), axis=(1, 3)), coarse)
    # The fully masked cell keeps its mass, shared by weight over its (water) pixels.
    np.testing.assert_allclose(out[:, 2:4].sum(), 8.0)
    assert mass_on_masked(coarse, 2, valid, allowed) == 8.0
    assert mass_on_masked(coarse, 2, valid, None) == 0.0


def test_reproject_mass_respects_masks_like_the_tensor_constraint() -> None:
    coarse, valid, allowed = _masked_cells()
    pred = np.random.default_rng(0).uniform(0, 5, (2, 6))
    out = reproject_mass(pred, valid, coarse, 2, allowed)
    assert out[0, 0] == 0.0
    np.testing.assert_allclose(np.nansum(out.reshape(1, 2, 3, 2), axis=(1, 3)), coarse)
    # Where every pixel is valid, the torch constraint gives the same field.
    valid_all = np.ones_like(valid)
    expected = reproject_mass(pred, valid_all, coarse, 2, allowed)
    tensor = mass_conserve(
        torch.from_numpy(pred)[None, None],
        torch.from_numpy(coarse)[None, None],
        2,
        torch.from_numpy(allowed)[None, None],
    )[0, 0].numpy()
    np.testing.assert_allclose(tensor, expected, rtol=1e-12)


def test_mass_conserve_spreads_an_all_zero_block_over_its_allowed_pixels() -> None:
    allowed = torch.tensor([[True, False], [True, True]])[None, None]
    out = mass_conserve(torch.zeros(1, 1, 2, 2), torch.tensor([[[[6.0]]]]), 2, allowed)
    np.testing.assert_allclose(out[0, 0].numpy(), [[2.0, 0.0], [2.0, 2.0]])
