"""The two random-forest methods: learned dasymetric allocation and the supervised pixel forest.

Both predict a weight for every fine pixel and share each coarse cell's mass in proportion to it
(:func:`carbongeo.ops.mass.allocate`), so every cell keeps its total exactly and hard zero classes
get nothing. They differ in what they learn from:

* ``learned-dasymetric`` (Stevens et al. 2015, the WorldPop / popRF method) needs no fine truth.
  It is fitted on coarse cells: the features are the aux bands averaged over each cell's carrying
  pixels, the label is the log of the cell's mass per carrying pixel, over the cells with a
  positive total. It then predicts the log density of every pixel from the pixel's own aux values;
  ``exp`` of that is the pixel's weight.
* ``supervised-forest`` is the plain forest a user with a fine map would fit: on sampled training
  pixels, features are the pixel's aux values, ``log1p`` of its cell's mass per carrying pixel and
  the aux bands averaged over its cell (the cell's context); the label is the fine truth.

Aux values are taken after their transform (as in the tile cubes); a categorical band with at
most :data:`MAX_CLASSES` classes is one-hot encoded (its cell means are class fractions). Missing
values stay NaN, which scikit-learn's forests route natively. Fitting is seeded, so a seed gives
the same forest on any number of threads.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from carbongeo.ops.blocks import block_sum, upsample_blocks
from carbongeo.ops.mass import allocate, mass_carriers

__all__ = [
    "FOREST_METHODS",
    "LEARNED_DASYMETRIC",
    "MAX_CLASSES",
    "SUPERVISED_FOREST",
    "FeatureSpec",
    "FittedForest",
    "ForestSample",
    "fit_forest",
]

LEARNED_DASYMETRIC = "learned-dasymetric"
SUPERVISED_FOREST = "supervised-forest"
FOREST_METHODS: tuple[str, ...] = (LEARNED_DASYMETRIC, SUPERVISED_FOREST)
#: A categorical band with more classes than this is used as a number, not one-hot.
MAX_CLASSES = 32

TREES = 100
MIN_SAMPLES_LEAF = 5
MAX_FEATURES = 0.5
#: Training cells of the learned-dasymetric forest at most (sampled beyond).
MAX_CELLS = 200_000


# --------------------------------------------------------------------------- features
@dataclass(frozen=True)
class FeatureSpec:
    """How aux bands become forest features.

    Attributes:
        bands: Aux band names in channel order.
        classes: For each one-hot categorical band, its class values.
    """

    bands: tuple[str, ...]
    classes: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    @classmethod
    def from_values(
        cls, bands: Sequence[str], categorical: Iterable[str], values: Iterable[np.ndarray]
    ) -> FeatureSpec:
        """The spec for ``bands``, with the classes of each categorical band found in ``values``.

        Args:
            bands: Aux band names in channel order.
            categorical: The categorical band names.
            values: Aux arrays ``[C, ...]`` (the training data) to collect classes from.
        """
        bands = tuple(bands)
        wanted = [b for b in categorical if b in bands]
        found: dict[str, set[float]] = {b: set() for b in wanted}
        for array in values:
            for band in wanted:
                if len(found[band]) <= MAX_CLASSES:
                    channel = np.asarray(array[bands.index(band)])
                    found[band].update(np.unique(channel[np.isfinite(channel)]).tolist())
        classes = {b: tuple(sorted(v)) for b, v in found.items() if 1 < len(v) <= MAX_CLASSES}
        return cls(bands=bands, classes=classes)

    @property
    def names(self) -> list[str]:
        """One name per pixel feature column (``band`` or ``band=class``)."""
        names: list[str] = []
        for band in self.bands:
            if band in self.classes:
                names += [f"{band}={_class_label(c)}" for c in self.classes[band]]
            else:
                names.append(band)
        return names

    def band_of(self, name: str) -> str:
        """The band a feature column comes from."""
        return name.split("=", 1)[0]

    def pixel_features(self, aux: np.ndarray) -> np.ndarray:
        """Feature columns ``[F, H, W]`` of aux values ``[C, H, W]`` (after their transform)."""
        columns: list[np.ndarray] = []
        for channel, band in enumerate(self.bands):
            values = np.asarray(aux[channel], dtype=np.float64)
            if band in self.classes:
                missing = ~np.isfinite(values)
                for value in self.classes[band]:
                    columns.append(np.where(missing, np.nan, (values == value).astype(np.float64)))
            else:
                columns.append(values)
        return np.stack(columns)


def _class_label(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def cell_means(features: np.ndarray, carriers: np.ndarray, s: int) -> np.ndarray:
    """Each feature averaged over the carrying pixels of its coarse cell (NaN-aware).

    Args:
        features: ``[F, H, W]``.
        carriers: ``[H, W]`` bool, the pixels that carry the cell's mass.
        s: Scale.

    Returns:
        ``[F, H / s, W / s]``; NaN for a cell without a finite value of that feature.
    """
    present = np.isfinite(features) & carriers[None]
    sums = block_sum(np.where(present, features, 0.0), s)
    counts = block_sum(present, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def cell_density(coarse: np.ndarray, carriers: np.ndarray, s: int) -> np.ndarray:
    """Mass per carrying pixel of each cell ``[h, w]`` (NaN without carriers or coarse value)."""
    counts = block_sum(carriers, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.asarray(coarse, np.float64) / counts, np.nan)


# --------------------------------------------------------------------------- one tile's data
@dataclass(frozen=True)
class ForestSample:
    """One tile of one year, as the forests read it.

    Attributes:
        aux: ``[C, H, W]`` aux values after their transform (NaN nodata).
        coarse: ``[H / s, W / s]`` coarse mass (NaN nodata).
        valid: ``[H, W]`` bool, the pixels with data that may receive mass.
        allowed: ``[H, W]`` bool, pixels that are not a hard zero class, or None.
        truth: ``[H, W]`` fine truth (NaN nodata), or None.
    """

    aux: np.ndarray
    coarse: np.ndarray
    valid: np.ndarray
    allowed: np.ndarray | None = None
    truth: np.ndarray | None = None


def _context(
    spec: FeatureSpec, sample: ForestSample, s: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel features, carriers, cell means and cell densities of one sample."""
    features = spec.pixel_features(sample.aux)
    carriers = mass_carriers(sample.valid, sample.allowed, s)
    return (
        features,
        carriers,
        cell_means(features, carriers, s),
        cell_density(sample.coarse, carriers, s),
    )


def _supervised_columns(
    features: np.ndarray, means: np.ndarray, density: np.ndarray, s: int
) -> np.ndarray:
    """``[F + 1 + F, H, W]``: pixel features, log1p cell density, cell means."""
    log_density = np.log1p(np.maximum(density, 0.0))
    return np.concatenate(
        [features, upsample_blocks(log_density, s)[None], upsample_blocks(means, s)]
    )


# --------------------------------------------------------------------------- the fitted forest
@dataclass
class FittedForest:
    """A fitted forest and what it needs to predict.

    Attributes:
        method: ``learned-dasymetric`` or ``supervised-forest``.
        spec: The feature spec.
        estimator: The fitted scikit-learn forest.
        scale: Fine pixels per coarse cell side.
        n_samples: Training rows (cells or pixels).
        fit_seconds: Wall time of the fit.
        seed: The seed of the fit.
    """

    method: str
    spec: FeatureSpec
    estimator: RandomForestRegressor
    scale: int
    n_samples: int
    fit_seconds: float
    seed: int

    @property
    def feature_names(self) -> list[str]:
        """The names of the estimator's columns."""
        names = self.spec.names
        if self.method == LEARNED_DASYMETRIC:
            return names
        return [*names, "cell log1p density", *(f"cell mean {n}" for n in names)]

    def importances(self) -> dict[str, float]:
        """Impurity importances summed per band (and the cell density), largest first."""
        totals: dict[str, float] = {}
        for name, value in zip(
            self.feature_names, self.estimator.feature_importances_, strict=True
        ):
            key = name.removeprefix("cell mean ")
            key = key if key == "cell log1p density" else self.spec.band_of(key)
            totals[key] = totals.get(key, 0.0) + float(value)
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))

    def describe(self) -> str:
        """One line: method, trees, rows, seed, fit time."""
        unit = "cells" if self.method == LEARNED_DASYMETRIC else "pixels"
        return (
            f"{self.method}: random forest, {self.estimator.n_estimators} trees, "
            f"min {self.estimator.min_samples_leaf} per leaf, fitted on {self.n_samples} "
            f"{unit} in {self.fit_seconds:.1f} s (seed {self.seed})"
        )

    def weights(self, sample: ForestSample, scale: int | None = None) -> np.ndarray:
        """The per-pixel weight ``[H, W]`` (0 where the sample is not valid).

        Args:
            sample: The tile.
            scale: Fine pixels per cell side of ``sample.coarse``; default the forest's own (a
                coarser one when the coarse field was aggregated further, as in the Wald
                protocol).
        """
        s = self.scale if scale is None else scale
        features, carriers, means, density = _context(self.spec, sample, s)
        if self.method == LEARNED_DASYMETRIC:
            columns = features
        else:
            columns = _supervised_columns(features, means, density, s)
        out = np.zeros(sample.valid.shape, dtype=np.float64)
        rows = sample.valid
        if rows.any():
            predicted = self.estimator.predict(columns[:, rows].T)
            if self.method == LEARNED_DASYMETRIC:
                predicted = np.exp(np.minimum(predicted, 700.0))
            out[rows] = np.maximum(predicted, 0.0)
        return out

    def allocate(self, sample: ForestSample, scale: int | None = None) -> np.ndarray:
        """The fine map: each cell's mass shared in proportion to :meth:`weights` (``scale`` as
        there)."""
        s = self.scale if scale is None else scale
        return allocate(sample.coarse, s, sample.valid, self.weights(sample, s), sample.allowed)


# --------------------------------------------------------------------------- fitting
def _estimator(seed: int, threads: int) -> RandomForestRegressor:
    return RandomForestRegressor(
        n_estimators=TREES,
        min_samples_leaf=MIN_SAMPLES_LEAF,
        max_features=MAX_FEATURES,
        random_state=seed,
        n_jobs=threads,
    )


def _dasymetric_rows(
    spec: FeatureSpec, samples: Iterable[ForestSample], s: int
) -> tuple[np.ndarray, np.ndarray]:
    rows, labels = [], []
    for sample in samples:
        _, _, means, density = _context(spec, sample, s)
        usable = np.isfinite(density) & (density > 0)
        if usable.any():
            rows.append(means[:, usable].T)
            labels.append(np.log(density[usable]))
    if not rows:
        return np.empty((0, len(spec.names))), np.empty(0)
    return np.concatenate(rows), np.concatenate(labels)


def _supervised_rows(
    spec: FeatureSpec, samples: Iterable[ForestSample], s: int, per_sample: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for sample in samples:
        if sample.truth is None:
            continue
        features, carriers, means, density = _context(spec, sample, s)
        usable = sample.valid & np.isfinite(sample.truth) & upsample_blocks(np.isfinite(density), s)
        flat = np.flatnonzero(usable)
        if flat.size == 0:
            continue
        chosen = np.sort(rng.choice(flat, size=min(per_sample, flat.size), replace=False))
        columns = _supervised_columns(features, means, density, s)
        rows.append(columns.reshape(columns.shape[0], -1)[:, chosen].T)
        labels.append(sample.truth.reshape(-1)[chosen])
    if not rows:
        return np.empty((0, 2 * len(spec.names) + 1)), np.empty(0)
    return np.concatenate(rows), np.concatenate(labels)


def fit_forest(
    method: str,
    spec: FeatureSpec,
    samples: Iterable[ForestSample],
    scale: int,
    *,
    per_sample: int = 1000,
    seed: int = 0,
    threads: int = -1,
) -> FittedForest | None:
    """Fit one of the two forests on training samples (tiles x years), read one at a time.

    Args:
        method: ``learned-dasymetric`` (coarse cells only, no truth read) or
            ``supervised-forest`` (sampled pixels with fine truth).
        spec: The feature spec.
        samples: The training tiles of every training year (an iterable: each is read once).
        scale: Fine pixels per coarse cell side.
        per_sample: ``supervised-forest``: training pixels drawn from each sample with truth.
        seed: Seed of the pixel and cell sampling and of the forest.
        threads: Threads of the fit (-1: all cores); the forest does not depend on it. It
            predicts on one thread, so its predictions are the same bytes every time.

    Returns:
        The fitted forest, or None when there is nothing to learn from (no positive cell, or no
        fine truth for ``supervised-forest``).

    Raises:
        ValueError: ``method`` is unknown or ``per_sample`` is not positive.
    """
    if method not in FOREST_METHODS:
        raise ValueError(f"unknown forest method {method!r}; expected one of {FOREST_METHODS}")
    if per_sample < 1:
        raise ValueError(f"per_sample must be positive, got {per_sample}")
    start = time.perf_counter()
    if method == LEARNED_DASYMETRIC:
        x, y = _dasymetric_rows(spec, samples, scale)
        if len(y) > MAX_CELLS:
            keep = np.sort(np.random.default_rng(seed).choice(len(y), MAX_CELLS, replace=False))
            x, y = x[keep], y[keep]
    else:
        x, y = _supervised_rows(spec, samples, scale, per_sample, seed)
    if len(y) < 2:
        return None
    estimator = _estimator(seed, threads).fit(x, y)
    # Trees are built independently from their seeds, so the fit does not depend on the threads;
    # a parallel prediction sums the trees in a varying order, so it predicts on one thread to
    # give the same bytes every time.
    estimator.set_params(n_jobs=1)
    return FittedForest(
        method=method,
        spec=spec,
        estimator=estimator,
        scale=scale,
        n_samples=len(y),
        fit_seconds=time.perf_counter() - start,
        seed=seed,
    )
