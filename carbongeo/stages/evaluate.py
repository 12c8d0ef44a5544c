"""Evaluation: the model's mosaicked prediction and the baselines against the fine truth.

This module reads the tiles, coarse inputs and predictions and wires them together: for the
evaluated split (and the held-out year, when the split has one) it pools the metrics of the model
and of every baseline over every evaluated pixel of every tile and year, then writes the reports.
The metrics are defined in :mod:`carbongeo.evaluation.metrics`, the baselines in
:mod:`carbongeo.evaluation.baselines` and the report in :mod:`carbongeo.evaluation.report`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carbongeo.config import PipelineConfig
from carbongeo.errors import CarbongeoError
from carbongeo.evaluation.baselines import method_names, run_baselines
from carbongeo.evaluation.metrics import MetricPool, log1p_clipped
from carbongeo.evaluation.report import MODEL, EvaluationReport, SectionResult
from carbongeo.grid import Window
from carbongeo.ops.blocks import block_sum
from carbongeo.ops.domain import aux_domain
from carbongeo.ops.mass import unplaced_mass

__all__ = ["TileData", "TileStore", "evaluate"]

WATER_BAND = "water"
EVALUATION_MD = "evaluation.md"
EVALUATION_JSON = "evaluation.json"


# =========================================================================== tile access
@dataclass(frozen=True)
class TileData:
    """Everything the evaluation needs on one tile of one year.

    Attributes:
        tile_id: Tile id.
        window: The tile's window on the padded grid.
        truth: ``[ts, ts]`` float64 truth (NaN nodata and outside the scene).
        coarse: ``[ts / s, ts / s]`` float64 coarse input.
        inside: ``[ts, ts]`` bool, pixels inside the unpadded scene.
        domain: ``[ts, ts]`` bool, pixels where a baseline may place mass (inside the scene and
            every aux band valid).
        aux: ``[C, ts, ts]`` float64 aux bands in raw units (log1p undone).
        bands: Aux band names.
        prediction: ``[ts, ts]`` float64 model prediction (NaN nodata), or None.
    """

    tile_id: int
    window: Window
    truth: np.ndarray
    coarse: np.ndarray
    inside: np.ndarray
    domain: np.ndarray
    aux: np.ndarray
    bands: tuple[str, ...]
    prediction: np.ndarray | None

    def band(self, name: str) -> np.ndarray:
        """Raw values of aux band ``name``."""
        return self.aux[self.bands.index(name)]

    @property
    def water(self) -> np.ndarray | None:
        """Bool mask where a band named ``water`` is 1, or None without such a band."""
        if WATER_BAND not in self.bands:
            return None
        return np.isclose(self.band(WATER_BAND), 1.0)


class TileStore:
    """Read tiles, coarse inputs and predictions of a tiled pipeline (memory-mapped).

    Args:
        config: The pipeline.

    Raises:
        CarbongeoError: If the tile index is missing.
    """

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        from carbongeo.stages.tile import load_index

        self.tiles_dir = config.tiles_dir
        self.index = load_index(self.tiles_dir)
        self.grid = self.index.grid
        self.scale = self.grid.scale
        self.tile_size = self.grid.tile_size
        self.bands = tuple(self.index.bands)
        # The transform the cubes were made with (the index), else the config's.
        transforms = {a.name: a.transform for a in config.aux}
        transforms |= {a["name"]: a["transform"] for a in self.index.aux if "transform" in a}
        self.log1p_bands = [transforms.get(b) == "log1p" for b in self.bands]
        self._positions = {t.id: i for i, t in enumerate(self.index.tiles)}
        self._cubes: dict[int, dict[str, np.ndarray | None]] = {}

    @property
    def tile_ids(self) -> list[int]:
        """Every tile id in the index."""
        return list(self._positions)

    def prediction_path(self, year: int, suffix: str = "npy") -> Path:
        """``predictions/Pred_<year>.<suffix>``."""
        return self.config.predictions_dir / f"Pred_{year}.{suffix}"

    def has_prediction(self, year: int) -> bool:
        """True when the ``.npy`` prediction of ``year`` exists."""
        return self.prediction_path(year).is_file()

    def _year(self, year: int, *, with_prediction: bool) -> dict[str, np.ndarray | None]:
        cached = self._cubes.get(year)
        if cached is not None and (cached["pred"] is not None or not with_prediction):
            return cached
        cubes: dict[str, np.ndarray | None] = {}
        for key in ("X", "Y"):
            path = self.tiles_dir / f"{key}_{year}.npy"
            if not path.is_file():
                raise CarbongeoError(
                    f"{path} not found; run: carbongeo tile --config {self.config.path} "
                    f"--years {year}"
                )
            cubes[key] = np.load(path, mmap_mode="r")
        cubes["C"] = None
        if self.index.has_coarse:
            coarse_path = self.tiles_dir / f"C_{year}.npy"
            if not coarse_path.is_file():
                raise CarbongeoError(
                    f"{coarse_path} not found; run: carbongeo tile --config {self.config.path} "
                    f"--years {year}"
                )
            cubes["C"] = np.load(coarse_path, mmap_mode="r")
        cubes["pred"] = None
        if with_prediction:
            cubes["pred"] = self._load_prediction(year)
        self._cubes[year] = cubes
        return cubes

    def _load_prediction(self, year: int) -> np.ndarray:
        path = self.prediction_path(year)
        if not path.is_file():
            raise CarbongeoError(
                f"{path} not found; run: carbongeo mosaic --config {self.config.path} "
                f"--years {year}"
            )
        pred = np.load(path, mmap_mode="r")
        if pred.shape != (self.grid.height, self.grid.width):
            raise CarbongeoError(
                f"{path} has shape {pred.shape} but the grid is "
                f"{self.grid.height} x {self.grid.width}; rerun: carbongeo mosaic "
                f"--config {self.config.path} --years {year}"
            )
        return pred

    def truth_total(self, year: int, tile_id: int) -> float:
        """Sum of the valid truth of one tile."""
        cube = self._year(year, with_prediction=False)["Y"]
        assert cube is not None
        return float(np.nansum(cube[self._position(tile_id), 0], dtype=np.float64))

    def truth_range(self, years: Sequence[int], tile_ids: Sequence[int]) -> tuple[float, float]:
        """Linear and log1p truth range (max - min) over the given tiles and years."""
        lo, hi = math.inf, -math.inf
        for year in years:
            cube = self._year(year, with_prediction=False)["Y"]
            assert cube is not None
            for tile_id in tile_ids:
                values = np.asarray(cube[self._position(tile_id), 0], dtype=np.float64)
                finite = values[np.isfinite(values)]
                if finite.size:
                    lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        if hi < lo:
            return 0.0, 0.0
        return hi - lo, float(log1p_clipped(np.array(hi)) - log1p_clipped(np.array(lo)))

    def _position(self, tile_id: int) -> int:
        if tile_id not in self._positions:
            raise CarbongeoError(
                f"tile {tile_id} is not in the tile index; the split is older than the tiles, "
                f"rerun: carbongeo split --config {self.config.path}"
            )
        return self._positions[tile_id]

    def load(self, year: int, tile_id: int, *, with_prediction: bool = True) -> TileData:
        """The truth, coarse input, aux and prediction of one tile in one year."""
        cubes = self._year(year, with_prediction=with_prediction)
        position = self._position(tile_id)
        record = self.index.tiles[position]
        ts, s = self.tile_size, self.scale
        window = Window(record.row, record.col, ts, ts)
        inner = window.clip(self.grid.height, self.grid.width)
        inside = np.zeros((ts, ts), dtype=bool)
        inside[: inner.height, : inner.width] = True

        y_cube, x_cube, c_cube = cubes["Y"], cubes["X"], cubes["C"]
        assert y_cube is not None and x_cube is not None
        truth = np.where(inside, np.asarray(y_cube[position, 0], dtype=np.float64), np.nan)
        aux = np.asarray(x_cube[position], dtype=np.float64).copy()
        for channel, is_log in enumerate(self.log1p_bands):
            if is_log:
                aux[channel] = np.expm1(aux[channel])
        domain = inside & aux_domain(aux)
        if c_cube is not None:
            coarse = np.asarray(c_cube[position, 0], dtype=np.float64)
        else:
            coarse = block_sum(np.where(inside, truth, np.nan), s, nodata_as_zero=True)

        prediction = None
        if cubes["pred"] is not None:
            prediction = np.full((ts, ts), np.nan)
            rows, cols = inner.slices()
            prediction[: inner.height, : inner.width] = cubes["pred"][rows, cols]
        return TileData(
            tile_id=tile_id,
            window=window,
            truth=truth,
            coarse=coarse,
            inside=inside,
            domain=domain,
            aux=aux,
            bands=self.bands,
            prediction=prediction,
        )

    def proxy_bands(self) -> list[str]:
        """The dasymetric proxy bands of the config that exist in the tiles."""
        return [b for b in self.config.dasymetric_bands() if b in self.bands]

    def baselines(
        self, tile: TileData, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The baselines on one tile (all of them, or only ``names``)."""
        proxies = {b: tile.band(b) for b in self.proxy_bands()}
        if names is not None:
            wanted = {n.split(":", 1)[1] for n in names if n.startswith("dasymetric:")}
            proxies = {b: p for b, p in proxies.items() if b in wanted}
        results = run_baselines(tile.coarse, self.scale, tile.domain, proxies)
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
        CarbongeoError: Missing tiles, split or predictions (naming the command to run).
    """
    from carbongeo.stages.split import load_split

    subset = split if split is not None else config.evaluate.split
    if subset not in ("train", "val", "test"):
        raise CarbongeoError(f"--split: {subset!r} is not one of train, val, test")
    store = TileStore(config)
    tile_split = load_split(config.tiles_dir)
    years = _years_with_predictions(config, store, years)
    holdout = tile_split.holdout_year
    sections: list[SectionResult] = []
    main_years = [y for y in years if y != holdout]
    if main_years:
        ids = tile_split.ids(subset)
        if not ids:
            raise CarbongeoError(
                f"split.json has no {subset} tiles; change split.ratios and rerun: "
                f"carbongeo split --config {config.path}"
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
        units=config.target.units or "t / cell",
        scale=store.scale,
        holdout_year=holdout,
        markdown_path=config.reports_dir / EVALUATION_MD,
        json_path=config.reports_dir / EVALUATION_JSON,
    )
    _write_reports(report)
    return report


def _years_with_predictions(
    config: PipelineConfig, store: TileStore, years: Sequence[int] | None
) -> list[int]:
    if years is not None:
        missing = [y for y in years if not store.has_prediction(y)]
        if missing:
            raise CarbongeoError(
                f"no prediction for {missing[0]} ({store.prediction_path(missing[0])}); run: "
                f"carbongeo mosaic --config {config.path} --years {_year_range(missing)}"
            )
        return sorted(years)
    found = [y for y in config.years if store.has_prediction(y)]
    if not found:
        raise CarbongeoError(
            f"no predictions in {config.predictions_dir}; run: carbongeo mosaic "
            f"--config {config.path} --years {_year_range(config.years)}"
        )
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
    methods = [MODEL, *method_names(store.proxy_bands())]
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
                assert tile.prediction is not None
                preds = {MODEL: tile.prediction, **store.baselines(tile)}
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


def _write_reports(report: EvaluationReport) -> None:
    from carbongeo.io.atomic import write_json_atomic, write_text_atomic

    report.markdown_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(report.markdown_path, report.to_markdown())
    write_json_atomic(report.json_path, report.to_dict())
