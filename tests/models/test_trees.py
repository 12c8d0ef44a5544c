from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestRegressor

from carbongeo.models.trees import TreeEnsemble


def fitted_forest(
    depth: int | None = None, seed: int = 0
) -> tuple[RandomForestRegressor, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, 5)).astype(np.float32)
    x[:, 4] = np.round(x[:, 4])  # ties: thresholds fall between repeated values
    y = x[:, 0] ** 2 + np.where(x[:, 4] > 0, 3.0, 0.0) + rng.normal(size=2000) * 0.1
    forest = RandomForestRegressor(8, min_samples_leaf=3, max_depth=depth, random_state=seed)
    return forest.fit(x, y), x


@pytest.mark.parametrize("depth", [None, 1, 6])
def test_the_tensor_forest_predicts_what_scikit_learn_predicts(depth: int | None) -> None:
    forest, x = fitted_forest(depth)
    trees = TreeEnsemble.from_sklearn(forest)
    rng = np.random.default_rng(1)
    # New rows, the training rows and the thresholds themselves (the float32 rounding case).
    thresholds = np.concatenate(
        [e.tree_.threshold[e.tree_.feature >= 0] for e in forest.estimators_]
    )
    edge = np.tile(thresholds.astype(np.float32)[:, None], (1, 5))
    rows = np.concatenate([rng.normal(size=(500, 5)).astype(np.float32), x, edge])
    expected = forest.predict(rows)
    got = trees(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert trees.size["trees"] == 8 and trees.size["features"] == 5


def test_a_forest_survives_a_weights_only_round_trip(tmp_path) -> None:
    forest, x = fitted_forest(4)
    trees = TreeEnsemble.from_sklearn(forest)
    torch.save(trees.state_dict(), tmp_path / "trees.pt")
    loaded = TreeEnsemble(**trees.size)
    loaded.load_state_dict(torch.load(tmp_path / "trees.pt", weights_only=True))
    rows = torch.from_numpy(x[:100])
    assert torch.equal(loaded(rows), trees(rows))


def test_bad_sizes_and_rows_are_rejected() -> None:
    with pytest.raises(ValueError, match="a forest needs"):
        TreeEnsemble(0, 1, 1, 1)
    trees = TreeEnsemble.from_sklearn(fitted_forest(2)[0])
    with pytest.raises(ValueError, match=r"expected rows \[N, 5\]"):
        trees(torch.zeros(3, 4))
