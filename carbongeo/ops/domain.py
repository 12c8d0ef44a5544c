"""The input domain: the pixels where the model can predict and where mass may be placed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["allowed_pixels", "aux_domain"]


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


def allowed_pixels(
    aux: np.ndarray,
    bands: Sequence[str],
    zero_classes: Mapping[str, Sequence[float]],
    channel_axis: int = 0,
) -> np.ndarray | None:
    """Pixels that may carry emissions: none of their categorical bands is a zero class.

    The hard zero-emission rule (water, ice, ...): every method leaves a pixel whose band
    ``name`` holds one of ``zero_classes[name]`` at 0. Which pixels of a coarse cell then carry
    its mass is :func:`carbongeo.ops.mass.mass_carriers`.

    Args:
        aux: Aux values in raw units (categorical bands are never transformed).
        bands: Band names along ``channel_axis``.
        zero_classes: Class values per band name; bands not in ``bands`` are ignored.
        channel_axis: The band axis.

    Returns:
        Boolean array without the band axis, or None when no band declares zero classes.
    """
    masks = [
        np.isin(np.take(aux, bands.index(name), axis=channel_axis), np.asarray(classes))
        for name, classes in zero_classes.items()
        if classes and name in bands
    ]
    if not masks:
        return None
    return ~np.logical_or.reduce(masks)
