"""The ``s x s`` block operations that tie a fine grid to its coarse grid, for numpy and torch.

A coarse cell covers ``s x s`` fine pixels. :func:`block_sum` is the degradation from fine to
coarse (tonnes per fine pixel to tonnes per coarse cell), :func:`upsample_blocks` repeats each
coarse cell over its block, and :func:`block_max` is the largest value of each block. Every
function takes a numpy array or a torch tensor shaped ``[..., H, W]`` and returns the same kind.

numpy block sums are computed in float64 whatever the input dtype (bool masks count pixels),
because they feed mass checks and allocations. Tensors keep their dtype and device, so the model
and the loss stay differentiable and do not change precision. Anything that is not a numpy array
is taken for a tensor; torch is never imported here, so numpy-only callers (the synthetic world,
the baselines) do not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["block_max", "block_shape", "block_sum", "upsample_blocks"]

ArrayT = TypeVar("ArrayT", np.ndarray, "Tensor")


def block_shape(height: int, width: int, scale: int) -> tuple[int, int]:
    """The coarse shape ``(height / scale, width / scale)`` of a fine grid.

    Raises:
        ValueError: If ``scale`` is not positive or does not divide ``height`` and ``width``.
    """
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    if height % scale or width % scale:
        raise ValueError(
            f"fine size {height}x{width} is not a multiple of scale {scale}; "
            "crop or pad the tile to a multiple of the scale"
        )
    return height // scale, width // scale


def _blocks(x: ArrayT, scale: int) -> ArrayT:
    """View ``[..., H, W]`` as ``[..., H/s, s, W/s, s]``."""
    if x.ndim < 2:
        raise ValueError(f"expected an array shaped [..., H, W], got shape {tuple(x.shape)}")
    h, w = block_shape(x.shape[-2], x.shape[-1], scale)
    return x.reshape(*x.shape[:-2], h, scale, w, scale)


def block_sum(x: ArrayT, scale: int, *, nodata_as_zero: bool = False) -> ArrayT:
    """Sum a fine field over non-overlapping ``scale x scale`` blocks.

    A reshape-and-sum rather than ``avg_pool2d * s**2``: it loses no precision to a division and
    multiplication.

    Args:
        x: Fine field ``[..., H, W]``, ``H`` and ``W`` multiples of ``scale``.
        scale: Block side in fine pixels.
        nodata_as_zero: Count non-finite values (nodata) as 0; otherwise they propagate.

    Returns:
        The block sums ``[..., H / scale, W / scale]``: float64 for numpy input, the input's
        dtype for a tensor.

    Raises:
        ValueError: If ``H`` or ``W`` is not a multiple of ``scale``.
    """
    if isinstance(x, np.ndarray):
        if nodata_as_zero:
            x = np.where(np.isfinite(x), x, 0.0)
        return _blocks(x, scale).sum(axis=(-3, -1), dtype=np.float64)
    if nodata_as_zero:
        x = x.where(x.isfinite(), 0.0)
    return _blocks(x, scale).sum(dim=(-3, -1))


def block_max(x: ArrayT, scale: int) -> ArrayT:
    """Maximum of a fine field over non-overlapping ``scale x scale`` blocks.

    Args:
        x: Fine field ``[..., H, W]``, ``H`` and ``W`` multiples of ``scale``.
        scale: Block side in fine pixels.

    Returns:
        The block maxima ``[..., H / scale, W / scale]``, in the input's dtype.
    """
    if isinstance(x, np.ndarray):
        return _blocks(x, scale).max(axis=(-3, -1))
    return _blocks(x, scale).amax(dim=(-3, -1))


def upsample_blocks(x: ArrayT, scale: int) -> ArrayT:
    """Repeat every coarse cell over its ``scale x scale`` block (``kron(x, ones(s, s))``).

    Args:
        x: Coarse field ``[..., h, w]``.
        scale: Block side in fine pixels.

    Returns:
        The fine field ``[..., h * scale, w * scale]`` in the input's dtype. It is constant over
        each block, so ``upsample_blocks(c / scale**2, scale)`` is a mass-preserving (nearest)
        upsampling of ``c``.
    """
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    if isinstance(x, np.ndarray):
        return np.repeat(np.repeat(x, scale, axis=-2), scale, axis=-1)
    h, w = x.shape[-2:]
    lead = x.shape[:-2]
    expanded = x[..., :, None, :, None].expand(*lead, h, scale, w, scale)
    return expanded.reshape(*lead, h * scale, w * scale)
