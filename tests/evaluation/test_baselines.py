"""Mass-conserving baselines: uniform, bicubic and dasymetric allocation."""

from __future__ import annotations

import numpy as np
import pytest

from carbongeo.evaluation.baselines import (
    BASELINES,
    bicubic,
    bicubic_density,
    dasymetric,
    run_baselines,
    uniform,
)
from carbongeo.ops.blocks import block_sum

S = 4


def scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 6 x 5 coarse field with a zero cell, a NaN cell and a block without valid pixels."""
    rng = np.random.default_rng(seed)
    coarse = rng.gamma(0.8, 500.0, (6, 5))
    coarse[1, 1] = 0.0
    coarse[2, 3] = np.nan
    valid = rng.random((6 * S, 5 * S)) > 0.2
    valid[4 * S : 5 * S, 0:S] = False  # block (4, 0): nowhere to put its mass
    proxy = rng.gamma(0.5, 3.0, valid.shape)
    proxy[0:S, 0:S] = 0.0  # block (0, 0): proxy sums to 0
    return coarse, valid, proxy


def methods(proxy: np.ndarray) -> dict:
    return {
        "uniform": uniform,
        "bicubic": bicubic,
        "dasymetric": lambda c, s, v: dasymetric(c, s, v, proxy),
    }


@pytest.mark.parametrize("name", ["uniform", "bicubic", "dasymetric"])
def test_every_block_sums_to_its_coarse_value(name: str) -> None:
    coarse, valid, proxy = scene()
    out = methods(proxy)[name](coarse, S, valid)
    sums = block_sum(out, S, nodata_as_zero=True)
    placeable = np.isfinite(coarse) & (block_sum(valid, S) > 0)
    positive = placeable & (coarse > 0)
    rel = np.abs(sums[positive] - coarse[positive]) / coarse[positive]
    assert rel.max() < 1e-9
    assert sums[1, 1] == 0.0  # zero coarse -> zeros
    assert np.all(out[1 * S : 2 * S, 1 * S : 2 * S][valid[S : 2 * S, S : 2 * S]] == 0.0)
    assert np.isnan(out[~valid]).all()  # invalid pixels get no mass
    assert np.isnan(out[2 * S : 3 * S, 3 * S : 4 * S]).all()  # NaN coarse -> NaN
    assert np.all(out[np.isfinite(out)] >= 0)


def test_zero_coarse_gives_zeros() -> None:
    valid = np.ones((8, 8), dtype=bool)
    for out in run_baselines(np.zeros((2, 2)), S, valid, {"p": np.ones((8, 8))}).values():
        assert np.all(out == 0.0)


def test_all_zero_proxy_falls_back_to_uniform() -> None:
    coarse, valid, _ = scene(1)
    zero = np.zeros(valid.shape)
    np.testing.assert_array_equal(dasymetric(coarse, S, valid, zero), uniform(coarse, S, valid))
    # Block (0, 0) of the scene's proxy is all zero: it is uniform, the others are not.
    coarse, valid, proxy = scene()
    out = dasymetric(coarse, S, valid, proxy)
    block = out[:S, :S][valid[:S, :S]]
    np.testing.assert_allclose(block, coarse[0, 0] / valid[:S, :S].sum(), rtol=1e-12)


def test_negative_and_nan_proxy_values_count_as_zero() -> None:
    valid = np.ones((S, S), dtype=bool)
    proxy = np.zeros((S, S))
    proxy[0, 0], proxy[1, 1], proxy[2, 2] = 3.0, -5.0, np.nan
    out = dasymetric(np.array([[12.0]]), S, valid, proxy)
    assert out[0, 0] == 12.0
    assert out.sum() == 12.0


def test_uniform_spreads_over_valid_pixels_only() -> None:
    valid = np.zeros((S, S), dtype=bool)
    valid[0, :2] = True
    out = uniform(np.array([[10.0]]), S, valid)
    np.testing.assert_array_equal(out[0, :2], [5.0, 5.0])
    assert np.isnan(out[~valid]).all()


def test_bicubic_of_a_constant_field_is_constant() -> None:
    coarse = np.full((3, 5), 32.0)
    valid = np.ones((3 * S, 5 * S), dtype=bool)
    np.testing.assert_allclose(bicubic_density(coarse, S), 2.0, rtol=1e-12)
    np.testing.assert_allclose(bicubic(coarse, S, valid), 2.0, rtol=1e-12)


def test_bicubic_puts_coarse_cell_centres_on_block_centres() -> None:
    coarse = np.zeros((5, 5))
    coarse[2, 2] = 100.0
    density = bicubic_density(coarse, S)
    # A centred impulse stays symmetric about the centre of its block (pixel 2*S + S/2 - 0.5).
    np.testing.assert_allclose(density, density[::-1, :], atol=1e-12)
    np.testing.assert_allclose(density, density[:, ::-1], atol=1e-12)
    peak = np.unravel_index(np.argmax(density), density.shape)
    assert 2 * S <= peak[0] < 3 * S and 2 * S <= peak[1] < 3 * S


def test_bicubic_is_smoother_than_uniform_across_block_edges() -> None:
    coarse = np.outer(np.arange(1.0, 5.0), np.ones(4)) * 16.0
    valid = np.ones((4 * S, 4 * S), dtype=bool)
    jumps_uniform = np.abs(np.diff(uniform(coarse, S, valid), axis=0)).max()
    jumps_bicubic = np.abs(np.diff(bicubic(coarse, S, valid), axis=0)).max()
    assert jumps_bicubic < jumps_uniform


def test_dasymetric_with_the_truth_as_proxy_reproduces_the_truth() -> None:
    rng = np.random.default_rng(3)
    truth = rng.gamma(0.6, 10.0, (3 * S, 4 * S))
    truth[:S, :S] = 0.0
    coarse = block_sum(truth, S)
    valid = np.ones(truth.shape, dtype=bool)
    np.testing.assert_allclose(dasymetric(coarse, S, valid, truth), truth, rtol=1e-12, atol=0)


def test_run_baselines_names_every_method() -> None:
    coarse, valid, proxy = scene()
    out = run_baselines(coarse, S, valid, {"ntl": proxy, "population": proxy * 2})
    assert set(out) == {*BASELINES, "dasymetric:ntl", "dasymetric:population"}
    assert all(v.shape == valid.shape and v.dtype == np.float64 for v in out.values())


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="scale"):
        uniform(np.ones((2, 2)), S, np.ones((7, 8), dtype=bool))


def test_every_baseline_leaves_zero_class_pixels_empty_and_keeps_cell_totals() -> None:
    rng = np.random.default_rng(5)
    coarse = rng.uniform(1, 10, (2, 2))
    valid = np.ones((8, 8), dtype=bool)
    allowed = np.ones((8, 8), dtype=bool)
    allowed[:, :3] = False  # cells on the left keep one land column
    allowed[4:, 4:] = False  # the bottom-right cell is all water
    proxy = rng.uniform(0, 1, (8, 8))
    for name, out in run_baselines(coarse, S, valid, {"p": proxy}, allowed).items():
        assert np.all(out[:, :3] == 0.0), name  # cells with a land column keep water empty
        assert out[4:, 4:].sum() == pytest.approx(coarse[1, 1]), name  # all water: kept there
        sums = out.reshape(2, S, 2, S).sum(axis=(1, 3))
        np.testing.assert_allclose(sums, coarse, rtol=1e-12, err_msg=name)
