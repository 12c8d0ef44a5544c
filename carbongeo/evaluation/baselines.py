"""Mass-conserving reference methods for downscaling a coarse emission field.

Every baseline spreads each coarse cell's mass (tonnes per coarse cell) over the valid fine pixels
of its ``scale x scale`` block, in proportion to a non-negative weight:

* ``uniform``: equal weights (every valid pixel of a block gets the same share);
* ``bicubic``: the coarse density upsampled bicubically (cell centres on block centres), clipped
  at 0, then corrected multiplicatively per block;
* ``dasymetric:<band>``: an auxiliary proxy such as night-time lights or population (the
  ODIAC/EDGAR-style proportional allocation).

A block whose weights sum to 0 over its valid pixels falls back to uniform. Hence every block with
a finite coarse value and at least one valid pixel sums exactly (to float64 rounding) to the
coarse value, and a zero coarse value gives zeros. A block with no valid pixel cannot receive its
mass: :func:`unplaced_mass` reports it. Pixels that are not valid, or whose coarse value is NaN,
are NaN in the output.

Everything here is pure numpy on one tile or scene, in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from scipy import ndimage

__all__ = [
    "BASELINES",
    "allocate",
    "bicubic",
    "block_sum",
    "dasymetric",
    "run_baselines",
    "unplaced_mass",
    "uniform",
    "upsample_blocks",
]


def _check_shapes(coarse: np.ndarray, s: int, valid: np.ndarray) -> None:
    if s < 1:
        raise ValueError(f"scale must be a positive integer, got {s}")
    if coarse.ndim != 2 or valid.ndim != 2:
        raise ValueError(
            f"coarse and valid must be 2-D, got shapes {coarse.shape} and {valid.shape}"
        )
    if valid.shape != (coarse.shape[0] * s, coarse.shape[1] * s):
        raise ValueError(f"valid mask {valid.shape} is not coarse {coarse.shape} times scale {s}")


def block_sum(x: np.ndarray, s: int) -> np.ndarray:
    """Sum a ``[H, W]`` array over ``s x s`` blocks (NaN counts as 0).

    Args:
        x: Fine array; ``H`` and ``W`` must be multiples of ``s``.
        s: Block side in pixels.

    Returns:
        The ``[H / s, W / s]`` block sums in float64.
    """
    height, width = x.shape
    if height % s or width % s:
        raise ValueError(f"array shape {x.shape} is not a multiple of scale {s}")
    values = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
    return values.reshape(height // s, s, width // s, s).sum(axis=(1, 3))


def upsample_blocks(x: np.ndarray, s: int) -> np.ndarray:
    """Repeat every cell of a ``[h, w]`` array over an ``s x s`` block (nearest upsampling)."""
    return np.repeat(np.repeat(x, s, axis=0), s, axis=1)


def allocate(coarse: np.ndarray, s: int, valid: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Spread each coarse cell's mass over its block in proportion to ``weight``.

    Args:
        coarse: ``[h, w]`` mass per coarse cell; NaN is nodata.
        s: Fine pixels per coarse cell side.
        valid: ``[h * s, w * s]`` bool mask of the fine pixels that may receive mass.
        weight: ``[h * s, w * s]`` weights; negative and non-finite values count as 0. Blocks
            whose valid weights sum to 0 are filled uniformly over their valid pixels.

    Returns:
        ``[h * s, w * s]`` float64 fine mass; NaN where not valid or where the coarse cell is NaN.
    """
    coarse = np.asarray(coarse, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    _check_shapes(coarse, s, valid)
    if weight.shape != valid.shape:
        raise ValueError(f"weight {weight.shape} does not match the valid mask {valid.shape}")
    w = np.asarray(weight, dtype=np.float64)
    w = np.where(valid & np.isfinite(w), np.maximum(w, 0.0), 0.0)
    w_sum = upsample_blocks(block_sum(w, s), s)
    n_valid = upsample_blocks(block_sum(valid, s), s)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(w_sum > 0, w / w_sum, np.where(valid, 1.0, 0.0) / n_valid)
    out = share * upsample_blocks(coarse, s)
    out[~valid] = np.nan
    return out


def uniform(coarse: np.ndarray, s: int, valid: np.ndarray) -> np.ndarray:
    """Each coarse value spread evenly over the valid pixels of its block."""
    return allocate(coarse, s, valid, np.ones(valid.shape))


def bicubic_density(coarse: np.ndarray, s: int) -> np.ndarray:
    """The coarse density ``coarse / s**2`` upsampled bicubically onto the fine grid.

    Uses a cubic spline on pixel areas (``grid_mode``): the centre of each coarse cell lands on
    the centre of its fine block, and edges replicate the nearest cell. NaN cells are read as 0.
    """
    density = np.nan_to_num(np.asarray(coarse, dtype=np.float64), nan=0.0) / float(s * s)
    if s == 1:
        return density
    return ndimage.zoom(density, s, order=3, mode="nearest", grid_mode=True)


def bicubic(coarse: np.ndarray, s: int, valid: np.ndarray) -> np.ndarray:
    """Bicubic upsampling of the coarse density, clipped at 0 and mass-corrected per block."""
    return allocate(coarse, s, valid, np.maximum(bicubic_density(coarse, s), 0.0))


def dasymetric(coarse: np.ndarray, s: int, valid: np.ndarray, proxy: np.ndarray) -> np.ndarray:
    """Coarse mass spread in proportion to a non-negative proxy (night lights, population).

    Blocks where the proxy sums to 0 over the valid pixels fall back to uniform.
    """
    return allocate(coarse, s, valid, proxy)


def unplaced_mass(coarse: np.ndarray, s: int, valid: np.ndarray) -> float:
    """Coarse mass in blocks without any valid pixel: no baseline can place it."""
    coarse = np.asarray(coarse, dtype=np.float64)
    _check_shapes(coarse, s, np.asarray(valid))
    empty = block_sum(np.asarray(valid, dtype=bool), s) == 0
    return float(np.nansum(np.where(empty, coarse, 0.0)))


#: Baselines that need no proxy, by name.
BASELINES: dict[str, Callable[[np.ndarray, int, np.ndarray], np.ndarray]] = {
    "uniform": uniform,
    "bicubic": bicubic,
}


def run_baselines(
    coarse: np.ndarray, s: int, valid: np.ndarray, proxies: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run every baseline on one tile or scene.

    Args:
        coarse: ``[h, w]`` mass per coarse cell (NaN nodata).
        s: Fine pixels per coarse cell side.
        valid: ``[h * s, w * s]`` mask of the pixels that may receive mass.
        proxies: Raw (untransformed) proxy rasters by band name, each ``[h * s, w * s]``.

    Returns:
        ``{"uniform": ..., "bicubic": ..., "dasymetric:<band>": ...}`` float64 fine maps.
    """
    results = {name: method(coarse, s, valid) for name, method in BASELINES.items()}
    for band, proxy in proxies.items():
        results[f"dasymetric:{band}"] = dasymetric(coarse, s, valid, proxy)
    return results
