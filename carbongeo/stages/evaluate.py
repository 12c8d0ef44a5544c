"""Evaluation: the model's mosaicked prediction and the baselines against the fine truth.

This module reads the tiles, coarse inputs and predictions and wires them together: for the
evaluated split (and the held-out year, when the split has one) it pools the metrics of the model
and of every baseline over every evaluated pixel of every tile and year, then writes the reports.
The metrics are defined in :mod:`carbongeo.evaluation.metrics`, the baselines in
:mod:`carbongeo.evaluation.baselines` and the report in :mod:`carbongeo.evaluation.report`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from carbongeo.config import PipelineConfig
from carbongeo.errors import ConfigError, ParameterError
from carbongeo.evaluation.baselines import method_names, run_baselines
from carbongeo.evaluation.metrics import MetricPool
from carbongeo.evaluation.report import MODEL, EvaluationReport, SectionResult
from carbongeo.ops.mass import unplaced_mass
from carbongeo.stages.freshness import check_prediction, check_split, check_tiles
from carbongeo.store.layout import missing_input
from carbongeo.store.predictions import require_prediction
from carbongeo.store.reports import write_evaluation
from carbongeo.store.split import load_split
from carbongeo.store.tiles import TileData, TileStore

__all__ = ["evaluate", "proxy_bands", "tile_baselines"]


# =========================================================================== baselines on a tile
def proxy_bands(store: TileStore) -> list[str]:
    """The dasymetric proxy bands of the config that exist in the tiles."""
    return [b for b in store.config.dasymetric_bands() if b in store.bands]


def tile_baselines(
    store: TileStore, tile: TileData, names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """The baselines on one tile (all of them, or only ``names``)."""
    proxies = {b: tile.band(b) for b in proxy_bands(store)}
    if names is not None:
        wanted = {n.split(":", 1)[1] for n in names if n.startswith("dasymetric:")}
        proxies = {b: p for b, p in proxies.items() if b in wanted}
    results = run_baselines(tile.coarse, store.scale, tile.domain, proxies)
    return results if names is None else {n: results[n] for n in names if n in results}


# =========================================================================== the command
def evaluate(
    config: PipelineConfig,
    *,
    years: Sequence[int] | None = None,
    split: str | None = None,
    progress: bool = True,
) -> EvaluationReport:
    """Evaluate the model's predictions and the baselines; write the reports.

    Args:
        config: The pipeline.
        years: Years to evaluate; default: every config year with a prediction.
        split: Tile set (``train``, ``val`` or ``test``); default ``[evaluate] split``.
        progress: Show a progress bar over tiles.

    Returns:
        The report; ``reports/evaluation.md`` and ``reports/evaluation.json`` are written.

    Raises:
        ParameterError: ``split`` is not train, val or test.
        MissingRunFileError: Missing tiles, split or predictions (naming the command to run).
        ConfigError: The split has no tiles in the evaluated subset.
    """
    subset = split if split is not None else config.evaluate.split
    if subset not in ("train", "val", "test"):
        raise ParameterError(f"{subset!r} is not one of train, val, test", param="split")
    store = TileStore(config)
    check_tiles(config, store.index)
    tile_split = load_split(config.tiles_dir)
    check_split(config, tile_split)
    check_split(config, tile_split)
    years = _years_with_predictions(config, store, years)
    for year in years:
        check_prediction(config, config.layout.prediction_tif(year), year)
    holdout = tile_split.holdout_year
    sections: list[SectionResult] = []
    main_years = [y for y in years if y != holdout]
    if main_years:
        ids = tile_split.ids(subset)
        if not ids:
            raise ConfigError(
                f"{config.layout.tiles.split} has no {subset} tiles; change split.ratios and "
                f"rerun: carbongeo split --config {config.path}"
            )
        sections.append(_evaluate_section(store, subset, subset, main_years, ids, progress))
    if holdout is not None and holdout in years:
        sections.append(
            _evaluate_section(
                store, f"holdout {holdout}", "all", [holdout], store.tile_ids, progress
            )
        )
    report = EvaluationReport(
        sections=tuple(sections),
        units=config.emission_units or "t / cell",
        scale=store.scale,
        holdout_year=holdout,
        markdown_path=config.layout.evaluation_md,
        json_path=config.layout.evaluation_json,
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
    progress: bool,
) -> SectionResult:
    from tqdm.auto import tqdm

    data_range, log_range = store.truth_range(years, tile_ids)
    methods = [MODEL, *method_names(proxy_bands(store))]
    pool = MetricPool(methods, data_range=data_range, log_data_range=log_range)
    coarse_total = 0.0
    unplaced = 0.0
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
                preds = {MODEL: tile.prediction, **tile_baselines(store, tile)}
                pool.add(tile.truth, tile.coarse, s, tile.inside, preds, water=tile.water)
                coarse_total += float(np.nansum(tile.coarse))
                unplaced += unplaced_mass(tile.coarse, s, tile.domain)
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
    )
