"""Tests of carbongeo.evaluation.forest: learned dasymetric allocation and the supervised forest."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from carbongeo.evaluation.forest import (
    LEARNED_DASYMETRIC,
    SUPERVISED_FOREST,
    FeatureSpec,
    ForestSample,
    cell_means,
    fit_forest,
)
from carbongeo.ops.blocks import block_sum

S, SIZE = 4, 32
BANDS = ("ntl", "builtup", "water")


def _sample(seed: int, *, with_truth: bool = True) -> ForestSample:
    """A tile whose emissions follow built-up share, zero on water (band 2 == 1)."""
    rng = np.random.default_rng(seed)
    builtup = rng.uniform(0, 1, (SIZE, SIZE)) ** 3
    water = np.zeros((SIZE, SIZE))
    water[:, :5] = 1.0
    ntl = np.log1p(50 * builtup + rng.uniform(0, 1, builtup.shape))
    truth = np.where(water == 1, 0.0, 100 * builtup + rng.uniform(0, 0.1, builtup.shape))
    valid = np.ones((SIZE, SIZE), dtype=bool)
    valid[-2:, -3:] = False
    truth[~valid] = np.nan
    return ForestSample(
        aux=np.stack([ntl, builtup, water]),
        coarse=block_sum(np.where(valid, truth, 0.0), S),
        valid=valid,
        allowed=water != 1,
        truth=truth if with_truth else None,
    )


SPEC = FeatureSpec.from_values(BANDS, ["water"], [_sample(0).aux])
TRAIN = [_sample(k) for k in range(6)]


def test_feature_spec_one_hot_encodes_small_categorical_bands() -> None:
    assert SPEC.classes == {"water": (0.0, 1.0)}
    assert SPEC.names == ["ntl", "builtup", "water=0", "water=1"]
    features = SPEC.pixel_features(np.array([[[0.5, 0.2]], [[1.0, 0.0]], [[1.0, np.nan]]]))
    np.testing.assert_array_equal(features[2:, 0], [[0.0, np.nan], [1.0, np.nan]])


def test_cell_means_average_only_the_carrying_pixels() -> None:
    features = np.arange(16, dtype=float).reshape(1, 4, 4)
    carriers = np.ones((4, 4), dtype=bool)
    carriers[0, 0] = False
    means = cell_means(features, carriers, 2)
    assert means[0, 0, 0] == pytest.approx((1 + 4 + 5) / 3)


@pytest.mark.parametrize("method", [LEARNED_DASYMETRIC, SUPERVISED_FOREST])
def test_forest_allocation_is_exact_per_cell_and_respects_zero_classes(method: str) -> None:
    forest = fit_forest(method, SPEC, TRAIN, S, per_sample=300, seed=0, threads=1)
    assert forest is not None
    test = _sample(99)
    out = forest.allocate(test)
    assert np.all(np.isnan(out[~test.valid]))
    assert np.all(out[test.valid & ~test.allowed] == 0.0)
    np.testing.assert_allclose(block_sum(np.nan_to_num(out), S), test.coarse, rtol=1e-12)
    # It beats spreading each cell evenly (the weights carry information).
    carriers = np.where(test.valid & test.allowed, 1.0, 0.0)
    counts = np.maximum(np.repeat(np.repeat(block_sum(carriers, S), S, 0), S, 1), 1.0)
    spread = carriers * np.repeat(np.repeat(test.coarse, S, 0), S, 1) / counts
    truth = np.nan_to_num(test.truth)
    assert np.abs(np.nan_to_num(out) - truth).mean() < np.abs(spread - truth).mean()
    importances = forest.importances()
    assert set(importances) <= {*BANDS, "cell log1p density"}
    assert sum(importances.values()) == pytest.approx(1.0)


def test_learned_dasymetric_reads_no_fine_truth() -> None:
    with_truth = fit_forest(LEARNED_DASYMETRIC, SPEC, TRAIN, S, seed=0, threads=1)
    blind = [
        ForestSample(aux=t.aux, coarse=t.coarse, valid=t.valid, allowed=t.allowed) for t in TRAIN
    ]
    without = fit_forest(LEARNED_DASYMETRIC, SPEC, blind, S, seed=0, threads=1)
    assert with_truth is not None and without is not None
    test = _sample(7, with_truth=False)
    np.testing.assert_array_equal(with_truth.weights(test), without.weights(test))
    # The supervised forest needs truth: without any there is nothing to fit.
    assert fit_forest(SUPERVISED_FOREST, SPEC, blind, S, seed=0) is None


@pytest.mark.parametrize("method", [LEARNED_DASYMETRIC, SUPERVISED_FOREST])
def test_a_seed_gives_the_same_forest_on_any_number_of_threads(method: str) -> None:
    first = fit_forest(method, SPEC, TRAIN, S, per_sample=200, seed=3, threads=1)
    again = fit_forest(method, SPEC, TRAIN, S, per_sample=200, seed=3, threads=2)
    other = fit_forest(method, SPEC, TRAIN, S, per_sample=200, seed=4, threads=1)
    assert first is not None and again is not None and other is not None
    test = _sample(42)
    np.testing.assert_array_equal(first.weights(test), again.weights(test))
    assert not np.array_equal(first.weights(test), other.weights(test))
    # A fitted forest travels to another process (dask tasks) unchanged.
    copy = pickle.loads(pickle.dumps(first))
    np.testing.assert_array_equal(copy.weights(test), first.weights(test))


def test_fit_forest_refuses_unknown_methods_and_returns_none_without_data() -> None:
    with pytest.raises(ValueError, match="unknown forest method"):
        fit_forest("boosting", SPEC, TRAIN, S)
    empty = ForestSample(
        aux=TRAIN[0].aux, coarse=np.zeros_like(TRAIN[0].coarse), valid=TRAIN[0].valid
    )
    assert fit_forest(LEARNED_DASYMETRIC, SPEC, [empty], S) is None
