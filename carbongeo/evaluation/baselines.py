"""Mass-conserving reference methods for downscaling a coarse emission field.

Every baseline spreads each coarse cell's mass (tonnes per coarse cell) over the valid fine pixels
of its ``scale x scale`` block, in proportion to a non-negative weight
(:func:`carbongeo.ops.mass.allocate`):

* ``uniform``: equal weights (every valid pixel of a block gets the same share);
* ``bicubic``: the coarse density upsampled bicubically (cell centres on block centres), clipped
  at 0, then corrected multiplicatively per block;
* ``dasymetric:<band>``: an auxiliary proxy such as night-time lights or population (the
  ODIAC/EDGAR-style proportional allocation).

With hard zero classes (``allowed`` False, e.g. water) a block's mass goes only to its allowed
valid pixels, the others get 0; a block with valid pixels but none allowed keeps its mass over
its valid pixels (:func:`carbongeo.ops.mass.mass_carriers`). A block whose weights sum to 0 over
its carrying pixels falls back to uniform. Hence every block with
a finite coarse value and at least one valid pixel sums exactly (to float64 rounding) to the
coarse value, and a zero coarse value gives zeros. A block with no valid pixel cannot receive its
mass: :func:`carbongeo.ops.mass.unplaced_mass` reports it. Pixels that are not valid, or whose
coarse value is NaN, are NaN in the output.

Everything here is pure numpy on one tile or scene, in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from carbongeo.ops.mass import allocate

__all__ = [
    "BASELINES",
    "bicubic",
    "bicubic_density",
    "dasymetric",
    "method_names",
    "run_baselines",
    "uniform",
]


def uniform(
    coarse: np.ndarray, s: int, valid: np.ndarray, allowed: np.ndarray | None = None
) -> np.ndarray:
    """Each coarse value spread evenly over the carrying pixels of its block."""
    return allocate(coarse, s, valid, np.ones(valid.shape), allowed)


def bicubic_density(coarse: np.ndarray, s: int) -> np.ndarray:
    """The coarse density ``coarse / s**2`` upsampled bicubically onto the fine grid.

    Uses a cubic spline on pixel areas (``grid_mode``): the centre of each coarse cell lands on
    the centre of its fine block, and edges replicate the nearest cell. NaN cells are read as 0.
    """
    density = np.nan_to_num(np.asarray(coarse, dtype=np.float64), nan=0.0) / float(s * s)
    if s == 1:
        return density
    return ndimage.zoom(density, s, order=3, mode="nearest", grid_mode=True)


def bicubic(
    coarse: np.ndarray, s: int, valid: np.ndarray, allowed: np.ndarray | None = None
) -> np.ndarray:
    """Bicubic upsampling of the coarse density, clipped at 0 and mass-corrected per block."""
    return allocate(coarse, s, valid, np.maximum(bicubic_density(coarse, s), 0.0), allowed)


def dasymetric(
    coarse: np.ndarray,
    s: int,
    valid: np.ndarray,
    proxy: np.ndarray,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Coarse mass spread in proportion to a non-negative proxy (night lights, population).

    Blocks where the proxy sums to 0 over the carrying pixels fall back to uniform.
    """
    return allocate(coarse, s, valid, proxy, allowed)


#: Baselines that need no proxy, by name.
BASELINES: dict[str, Callable[[np.ndarray, int, np.ndarray, np.ndarray | None], np.ndarray]] = {
    "uniform": uniform,
    "bicubic": bicubic,
}


def method_names(proxy_bands: Sequence[str]) -> list[str]:
    """The names of every baseline, as keys of :func:`run_baselines`, for the given proxies."""
    return [*BASELINES, *(f"dasymetric:{band}" for band in proxy_bands)]


def run_baselines(
    coarse: np.ndarray,
    s: int,
    valid: np.ndarray,
    proxies: Mapping[str, np.ndarray],
    allowed: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Run every baseline on one tile or scene.

    Args:
        coarse: ``[h, w]`` mass per coarse cell (NaN nodata).
        s: Fine pixels per coarse cell side.
        valid: ``[h * s, w * s]`` mask of the pixels that may receive mass.
        proxies: Raw (untransformed) proxy rasters by band name, each ``[h * s, w * s]``.
        allowed: ``[h * s, w * s]`` bool, pixels that are not a hard zero class, or None.

    Returns:
        ``{"uniform": ..., "bicubic": ..., "dasymetric:<band>": ...}`` float64 fine maps.
    """
    results = {name: method(coarse, s, valid, allowed) for name, method in BASELINES.items()}
    for band, proxy in proxies.items():
        results[f"dasymetric:{band}"] = dasymetric(coarse, s, valid, proxy, allowed)
    return results
