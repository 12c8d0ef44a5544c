"""A fitted regression forest held as tensors, so that it travels inside a model's weights.

scikit-learn fits the forest; :class:`TreeEnsemble` keeps only what prediction needs (children,
split feature, threshold, leaf value) as buffers, so a checkpoint that holds it still loads with
``torch.load(weights_only=True)`` and the forest runs wherever the network runs (CPU or CUDA),
batched over every tree at once.

The prediction is the one scikit-learn makes: it compares float32 features with float64
thresholds; a threshold is stored as the largest float32 not above it, which sends every float32
value the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.ensemble import RandomForestRegressor
from torch import Tensor, nn

__all__ = ["TreeEnsemble"]


class TreeEnsemble(nn.Module):
    """The mean of regression trees over feature rows, evaluated in torch (no gradients).

    The trees are stored concatenated: node ``i`` splits on ``feature[i]`` at ``threshold[i]``
    (``x <= threshold`` goes to ``left[i]``, else ``right[i]``); a leaf points to itself and holds
    its prediction in ``value[i]``. ``roots[t]`` is the first node of tree ``t``.

    Args:
        nodes: Nodes of all trees together.
        trees: Number of trees.
        depth: The deepest leaf's depth (how many steps a prediction takes).
        features: Feature columns the trees read.
    """

    def __init__(self, nodes: int, trees: int, depth: int, features: int) -> None:
        super().__init__()
        if min(nodes, trees, features) < 1 or depth < 0:
            raise ValueError(
                f"a forest needs nodes, trees and features >= 1 and depth >= 0, got "
                f"{nodes}, {trees}, {depth}, {features}"
            )
        self.depth = depth
        self.features = features
        self.register_buffer("left", torch.zeros(nodes, dtype=torch.int64))
        self.register_buffer("right", torch.zeros(nodes, dtype=torch.int64))
        self.register_buffer("feature", torch.zeros(nodes, dtype=torch.int64))
        self.register_buffer("threshold", torch.zeros(nodes, dtype=torch.float32))
        self.register_buffer("value", torch.zeros(nodes, dtype=torch.float32))
        self.register_buffer("roots", torch.zeros(trees, dtype=torch.int64))

    @property
    def size(self) -> dict[str, int]:
        """The constructor arguments of this forest (to rebuild it before loading weights)."""
        return {
            "nodes": int(self.value.numel()),
            "trees": int(self.roots.numel()),
            "depth": self.depth,
            "features": self.features,
        }

    @classmethod
    def from_sklearn(cls, estimator: RandomForestRegressor) -> TreeEnsemble:
        """The trees of a fitted single-output scikit-learn forest (or of any estimator with
        ``estimators_`` of decision trees)."""
        lefts, rights, feats, thresholds, values, roots = [], [], [], [], [], []
        offset, depth = 0, 0
        for tree in (e.tree_ for e in estimator.estimators_):
            n = tree.node_count
            leaf = tree.children_left < 0
            index = np.arange(n)
            lefts.append(np.where(leaf, index, tree.children_left) + offset)
            rights.append(np.where(leaf, index, tree.children_right) + offset)
            feats.append(np.where(leaf, 0, tree.feature))
            thresholds.append(_float32_below(np.where(leaf, 0.0, tree.threshold)))
            values.append(tree.value.reshape(n, -1)[:, 0].astype(np.float32))
            roots.append(offset)
            offset += n
            depth = max(depth, int(tree.max_depth))
        forest = cls(offset, len(roots), depth, int(estimator.n_features_in_))
        arrays = (lefts, rights, feats, thresholds, values)
        names = ("left", "right", "feature", "threshold", "value")
        with torch.no_grad():
            for name, parts in zip(names, arrays, strict=True):
                buffer = getattr(forest, name)
                buffer.copy_(torch.from_numpy(np.concatenate(parts)).to(buffer.dtype))
            forest.roots.copy_(torch.tensor(roots, dtype=torch.int64))
        return forest

    @torch.no_grad()
    def forward(self, rows: Tensor) -> Tensor:
        """The forest's prediction ``[N]`` of feature rows ``[N, F]`` (float32)."""
        if rows.dim() != 2 or rows.shape[1] != self.features:
            raise ValueError(f"expected rows [N, {self.features}], got {tuple(rows.shape)}")
        columns = rows.float().t().contiguous()  # [F, N]
        node = self.roots[:, None].expand(-1, rows.shape[0]).contiguous()  # [trees, N]
        for _ in range(self.depth):
            values = torch.gather(columns, 0, self.feature[node])
            node = torch.where(values <= self.threshold[node], self.left[node], self.right[node])
        return self.value[node].mean(dim=0)


def _float32_below(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 at or below each float64 threshold: ``x <= t`` iff ``x <= t32`` for
    every float32 ``x``."""
    rounded = threshold.astype(np.float32)
    above = rounded.astype(np.float64) > threshold
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded
