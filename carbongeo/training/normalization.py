"""Normalisation statistics computed from the training split and stored with the model.

The aux bands are standardised per band with a mean and standard deviation over every finite
pixel of the train tiles in the train years. The target stays in physical units: the model and the
loss receive ``value_scale`` (the mean of the positive target pixels) to bring values near one, and
the loss and metrics receive quantile thresholds of the positive target pixels. Only the train
split is read, so validation and test tiles never leak into the statistics.

Under coarse supervision (:func:`compute_product_normalization`) the coarse product takes the
target's place: ``value_scale`` is the mean positive cell divided by ``s**2`` (a typical fine
pixel), and the two thresholds are quantiles of the positive cells, in tonnes per cell, because
the loss and the validation of that mode compare cells.

Statistics are streamed tile by tile over memory-mapped cubes: the mean and variance are combined
with Chan's parallel update in float64, and quantiles come from a bounded uniform random sample of
the positive target pixels (bottom-k sampling), so memory stays flat in the dataset size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from carbongeo.errors import (
    CheckpointError,
    InputDataError,
    RunFileError,
)
from carbongeo.store.tiles import TileIndex, load_index, open_aux_target, open_year

HOTSPOT_QUANTILE = 0.99
"""Quantile of the positive train target pixels above which a pixel counts as a hotspot."""

DEFAULT_SAMPLE_SIZE = 1_000_000
"""Largest number of positive target pixels kept to estimate quantiles."""

ArrayT = TypeVar("ArrayT", np.ndarray, Tensor)


@dataclass(frozen=True)
class Normalization:
    """Per-band aux statistics and target scales of the training split.

    Attributes:
        aux_mean: Mean of each aux band (after the band's transform, e.g. log1p).
        aux_std: Standard deviation of each aux band; 1.0 for a constant or empty band.
        value_scale: Mean of the positive target pixels, in physical units.
        high_threshold: The ``loss.high_quantile`` quantile of the positive target pixels; pixels
            above it are weighted up in the loss.
        hotspot_threshold: The 0.99 quantile of the positive target pixels; the validation
            metric ``mae_above_threshold`` is computed over target pixels at or above it, and
            it is the data range of the validation ``ssim_gauss11``.
    """

    aux_mean: tuple[float, ...]
    aux_std: tuple[float, ...]
    value_scale: float
    high_threshold: float
    hotspot_threshold: float

    def __post_init__(self) -> None:
        if len(self.aux_mean) != len(self.aux_std):
            raise CheckpointError(
                f"normalisation has {len(self.aux_mean)} aux means but {len(self.aux_std)} stds"
            )
        values = [*self.aux_mean, *self.aux_std, self.value_scale]
        if not all(math.isfinite(v) for v in values) or min(self.aux_std, default=1.0) <= 0:
            raise CheckpointError("normalisation statistics must be finite with positive stds")
        if self.value_scale <= 0:
            raise CheckpointError(f"normalisation value_scale must be > 0, got {self.value_scale}")

    @property
    def n_bands(self) -> int:
        """Number of aux bands."""
        return len(self.aux_mean)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and floats (safe for ``torch.load(weights_only=True)`` and JSON)."""
        return {
            "aux_mean": [float(v) for v in self.aux_mean],
            "aux_std": [float(v) for v in self.aux_std],
            "value_scale": float(self.value_scale),
            "high_threshold": float(self.high_threshold),
            "hotspot_threshold": float(self.hotspot_threshold),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        """Inverse of :meth:`to_dict`.

        Raises:
            CheckpointError: If a key is missing or a value is not a number.
        """
        try:
            return cls(
                aux_mean=tuple(float(v) for v in data["aux_mean"]),
                aux_std=tuple(float(v) for v in data["aux_std"]),
                value_scale=float(data["value_scale"]),
                high_threshold=float(data["high_threshold"]),
                hotspot_threshold=float(data["hotspot_threshold"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"invalid normalisation statistics: {err!r}") from err

    def normalize_aux(self, x: ArrayT, channel_axis: int = 0) -> ArrayT:
        """Standardise aux bands and replace nodata (NaN, inf) by 0, the band mean.

        Args:
            x: Aux values shaped ``[C, ...]`` (or with the bands on ``channel_axis``), as a numpy
                array or a tensor, after the band transforms (as stored in the tile cubes).
            channel_axis: The axis holding the bands.

        Returns:
            The normalised values, float32 for numpy input and the input's floating dtype (or
            float32) for tensors, with every non-finite value set to 0.

        Raises:
            CheckpointError: If the number of bands differs from the statistics.
        """
        axis = channel_axis % x.ndim
        if x.shape[axis] != self.n_bands:
            raise CheckpointError(
                f"aux has {x.shape[axis]} bands but the normalisation has {self.n_bands}; "
                "the tiles and the checkpoint come from different configurations"
            )
        shape = [1] * x.ndim
        shape[axis] = self.n_bands
        if isinstance(x, Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            mean = torch.tensor(self.aux_mean, dtype=dtype, device=x.device).view(shape)
            std = torch.tensor(self.aux_std, dtype=dtype, device=x.device).view(shape)
            out = (x.to(dtype) - mean) / std
            return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        mean_np = np.asarray(self.aux_mean, dtype=np.float32).reshape(shape)
        std_np = np.asarray(self.aux_std, dtype=np.float32).reshape(shape)
        out_np = (np.asarray(x, dtype=np.float32) - mean_np) / std_np
        out_np[~np.isfinite(out_np)] = 0.0
        return out_np


class RunningMoments:
    """Per-band count, mean and sum of squared deviations, merged with Chan's update.

    Streams statistics chunk by chunk in float64 without the cancellation of sum-of-squares
    formulas; shared by the normalisation, the data checks and the evaluation.
    """

    def __init__(self, n_bands: int) -> None:
        self.count = np.zeros(n_bands, dtype=np.float64)
        self.mean = np.zeros(n_bands, dtype=np.float64)
        self.m2 = np.zeros(n_bands, dtype=np.float64)

    def update(self, values: np.ndarray) -> None:
        """Add a ``[C, N]`` chunk; non-finite values are ignored."""
        finite = np.isfinite(values)
        count = finite.sum(axis=1).astype(np.float64)
        clean = np.where(finite, values, 0.0)
        mean = clean.sum(axis=1) / np.maximum(count, 1.0)
        m2 = (np.where(finite, values - mean[:, None], 0.0) ** 2).sum(axis=1)
        total = self.count + count
        safe_total = np.maximum(total, 1.0)
        delta = mean - self.mean
        self.mean = self.mean + delta * count / safe_total
        self.m2 = self.m2 + m2 + delta**2 * self.count * count / safe_total
        self.count = total

    def std(self) -> np.ndarray:
        """Population standard deviation per band (1.0 where undefined or zero)."""
        var = self.m2 / np.maximum(self.count, 1.0)
        std = np.sqrt(np.maximum(var, 0.0))
        return np.where((self.count > 0) & (std > 1e-12), std, 1.0)


class _BottomKSample:
    """A uniform random sample without replacement of a stream of values, of bounded size.

    Every value gets a uniform random key and the ``size`` values with the smallest keys are kept,
    which is a uniform sample of everything seen so far whatever the chunk sizes.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.values = np.empty(0, dtype=np.float64)
        self.keys = np.empty(0, dtype=np.float64)

    def update(self, values: np.ndarray) -> None:
        keys = self.rng.random(values.size)
        self.values = np.concatenate([self.values, values])
        self.keys = np.concatenate([self.keys, keys])
        if self.values.size > self.size:
            keep = np.argpartition(self.keys, self.size - 1)[: self.size]
            self.values = self.values[keep]
            self.keys = self.keys[keep]


def compute_normalization(
    tiles_dir: str | Path,
    tile_ids: Sequence[int],
    years: Iterable[int],
    *,
    high_quantile: float,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
) -> Normalization:
    """Stream the train tiles once and compute their normalisation statistics.

    Args:
        tiles_dir: Folder with ``index.json``, ``X_<year>.npy`` and ``Y_<year>.npy``.
        tile_ids: Ids of the train tiles.
        years: The train years.
        high_quantile: Quantile of positive target pixels that defines "high" for the loss.
        sample_size: Largest number of positive target pixels kept for the quantiles.
        seed: Seed of the quantile sample.

    Returns:
        The statistics.

    Raises:
        InputDataError: If the index is missing, a tile id is unknown or the train tiles hold
            no positive target pixel.
        RunFileError: If the split is empty, a cube is missing
            (:class:`~carbongeo.errors.MissingRunFileError`) or its bands differ from the index.
    """
    tiles_dir = Path(tiles_dir)
    index = load_index(tiles_dir)

    def cubes(year: int) -> tuple[np.ndarray, np.ndarray]:
        return open_aux_target(tiles_dir, index, year)

    return _statistics(
        index, tile_ids, list(years), cubes, high_quantile, sample_size, seed, "target"
    )


def compute_product_normalization(
    tiles_dir: str | Path,
    tile_ids: Sequence[int],
    years: Iterable[int],
    *,
    high_quantile: float,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
) -> Normalization:
    """The statistics of coarse supervision: the coarse product in the target's place.

    Never opens a target cube. ``value_scale`` is the mean positive cell over ``s**2``;
    ``high_threshold`` and ``hotspot_threshold`` are quantiles of the positive cells (per cell).

    Args, returns and raises: as :func:`compute_normalization`, with ``C_<year>.npy`` read
    instead of ``Y_<year>.npy``.
    """
    tiles_dir = Path(tiles_dir)
    index = load_index(tiles_dir)

    def cubes(year: int) -> tuple[np.ndarray, np.ndarray]:
        year_cubes = open_year(tiles_dir, index, year, target=False, coarse=True)
        assert year_cubes.coarse is not None  # open_year raises when the product is missing
        return year_cubes.aux, year_cubes.coarse

    norm = _statistics(
        index, tile_ids, list(years), cubes, high_quantile, sample_size, seed, "coarse"
    )
    cell = index.scale * index.scale
    return dataclasses.replace(norm, value_scale=norm.value_scale / cell)


def _statistics(
    index: TileIndex,
    tile_ids: Sequence[int],
    years: list[int],
    cubes: Callable[[int], tuple[np.ndarray, np.ndarray]],
    high_quantile: float,
    sample_size: int,
    seed: int,
    label: str,
) -> Normalization:
    """Stream the aux and label cubes (``cubes(year)``) of the train tiles once.

    ``label`` is the config table of the label (``target`` or ``coarse``), named in the error.
    """
    rows = sorted({index.position(int(tile_id)) for tile_id in tile_ids})
    if not rows or not years:
        raise RunFileError("the train split is empty; rerun 'carbongeo split' and check it")
    sample = _BottomKSample(sample_size, seed)
    positive_sum = 0.0
    positive_count = 0
    moments = RunningMoments(len(index.bands))
    for year in years:
        x_cube, y_cube = cubes(year)
        for row in rows:
            aux = np.asarray(x_cube[row], dtype=np.float64)
            moments.update(aux.reshape(aux.shape[0], -1))
            target = np.asarray(y_cube[row], dtype=np.float64).ravel()
            positive = target[np.isfinite(target) & (target > 0)]
            positive_sum += float(positive.sum())
            positive_count += positive.size
            sample.update(positive)
    if positive_count == 0:
        raise InputDataError(
            f"the train tiles hold no positive {label} pixel in years {years[0]}-{years[-1]}; "
            f"check {label}.path and {label}.nodata, or the split"
        )
    high, hotspot = np.quantile(sample.values, [high_quantile, HOTSPOT_QUANTILE])
    return Normalization(
        aux_mean=tuple(float(v) for v in moments.mean),
        aux_std=tuple(float(v) for v in moments.std()),
        value_scale=positive_sum / positive_count,
        high_threshold=float(high),
        hotspot_threshold=float(hotspot),
    )
