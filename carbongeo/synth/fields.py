"""Array helpers for fields on the working grid: noise, resampling by blocks, rounding."""

from __future__ import annotations

import numpy as np

from carbongeo.ops.blocks import block_sum
from carbongeo.synth.grids import SUB


def fbm(rng: np.random.Generator, shape: tuple[int, int], beta: float = 3.0) -> np.ndarray:
    """Standardised fractal noise with a power spectrum falling as frequency**-beta."""
    height, width = shape
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    freq = np.hypot(fx, fy)
    freq[0, 0] = 1.0
    amplitude = freq ** (-beta / 2.0)
    amplitude[0, 0] = 0.0
    spectrum = np.fft.rfft2(rng.standard_normal(shape)) * amplitude
    field = np.fft.irfft2(spectrum, s=shape)
    field -= field.mean()
    field /= field.std()
    return field.astype(np.float32)


def upsample(field: np.ndarray) -> np.ndarray:
    """Bilinear upsampling of a 1 km field onto the 250 m working grid (edges held constant)."""

    def taps(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = (np.arange(n * SUB) + 0.5) / SUB - 0.5
        low = np.floor(position)
        weight = (position - low).astype(np.float32)
        first = np.clip(low.astype(np.int64), 0, n - 1)
        return first, np.minimum(first + 1, n - 1), weight

    field = field.astype(np.float32)
    r0, r1, wr = taps(field.shape[0])
    c0, c1, wc = taps(field.shape[1])
    rows = field[r0] * (1.0 - wr)[:, None] + field[r1] * wr[:, None]
    # Column gathers come back in Fortran order; mixing orders slows every later operation.
    return np.ascontiguousarray(rows[:, c0] * (1.0 - wc) + rows[:, c1] * wc)


def decay(exponent: np.ndarray) -> np.ndarray:
    """exp(-exponent), exactly zero where negligible.

    Far tails would otherwise become float32 subnormals, which make every later array
    operation on them many times slower.
    """
    return np.where(exponent < 60.0, np.exp(-np.minimum(exponent, 60.0)), 0.0)


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Means of `factor` x `factor` blocks, in float64."""
    return block_sum(array, factor) / float(factor * factor)


def normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 noise (float64 draws would double the cost of large arrays)."""
    return rng.standard_normal(shape, dtype=np.float32)


def quantize(array: np.ndarray, step: float) -> np.ndarray:
    """Round to multiples of a power-of-two step; keeps float32 mantissas short (compresses)."""
    return (np.rint(array * np.float32(1.0 / step)) * np.float32(step)).astype(np.float32)
