"""Evaluation: the model's mosaicked prediction and the baselines against the fine truth.

This module reads the tiles, coarse inputs and predictions and wires them together: for the
evaluated split (and the held-out year, when the split has one) it pools the metrics of the model
and of every baseline over every evaluated pixel of every tile and year, then writes the reports.
The baselines include the two forests, fitted once on the training tiles
(:mod:`carbongeo.stages.forests`). The metrics are defined in
:mod:`carbongeo.evaluation.metrics`, the baselines in :mod:`carbongeo.evaluation.baselines` and
:mod:`carbongeo.evaluation.forest`, and the report in :mod:`carbongeo.evaluation.report`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from carbongeo.config import PipelineConfig
from carbongeo.errors import CheckpointError, ConfigError, ParameterError
from carbongeo.evaluation.baselines import method_names, run_baselines
from carbongeo.evaluation.forest import FittedForest
from carbongeo.evaluation.metrics import MetricPool
from carbongeo.evaluation.report import MODEL, EvaluationReport, SectionResult
from carbongeo.ops.blocks import block_sum, upsample_blocks
from carbongeo.ops.mass import allocate, cell_totals, mass_on_masked, reproject_mass, unplaced_mass
from carbongeo.stages.forests import FOREST_DATA, fit_run_forests, forest_sample
from carbongeo.stages.freshness import (
    check_checkpoint,
    check_prediction,
    check_split,
    check_tiles,
)
from carbongeo.store.checkpoint import Checkpoint
from carbongeo.store.layout import missing_input
from carbongeo.store.predictions import file_sha256, prediction_tags, require_prediction
from carbongeo.store.reports import write_evaluation
from carbongeo.store.split import load_split
from carbongeo.store.tiles import TileData, TileStore

__all__ = ["evaluate", "proxy_bands", "tile_baselines"]


# =========================================================================== baselines on a tile
def proxy_bands(store: TileStore) -> list[str]:
    """The dasymetric proxy bands of the config that exist in the tiles."""
    return [b for b in store.config.dasymetric_bands() if b in store.bands]


def tile_baselines(
    store: TileStore,
    tile: TileData,
    names: Sequence[str] | None = None,
    forests: Mapping[str, FittedForest] | None = None,
    seconds: dict[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """The baselines on one tile (all of them, or only ``names``), the forests included.

    Args:
        store: The run's tiles.
        tile: The loaded tile.
        names: The baselines wanted; default all.
        forests: Fitted forests by method name, run like the other baselines.
        seconds: When given, each forest's prediction time is added to ``seconds[method]``.
    """
    proxies = {b: tile.band(b) for b in proxy_bands(store)}
    if names is not None:
        wanted = {n.split(":", 1)[1] for n in names if n.startswith("dasymetric:")}
        proxies = {b: p for b, p in proxies.items() if b in wanted}
    results = run_baselines(tile.coarse, store.scale, tile.domain, proxies, tile.allowed)
    for method, forest in (forests or {}).items():
        if names is None or method in names:
            start = time.perf_counter()
            results[method] = forest.allocate(forest_sample(store, tile))
            if seconds is not None:
                seconds[method] = seconds.get(method, 0.0) + time.perf_counter() - start
    return results if names is None else {n: results[n] for n in names if n in results}


# =========================================================================== the command
def evaluate(
    config: PipelineConfig,
    *,
    years: Sequence[int] | None = None,
    split: str | None = None,
    progress: bool = True,
    compare: Mapping[str, PipelineConfig] | None = None,
    checkpoint: Path | None = None,
) -> EvaluationReport:
    """Evaluate the model's predictions and the baselines; write the reports.

    Args:
        config: The pipeline.
        years: Years to evaluate; default: every config year with a prediction.
        split: Tile set (``train``, ``val``, ``test``, or ``all``: every tile of the scene, fair
            only where the model never saw the fine truth); default ``[evaluate] split``.
        progress: Show a progress bar over tiles.
        compare: Other trained runs on the same grid and tiles (e.g. the same world trained with
            coarse supervision), by the name their model gets in the tables: their predictions
            and checkpoints are scored on this run's tiles next to this run's model.
        checkpoint: The checkpoint the predictions were made with when it is not the workdir's
            (``mosaic --checkpoint``, e.g. a model trained on another region): its network is
            scored in the coarse-level tables and its supervision named in the report. Its aux
            bands and scale must match the tiles, and it must be the model that made the
            predictions.

    Returns:
        The report; ``reports/evaluation.md`` and ``reports/evaluation.json`` are written.

    Raises:
        ParameterError: ``split`` is not train, val, test or all.
        MissingRunFileError: Missing tiles, split or predictions (naming the command to run).
        ConfigError: The split has no tiles in the evaluated subset.
        CheckpointError: ``checkpoint`` is missing, does not fit the tiles, or did not make the
            predictions.
    """
    subset = split if split is not None else config.evaluate.split
    if subset not in ("train", "val", "test", "all"):
        raise ParameterError(f"{subset!r} is not one of train, val, test, all", param="split")
    store = TileStore(config)
    check_tiles(config, store.index)
    tile_split = load_split(config.tiles_dir)
    check_split(config, tile_split)
    tiled = [y for y in config.years if y in store.index.years]
    wald_years = sorted(years) if years is not None else tiled
    with_target = any(store.index.has_target(y) for y in wald_years)
    years = _years_with_predictions(config, store, years) if with_target else []
    for year in years:
        check_prediction(config, config.layout.prediction_tif(year), year)
    holdout = tile_split.holdout_year
    ids = store.tile_ids if subset == "all" else tile_split.ids(subset)
    if not ids:
        raise ConfigError(
            f"{config.layout.tiles.split} has no {subset} tiles; change split.ratios and "
            f"rerun: carbongeo split --config {config.path}"
        )
    network = (
        _load_network(config)
        if checkpoint is None
        else _given_network(config, store, years, checkpoint)
    )
    forests = fit_run_forests(store)
    others = {name: _Other(other, store) for name, other in (compare or {}).items()}
    predict_seconds: dict[str, float] = {}
    sections: list[SectionResult] = []
    main_years = [y for y in years if y != holdout]
    if main_years:
        sections.append(
            _evaluate_section(
                store, subset, subset, main_years, ids, forests, predict_seconds, progress, others
            )
        )
    coarse_years = [y for y in wald_years if y != holdout]
    for factor in _wald_factors(config, store) if coarse_years else []:
        sections.append(
            _wald_section(
                store, subset, coarse_years, ids, forests, network, factor, progress, others
            )
        )
    if holdout is not None and holdout in years:
        sections.append(
            _evaluate_section(
                store,
                f"holdout {holdout}",
                "all",
                [holdout],
                store.tile_ids,
                forests,
                predict_seconds,
                progress,
                others,
            )
        )
    report = EvaluationReport(
        sections=tuple(sections),
        model=_model_note(network, others),
        units=config.emission_units or "t / cell",
        scale=store.scale,
        holdout_year=holdout,
        markdown_path=config.layout.evaluation_md,
        json_path=config.layout.evaluation_json,
        forests={
            method: {
                "describe": forest.describe(),
                "data": FOREST_DATA[method],
                "samples": forest.n_samples,
                "fit_seconds": forest.fit_seconds,
                "predict_seconds": predict_seconds.get(method, 0.0),
                "importances": forest.importances(),
            }
            for method, forest in forests.items()
        },
    )
    write_evaluation(config.layout, report.to_markdown(), report.to_dict())
    return report


def _years_with_predictions(
    config: PipelineConfig, store: TileStore, years: Sequence[int] | None
) -> list[int]:
    if years is not None:
        for year in years:
            require_prediction(config.layout, year)
        return sorted(years)
    found = [y for y in config.years if store.has_prediction(y) and store.index.has_target(y)]
    if not found:
        first = store.prediction_path(config.years[0])
        raise missing_input(first, f"carbongeo mosaic --years {_year_range(config.years)}")
    return found


def _year_range(years: Sequence[int]) -> str:
    years = sorted(years)
    return str(years[0]) if len(years) == 1 else f"{years[0]}-{years[-1]}"


def _evaluate_section(
    store: TileStore,
    name: str,
    subset: str,
    years: Sequence[int],
    tile_ids: Sequence[int],
    forests: Mapping[str, FittedForest],
    predict_seconds: dict[str, float],
    progress: bool,
    others: Mapping[str, _Other],
) -> SectionResult:
    from tqdm.auto import tqdm

    data_range, log_range = store.truth_range(years, tile_ids)
    compared = [n for n, o in others.items() if all(o.store.has_prediction(y) for y in years)]
    # With a real product (not the truth's own sums) the oracle shows what mass conservation on
    # its cells allows: the true within-cell shares times the product.
    references = [ORACLE] if store.index.has_coarse else []
    methods = [MODEL, *compared, *method_names(proxy_bands(store)), *forests, *references]
    pool = MetricPool(methods, data_range=data_range, log_data_range=log_range)
    coarse_total = 0.0
    unplaced = 0.0
    on_masked = 0.0
    s = store.scale
    with tqdm(
        total=len(years) * len(tile_ids),
        desc=f"evaluate {name}",
        unit="tile",
        disable=not progress,
        leave=False,
    ) as bar:
        for year in years:
            for tile_id in tile_ids:
                tile = store.load(year, tile_id)
                assert tile.truth is not None and tile.prediction is not None
                baselines = tile_baselines(store, tile, forests=forests, seconds=predict_seconds)
                preds = {MODEL: tile.prediction, **baselines}
                for other in compared:
                    preds[other] = others[other].prediction(year, tile_id)
                if references:
                    preds[ORACLE] = allocate(tile.coarse, s, tile.domain, tile.truth, tile.allowed)
                pool.add(tile.truth, tile.coarse, s, tile.inside, preds, water=tile.water)
                coarse_total += float(np.nansum(tile.coarse))
                unplaced += unplaced_mass(tile.coarse, s, tile.domain)
                on_masked += mass_on_masked(tile.coarse, s, tile.domain, tile.allowed)
                bar.update()
    return SectionResult(
        name=name,
        split=subset,
        years=tuple(years),
        n_tiles=len(tile_ids),
        n_pixels=pool.n_pixels,
        metrics=pool.results(),
        data_range=data_range,
        coarse_total=coarse_total,
        unplaced_mass=unplaced,
        mass_on_masked=on_masked,
        models=(MODEL, *compared),
        references=tuple(references),
    )


#: The reference that reads the truth: the true within-cell shares times the coarse product.
ORACLE = "oracle"


# =========================================================================== the network
#: What the model learnt from, by supervision, for the report.
MODEL_DATA: dict[str, str] = {
    "fine": "fine supervision (the target, i.e. the fine truth, of the training tiles)",
    "coarse": "coarse supervision (the coarse product of the training tiles only, no fine truth)",
}


class _Network:
    """The run's trained network, run on one tile with any coarse input (the Wald tables)."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        from carbongeo.training.setup import model_from_checkpoint

        self.model = model_from_checkpoint(checkpoint)
        self.norm = checkpoint.normalization
        self.supervision = checkpoint.supervision

    def predict(
        self, store: TileStore, tile: TileData, year: int, factor: int, degraded: np.ndarray
    ) -> np.ndarray:
        """The fine map of ``tile`` from the product aggregated by ``factor`` (``degraded``),
        mass conserved on the aggregated cells over the tile's valid pixels (as the mosaic)."""
        import torch

        from carbongeo.stages.mosaic import input_years

        window = input_years(store.index, year, self.model.temporal)
        aux = np.stack([store.cube_aux(y, tile.tile_id) for y in window], axis=1)
        coarse = [
            degraded
            if y == year
            else cell_totals(store.load(y, tile.tile_id, with_prediction=False).coarse, factor)
            for y in window
        ]
        coarse_t = torch.from_numpy(np.nan_to_num(np.stack(coarse)[None, None]).astype(np.float32))
        aux_t = torch.from_numpy(self.norm.normalize_aux(aux.astype(np.float32))[None])
        allowed = None if tile.allowed is None else torch.from_numpy(tile.allowed[None, None])
        with torch.inference_mode():
            pred = self.model(aux_t, coarse_t, factor, allowed=allowed)[0, 0].double().numpy()
        side = factor * store.scale
        valid = tile.domain & upsample_blocks(np.isfinite(degraded), side)
        return reproject_mass(pred, valid, degraded, side, tile.allowed)


class _Other:
    """Another run's trained model, scored on this run's tiles (``compare``)."""

    def __init__(self, config: PipelineConfig, store: TileStore) -> None:
        self.store = TileStore(config)
        if self.store.grid != store.grid:
            raise ConfigError(
                f"{config.path}: its grid differs from {store.config.path}'s; a model is compared "
                "on the same grid and tiles"
            )
        self.network = _load_network(config)

    def prediction(self, year: int, tile_id: int) -> np.ndarray | None:
        """Its mosaicked prediction of one tile, or None without one for ``year``."""
        if not self.store.has_prediction(year):
            return None
        return self.store.load(year, tile_id).prediction


def _model_note(network: _Network | None, others: Mapping[str, _Other]) -> str:
    notes = [f"{MODEL}: {MODEL_DATA[network.supervision]}"] if network is not None else []
    for name, other in others.items():
        if other.network is not None:
            notes.append(f"{name}: {MODEL_DATA[other.network.supervision]}")
    return "; ".join(notes)


def _load_network(config: PipelineConfig) -> _Network | None:
    """The workdir's best checkpoint as a :class:`_Network`, or None before training."""
    from carbongeo.store.checkpoint import load_checkpoint

    path = config.layout.best_checkpoint
    if not path.is_file():
        return None
    state = load_checkpoint(path)
    check_checkpoint(config, state, path)
    return _Network(state)


def _given_network(
    config: PipelineConfig, store: TileStore, years: Sequence[int], checkpoint: Path
) -> _Network:
    """``checkpoint`` (from another run or region) as the network whose maps are evaluated:
    it must fit the tiles and be the model that made the predictions of ``years``."""
    from carbongeo.store.checkpoint import load_checkpoint

    path = Path(checkpoint)
    state = load_checkpoint(path)  # a missing file is one line naming 'carbongeo train'
    state.check_fits(store.index)
    model_id = file_sha256(path)[:16]
    for year in years:
        made_by = prediction_tags(config.layout, year).get("model_id")
        if made_by is not None and made_by != model_id:
            raise CheckpointError(
                f"{config.layout.prediction_tif(year)} was made by another model (model_id "
                f"{made_by}) than {path} ({model_id}); pass the checkpoint mosaic used, or "
                f"rerun: carbongeo mosaic --checkpoint {path} --overwrite"
            )
    return _Network(state)


# =========================================================================== coarse level (Wald)
# Wald's protocol (Wald, Ranchin & Mangolini 1997) scores a downscaler where no fine truth exists:
# the coarse product, aggregated by k into cells of k s pixels, is downscaled by every method with
# mass conserved on those cells; the fine map summed back to the product's s x s cells is compared
# with the real product. Placing mass well inside a k s cell is what gets the product's cells
# right, so the table ranks the methods without a single fine pixel of truth.
def _wald_factors(config: PipelineConfig, store: TileStore) -> list[int]:
    """The factors ``k`` of the coarse-level tables (``train.coarse_factors``) that divide the
    tiles' cells per side."""
    cells = store.tile_size // store.scale
    return [k for k in config.train.coarse_factors if k > 1 and cells % k == 0]


def _wald_section(
    store: TileStore,
    subset: str,
    years: Sequence[int],
    tile_ids: Sequence[int],
    forests: Mapping[str, FittedForest],
    network: _Network | None,
    factor: int,
    progress: bool,
    others: Mapping[str, _Other],
) -> SectionResult:
    """Every method on the product aggregated by ``factor``, scored on the product's cells."""
    from tqdm.auto import tqdm

    s = store.scale
    models = {MODEL: network} if network is not None else {}
    models |= {n: o.network for n, o in others.items() if o.network is not None}
    names = [*models, *method_names(proxy_bands(store))]
    names += list(forests)
    tiles = [(year, tile_id) for year in years for tile_id in tile_ids]
    data_range, log_range = store.coarse_range(years, tile_ids)
    pool = MetricPool(names, data_range=data_range, log_data_range=log_range)
    coarse_total = 0.0
    bar = tqdm(tiles, desc=f"evaluate coarse level k={factor}", unit="tile", disable=not progress)
    for year, tile_id in bar:
        tile = store.load(year, tile_id, with_prediction=False)
        proxies = {b: tile.band(b) for b in proxy_bands(store)}
        product = tile.coarse
        degraded = cell_totals(product, factor)
        side = factor * s
        fine = run_baselines(degraded, side, tile.domain, proxies, tile.allowed)
        sample = dataclasses.replace(forest_sample(store, tile), coarse=degraded)
        for name, forest in forests.items():
            fine[name] = forest.allocate(sample, side)
        for name, model in models.items():
            fine[name] = model.predict(store, tile, year, factor, degraded)
        cells = {name: cell_totals(field, s) for name, field in fine.items()}
        evaluated = block_sum(tile.domain, s) > 0
        pool.add(product, degraded, factor, evaluated, cells)
        coarse_total += float(np.nansum(tile.coarse))
    return SectionResult(
        name=f"coarse level, k = {factor}: {subset}",
        split=subset,
        years=tuple(years),
        n_tiles=len(tile_ids),
        n_pixels=pool.n_pixels,
        metrics=pool.results(),
        data_range=data_range,
        coarse_total=coarse_total,
        unplaced_mass=0.0,
        factor=factor,
        models=tuple(models),
    )
