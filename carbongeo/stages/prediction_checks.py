"""Checks of the mosaic's raw predictions: non-finite values are errors, never hidden.

The mosaic re-projects every coarse cell onto its coarse total and, like the network's mass
constraint, would share a cell uniformly where the prediction's weights are unusable. A NaN or
inf from the model is therefore refused here, before any output is published.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from carbongeo.errors import DivergenceError
from carbongeo.grid import Window

_FIX = (
    "the checkpoint's weights are damaged or the training diverged; retrain with: carbongeo "
    "train (or pass another checkpoint)"
)


def check_finite_predictions(
    preds: np.ndarray, valid: np.ndarray, windows: Sequence[Window]
) -> None:
    """Refuse a batch whose predictions are NaN or inf on a valid pixel.

    Args:
        preds: Predictions ``[B, h, w]``.
        valid: bool ``[B, h, w]``, the pixels that carry mass.
        windows: The windows of the batch (for the message).

    Raises:
        DivergenceError: Naming the first window with a non-finite valid pixel.
    """
    bad = valid & ~np.isfinite(preds)
    if not bad.any():
        return
    first = int(np.argmax(bad.reshape(len(windows), -1).any(axis=1)))
    window = windows[first]
    raise DivergenceError(
        f"the model predicted NaN or inf on {int(bad.sum())} valid pixel(s) (first in the window "
        f"at row {window.row}, column {window.col}); {_FIX}"
    )


def non_finite_raw_prediction(module: str) -> DivergenceError:
    """The network's raw log-ratio (from its ``module``) held NaN or inf."""
    return DivergenceError(
        f"the model's raw prediction ({module} output) is NaN or inf, which the mass constraint "
        f"would have turned into a uniform split; {_FIX}"
    )
