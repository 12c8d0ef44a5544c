"""The forests fitted from a run's tiles: which tiles and years they learn from, read one by one.

The forests themselves (:mod:`carbongeo.evaluation.forest`) are pure computation on arrays; this
module feeds them from the store. Both learn from the training split's tiles (every tile when
there is no split yet): the learned-dasymetric forest from the coarse product of every tiled
year, the supervised forest from the fine truth of the years that have one. In a
coarse-supervised run the learned-dasymetric forest, which reads only the coarse product, learns
from every tile, as the model may.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from carbongeo.evaluation import forest as forest_module
from carbongeo.evaluation.forest import (
    LEARNED_DASYMETRIC,
    SUPERVISED_FOREST,
    FeatureSpec,
    FittedForest,
    ForestSample,
    fit_forest,
)
from carbongeo.ops.domain import aux_domain
from carbongeo.store.split import load_split
from carbongeo.store.tiles import TileData, TileStore, open_cube

__all__ = [
    "FOREST_DATA",
    "fit_run_forests",
    "fit_store_forest",
    "fit_tiles",
    "forest_id",
    "forest_predictor",
    "forest_sample",
    "training_tiles",
]

log = logging.getLogger(__name__)


def training_tiles(store: TileStore) -> tuple[list[int], list[int]]:
    """The tiles and years the network trains on, so the forests learn from the same.

    Returns:
        ``(tile_ids, years)``: the training split's tiles and every tiled year but the held-out
        one, or every tile and year when ``split.json`` does not exist yet.
    """
    years = sorted(int(y) for y in store.index.years)
    if not store.layout.tiles.split.is_file():
        return store.tile_ids, years
    split = load_split(store.tiles_dir)
    return list(split.train), [y for y in years if y != split.holdout_year]


def fit_tiles(store: TileStore, method: str) -> tuple[list[int], list[int]]:
    """The tiles and years a forest learns from by default.

    Those of :func:`training_tiles`, except for the learned-dasymetric forest of a
    coarse-supervised run: it reads only the coarse product, which exists everywhere, so it
    learns from every tile (and every year but the held-out one), as the model may.
    """
    tile_ids, years = training_tiles(store)
    if method == LEARNED_DASYMETRIC and store.config.supervision == "coarse":
        return store.tile_ids, years
    return tile_ids, years


def forest_sample(store: TileStore, tile: TileData) -> ForestSample:
    """One loaded tile as a :class:`ForestSample` (aux back in the transformed cube values)."""
    aux = tile.aux.copy()
    for channel, is_log in enumerate(store.log1p_bands):
        if is_log:
            aux[channel] = np.log1p(aux[channel])
    return ForestSample(
        aux=aux, coarse=tile.coarse, valid=tile.domain, allowed=tile.allowed, truth=tile.truth
    )


def _samples(store: TileStore, years: Sequence[int], tile_ids: Sequence[int]) -> Iterator:
    for year in years:
        for tile_id in tile_ids:
            yield forest_sample(store, store.load(year, tile_id, with_prediction=False))


def _feature_spec(store: TileStore, years: Sequence[int], tile_ids: Sequence[int]) -> FeatureSpec:
    categorical = [a.name for a in store.config.aux if a.kind == "categorical"]
    positions = [store.index.position(t) for t in tile_ids]
    values = (open_cube(store.tiles_dir, "X", year)[positions] for year in years)
    # Cubes are [N, C, h, w]: move the band axis first.
    return FeatureSpec.from_values(store.bands, categorical, (np.moveaxis(v, 1, 0) for v in values))


def fit_store_forest(
    store: TileStore,
    method: str,
    *,
    years: Sequence[int] | None = None,
    tile_ids: Sequence[int] | None = None,
    pixels: int = 100_000,
) -> FittedForest | None:
    """Fit a forest on the training tiles of a run.

    Args:
        store: The run's tiles.
        method: ``learned-dasymetric`` or ``supervised-forest``.
        years: Years to learn from; default those of :func:`fit_tiles` (with a target, for the
            supervised forest).
        tile_ids: Tiles to learn from; default those of :func:`fit_tiles`.
        pixels: ``supervised-forest``: training pixels in all, drawn evenly from every training
            tile of every year.

    Returns:
        The forest, or None when the tiles hold nothing it can learn from (then it is logged).
    """
    train_ids, train_years = fit_tiles(store, method)
    tile_ids = list(train_ids if tile_ids is None else tile_ids)
    years = list(train_years if years is None else years)
    if method == SUPERVISED_FOREST:
        years = [y for y in years if store.index.has_target(y)]
    if not tile_ids or not years:
        log.info("%s: no training tiles%s; left out", method, " with a target" * bool(tile_ids))
        return None
    spec = _feature_spec(store, years, tile_ids)
    per_sample = math.ceil(pixels / (len(years) * len(tile_ids)))
    forest = fit_forest(
        method,
        spec,
        _samples(store, years, tile_ids),
        store.scale,
        per_sample=per_sample,
        seed=store.config.train.seed,
    )
    if forest is None:
        what = "positive coarse cells" if method == LEARNED_DASYMETRIC else "fine truth"
        log.info("%s: the training tiles have no %s; left out", method, what)
    else:
        log.info("%s", forest.describe())
    return forest


def fit_run_forests(store: TileStore) -> dict[str, FittedForest]:
    """The forests of an evaluation: learned dasymetric, and the supervised forest when the
    training tiles have a fine target (fitted on ``[evaluate] forest_pixels`` pixels)."""
    forests: dict[str, FittedForest] = {}
    learned = fit_store_forest(store, LEARNED_DASYMETRIC)
    if learned is not None:
        forests[LEARNED_DASYMETRIC] = learned
    supervised = fit_store_forest(
        store, SUPERVISED_FOREST, pixels=store.config.evaluate.forest_pixels
    )
    if supervised is not None:
        forests[SUPERVISED_FOREST] = supervised
    return forests


#: What each forest learned from, for the report.
FOREST_DATA: dict[str, str] = {
    LEARNED_DASYMETRIC: "the coarse product only (no fine truth): of the training tiles, or of "
    "every tile in a coarse-supervised run",
    SUPERVISED_FOREST: "the fine truth of the training tiles (sampled pixels)",
}


def forest_id(store: TileStore, method: str) -> str:
    """A short id of what a forest would be fitted from (tiles, years, seed, settings).

    The fit is deterministic, so two mosaics with the same id predict the same: a finished year
    is kept without fitting again.
    """
    tile_ids, years = fit_tiles(store, method)
    settings = (
        method,
        store.index.config_hash,
        tile_ids,
        years,
        store.config.train.seed,
        sorted(store.config.zero_classes().items()),
        (forest_module.TREES, forest_module.MIN_SAMPLES_LEAF, forest_module.MAX_FEATURES),
    )
    return hashlib.sha256(repr(settings).encode()).hexdigest()[:16]


def forest_predictor(
    forest: FittedForest,
) -> Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]:
    """The forest as a mosaic predictor: per-pixel weights of a batch of windows.

    The predictor takes the cube values ``[B, C, 1, h, w]`` (after the band transforms, NaN
    nodata), the coarse field ``[B, 1, 1, h/s, w/s]`` and the zero-class mask ``[B, h, w]`` (or
    None) and returns ``[B, h, w]`` weights; the mosaic shares each cell's mass by them.
    """

    def predict(aux: np.ndarray, coarse: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        out = np.zeros((aux.shape[0], *aux.shape[-2:]), dtype=np.float32)
        for i in range(aux.shape[0]):
            values = aux[i, :, aux.shape[2] // 2]
            sample = ForestSample(
                aux=values,
                coarse=coarse[i, 0, coarse.shape[2] // 2],
                valid=aux_domain(values),
                allowed=None if allowed is None else allowed[i],
            )
            out[i] = forest.weights(sample)
        return out

    return predict
