"""Mass bookkeeping between a fine field and its coarse totals (numpy, float64).

A coarse cell holds a mass (e.g. tonnes per coarse cell) that the ``s x s`` fine pixels of its
block must share. Only the cell's *valid* pixels may carry mass; nodata pixels carry none.

* :func:`allocate` spreads each cell's mass over its valid pixels in proportion to a weight (the
  baselines);
* :func:`reproject_mass` rescales a fine prediction onto the coarse totals (the mosaic);
* :func:`mass_carriers` says which valid pixels carry a cell's mass when some are hard zeros
  (water), and :func:`mass_on_masked` how much mass had to be left on such pixels;
* :func:`block_mass_errors` and :func:`unplaced_mass` measure how far a fine field is from its
  coarse totals, and :func:`mass_balance` gathers both for a streamed strip.

The errors are counted over the cells with a positive finite total and at least one finite fine
pixel; the unplaced mass is the total of the positive cells without a valid pixel, which no
fine field can carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carbongeo.ops.blocks import block_sum, upsample_blocks

__all__ = [
    "MassBalance",
    "allocate",
    "block_mass_errors",
    "cell_totals",
    "mass_balance",
    "mass_carriers",
    "mass_on_masked",
    "reproject_mass",
    "unplaced_mass",
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


def mass_carriers(valid: np.ndarray, allowed: np.ndarray | None, s: int) -> np.ndarray:
    """The valid pixels that carry their cell's mass when some pixels are hard zeros.

    A cell's mass goes to its valid pixels that are ``allowed`` (not a zero class such as water).
    A cell with valid pixels but none allowed keeps its mass spread over its valid pixels rather
    than losing it; :func:`mass_on_masked` counts that mass.

    Args:
        valid: ``[h * s, w * s]`` bool, pixels with data.
        allowed: ``[h * s, w * s]`` bool, pixels that may carry emissions, or None (all).
        s: Fine pixels per coarse cell side.

    Returns:
        ``[h * s, w * s]`` bool.
    """
    valid = np.asarray(valid, dtype=bool)
    if allowed is None:
        return valid
    carriers = valid & np.asarray(allowed, dtype=bool)
    stranded = (block_sum(carriers, s) == 0) & (block_sum(valid, s) > 0)
    return carriers | (valid & upsample_blocks(stranded, s))


def mass_on_masked(
    coarse: np.ndarray, s: int, valid: np.ndarray, allowed: np.ndarray | None
) -> float:
    """Mass of the positive cells whose valid pixels are all hard zeros (kept on them).

    Args:
        coarse: ``[h, w]`` coarse totals (NaN nodata).
        s: Scale.
        valid: ``[h * s, w * s]`` bool, pixels with data.
        allowed: ``[h * s, w * s]`` bool, pixels that may carry emissions, or None (all).

    Returns:
        The mass, in the units of ``coarse`` (0.0 without ``allowed``).
    """
    if allowed is None:
        return 0.0
    coarse = np.asarray(coarse, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    _check_shapes(coarse, s, valid)
    none_allowed = block_sum(valid & np.asarray(allowed, dtype=bool), s) == 0
    stranded = none_allowed & (block_sum(valid, s) > 0)
    return float(coarse[_positive(coarse) & stranded].sum())


def allocate(
    coarse: np.ndarray,
    s: int,
    valid: np.ndarray,
    weight: np.ndarray,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Spread each coarse cell's mass over its block in proportion to ``weight``.

    Args:
        coarse: ``[h, w]`` mass per coarse cell; NaN is nodata.
        s: Fine pixels per coarse cell side.
        valid: ``[h * s, w * s]`` bool mask of the fine pixels with data.
        weight: ``[h * s, w * s]`` weights; negative and non-finite values count as 0. Blocks
            whose weights sum to 0 over the carrying pixels are filled uniformly over them.
        allowed: ``[h * s, w * s]`` bool, pixels that may carry emissions (None: all); the mass
            goes to :func:`mass_carriers` and the other valid pixels get 0.

    Returns:
        ``[h * s, w * s]`` float64 fine mass; NaN where not valid or where the coarse cell is NaN.
    """
    coarse = np.asarray(coarse, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    _check_shapes(coarse, s, valid)
    if weight.shape != valid.shape:
        raise ValueError(f"weight {weight.shape} does not match the valid mask {valid.shape}")
    carriers = mass_carriers(valid, allowed, s)
    w = np.asarray(weight, dtype=np.float64)
    w = np.where(carriers & np.isfinite(w), np.maximum(w, 0.0), 0.0)
    w_sum = upsample_blocks(block_sum(w, s), s)
    n_carriers = upsample_blocks(block_sum(carriers, s), s)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(w_sum > 0, w / w_sum, np.where(carriers, 1.0, 0.0) / n_carriers)
    out = share * upsample_blocks(coarse, s)
    out[valid & ~carriers] = 0.0
    out[~valid] = np.nan
    return out


def reproject_mass(
    pred: np.ndarray,
    valid: np.ndarray,
    coarse: np.ndarray,
    scale: int,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Rescale a fine field so that its valid pixels sum to the coarse total of every cell.

    This is the rule of :func:`carbongeo.models.constraints.mass_conserve` restricted to valid
    pixels: the prediction only decides how each cell's mass is shared among the cell's valid
    pixels (weights ``max(pred, 0)``, non-finite as 0), and a cell whose valid pixels all have
    zero weight shares its mass equally among them. Nodata pixels carry no mass; a cell without a
    valid pixel cannot carry its mass (see :func:`unplaced_mass`). It works in float64 numpy on a
    whole strip at a time (a strip is numpy already, and this avoids the many full-size passes and
    thread synchronisations of the tensor version on the CPU).

    Args:
        pred: Fine prediction ``[H, W]``, ``H`` and ``W`` multiples of ``scale``.
        valid: bool ``[H, W]``, pixels that may carry mass.
        coarse: Coarse totals ``[H / scale, W / scale]``; NaN counts as 0.
        scale: Fine pixels per coarse cell side.
        allowed: bool ``[H, W]``, pixels that may carry emissions (None: all); the mass goes to
            :func:`mass_carriers` and the other valid pixels get 0.

    Returns:
        float64 ``[H, W]``: the conserved field, NaN where ``valid`` is False.
    """
    h, w = pred.shape
    carriers = mass_carriers(valid, allowed, scale)
    usable = carriers & np.isfinite(pred) & (pred > 0)
    weights = np.where(usable, pred, 0.0).astype(np.float64)
    starving = (block_sum(weights, scale) <= 0) & (block_sum(carriers, scale) > 0)
    weights = np.where(carriers & upsample_blocks(starving, scale), 1.0, weights)
    totals = block_sum(weights, scale)
    mass = np.nan_to_num(coarse.astype(np.float64), nan=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(totals > 0, mass / totals, 0.0)
    blocks = weights.reshape(h // scale, scale, w // scale, scale) * ratio[:, None, :, None]
    return np.where(valid, blocks.reshape(h, w), np.nan)


def cell_totals(fine: np.ndarray, s: int) -> np.ndarray:
    """Sum ``[..., H, W]`` over ``s x s`` blocks in float64; nodata (non-finite) counts as 0 and
    a block without any finite pixel is NaN (the coarse cells of a fine map)."""
    sums = block_sum(fine, s, nodata_as_zero=True)
    return np.where(block_sum(np.isfinite(fine), s) > 0, sums, np.nan)


def _positive(coarse: np.ndarray) -> np.ndarray:
    """The cells with a positive finite total: the ones whose mass is checked."""
    return np.isfinite(coarse) & (coarse > 0)


def block_mass_errors(fine: np.ndarray, coarse: np.ndarray, s: int) -> np.ndarray:
    """Relative block-sum errors ``|sum_block(fine) - coarse| / coarse``.

    Only coarse cells with a finite value > 0 and at least one finite fine pixel count; nodata
    (non-finite) fine pixels count as 0 in the sums.

    Args:
        fine: ``[h * s, w * s]`` fine field (NaN nodata).
        coarse: ``[h, w]`` coarse totals (NaN nodata).
        s: Scale.

    Returns:
        1-D float64 array of the counted cells' relative errors, in row-major cell order.
    """
    coarse = np.asarray(coarse, dtype=np.float64)
    placed = block_sum(np.isfinite(fine), s) > 0
    counted = placed & _positive(coarse)
    sums = block_sum(fine, s, nodata_as_zero=True)
    return np.abs(sums[counted] - coarse[counted]) / coarse[counted]


def unplaced_mass(coarse: np.ndarray, s: int, valid: np.ndarray) -> float:
    """Total of the positive coarse cells without any valid pixel: no fine field can carry it.

    Args:
        coarse: ``[h, w]`` coarse totals (NaN nodata).
        s: Scale.
        valid: ``[h * s, w * s]`` bool, the pixels that may carry mass.

    Returns:
        The unplaced mass, in the units of ``coarse``.
    """
    coarse = np.asarray(coarse, dtype=np.float64)
    _check_shapes(coarse, s, np.asarray(valid))
    empty = block_sum(np.asarray(valid, dtype=bool), s) == 0
    return float(coarse[_positive(coarse) & empty].sum())


@dataclass(frozen=True)
class MassBalance:
    """How well a fine field carries its coarse totals.

    Attributes:
        worst_rel_error: Largest :func:`block_mass_errors` value (0.0 when no cell counts).
        coarse_mass: Total of the positive coarse cells.
        unplaced_mass: See :func:`unplaced_mass` (valid pixels: the finite fine pixels).
        valid_pixels: Finite fine pixels.
    """

    worst_rel_error: float
    coarse_mass: float
    unplaced_mass: float
    valid_pixels: int


def mass_balance(fine: np.ndarray, coarse: np.ndarray, s: int) -> MassBalance:
    """The :class:`MassBalance` of a fine field (NaN nodata) against its coarse totals."""
    coarse = np.asarray(coarse, dtype=np.float64)
    valid = np.isfinite(fine)
    errors = block_mass_errors(fine, coarse, s)
    return MassBalance(
        worst_rel_error=float(np.max(errors, initial=0.0)),
        coarse_mass=float(coarse[_positive(coarse)].sum()),
        unplaced_mass=unplaced_mass(coarse, s, valid),
        valid_pixels=int(valid.sum()),
    )
