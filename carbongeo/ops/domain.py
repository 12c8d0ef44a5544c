"""The input domain: the pixels where the model can predict and where mass may be placed."""

from __future__ import annotations

import numpy as np

__all__ = ["aux_domain"]


def aux_domain(aux: np.ndarray, channel_axis: int = 0) -> np.ndarray:
    """Pixels where the model can predict: at least one aux band has data.

    The one nodata rule of the inputs, shared by training (loss mask), mosaic (output nodata)
    and evaluation (baseline domain). A band missing on its own (a cloud in NDVI) is imputed by
    :meth:`carbongeo.training.normalization.Normalization.normalize_aux` (its training mean), so a
    gap in one band does not punch a hole in the emission map or leave a coarse cell's mass
    without pixels to carry it; a pixel with no aux at all (outside every source, or scene
    padding) is nodata.

    Args:
        aux: Aux values with NaN as nodata.
        channel_axis: The band axis.

    Returns:
        Boolean array without the band axis.
    """
    return np.isfinite(aux).any(axis=channel_axis)
