"""The ``evaluate`` command on a tiny tiled run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from carbongeo.config import PipelineConfig, parse_config
from carbongeo.errors import CarbongeoError, ParameterError
from carbongeo.evaluation.report import EvaluationReport
from carbongeo.grid import Grid
from carbongeo.ops.blocks import block_sum
from carbongeo.stages.evaluate import evaluate
from carbongeo.store.tiles import TileIndex, TileRecord, TileStore, write_index

TS, S = 16, 4
YEARS = (2020, 2021)
BANDS = ("ntl", "population", "water")
GRID = Grid("EPSG:32650", Affine(1000.0, 0, 300000.0, 0, -1000.0, 4000000.0), 28, 40, TS, S)
SPLIT = {"train": [0, 1, 2], "val": [3], "test": [4, 5]}


def make_run(
    tmp_path: Path,
    *,
    holdout_year: int | None = None,
    with_coarse: bool = False,
    predictions: bool = True,
    split: bool = True,
    zero_water: bool = False,
) -> PipelineConfig:
    """A 28 x 40 scene cut into six 16 px tiles (the last row and column partly outside)."""
    raw = {
        "workdir": "run",
        "years": f"{YEARS[0]}-{YEARS[-1]}",
        "grid": {"tile_size": TS, "scale": S},
        "mosaic": {"overlap": 4},
        "target": {"path": "co2_{year}.tif", "units": "t CO2"},
        "aux": [
            {"name": "ntl", "path": "ntl_{year}.tif", "transform": "log1p"},
            {"name": "population", "path": "pop.tif", "kind": "extensive"},
            {"name": "water", "path": "water.tif", "kind": "categorical"}
            | ({"zero_classes": [1]} if zero_water else {}),
        ],
        "evaluate": {"forest_pixels": 3000},
    }
    if with_coarse:
        raw["coarse"] = {"path": "coarse_{year}.tif"}
    config = parse_config(raw, tmp_path)
    tiles_dir = config.tiles_dir
    tiles_dir.mkdir(parents=True)
    rows, cols = GRID.padded_shape
    rng = np.random.default_rng(0)
    water = np.zeros((GRID.height, GRID.width))
    water[:, :3] = 1.0
    population = rng.gamma(1.0, 50.0, water.shape)
    for k, year in enumerate(YEARS):
        truth = rng.gamma(0.4, 20.0 + 5 * k, water.shape) * (1 + population / 50)
        truth[water == 1] = 0.0
        truth[20:24, 10:14] = np.nan  # nodata inside the scene
        ntl = np.log1p(truth + rng.gamma(1.0, 2.0, truth.shape))
        ntl[np.isnan(ntl)] = 0.0
        aux = np.full((len(BANDS), rows, cols), np.nan)
        aux[:, : GRID.height, : GRID.width] = [ntl, population, water]
        target = np.full((rows, cols), np.nan)
        target[: GRID.height, : GRID.width] = truth
        x_cube = np.stack([aux[:, t.row : t.row + TS, t.col : t.col + TS] for t in GRID.tiles()])
        y_cube = np.stack(
            [target[None, t.row : t.row + TS, t.col : t.col + TS] for t in GRID.tiles()]
        )
        np.save(tiles_dir / f"X_{year}.npy", x_cube.astype(np.float32))
        np.save(tiles_dir / f"Y_{year}.npy", y_cube.astype(np.float32))
        if with_coarse:
            # A "real" coarse product that is not the aggregate of the truth.
            c_cube = block_sum_cube(y_cube) * rng.uniform(
                0.5, 1.5, (len(y_cube), 1, TS // S, TS // S)
            )
            np.save(tiles_dir / f"C_{year}.npy", c_cube.astype(np.float32))
        if predictions:
            pred = truth * rng.uniform(0.7, 1.3, truth.shape)
            config.predictions_dir.mkdir(parents=True, exist_ok=True)
            np.save(config.predictions_dir / f"Pred_{year}.npy", pred.astype(np.float32))
    write_run_index(tiles_dir, config, YEARS, has_coarse=with_coarse)
    if split:
        (tiles_dir / "split.json").write_text(json.dumps({**SPLIT, "holdout_year": holdout_year}))
    return config


def write_run_index(
    tiles_dir: Path, config: PipelineConfig, years: tuple[int, ...], *, has_coarse: bool
) -> None:
    index = TileIndex(
        grid=GRID,
        years=list(years),
        bands=config.aux_names,
        aux=[{"name": a.name, "kind": a.kind, "transform": a.transform} for a in config.aux],
        target={"units": config.target.units, "kind": "extensive"},
        has_coarse=has_coarse,
        tiles=[TileRecord(t.id, t.row, t.col, {y: 1.0 for y in years}) for t in GRID.tiles()],
    )
    write_index(tiles_dir, index)


def block_sum_cube(cube: np.ndarray) -> np.ndarray:
    return np.stack([block_sum(tile[0], S, nodata_as_zero=True)[None] for tile in cube])


# --------------------------------------------------------------------------- the command
def test_evaluate_writes_both_reports(tmp_path: Path) -> None:
    config = make_run(tmp_path)
    report = evaluate(config, progress=False)
    assert isinstance(report, EvaluationReport)
    methods = {"model", "uniform", "bicubic", "dasymetric:ntl", "dasymetric:population"}
    methods |= {"learned-dasymetric", "supervised-forest"}
    data = json.loads(report.json_path.read_text())
    section = data["sections"][0]
    assert set(section["methods"]) == methods
    assert section["split"] == "test" and section["tiles"] == 2
    assert section["years"] == list(YEARS)
    assert data == report.to_dict()
    md = report.markdown_path.read_text()
    for name in methods - {"model"}:
        assert f"| {name}" in md
    assert "| **model** |" in md and "(best baseline)" in md and "Verdict: model MAE" in md
    assert "MAE (t CO2)" in md
    # Rows are sorted by MAE.
    maes = [section["methods"][m]["mae"] for m in section["ranking"]]
    assert maes == sorted(maes)
    assert section["best_baseline"] == next(m for m in section["ranking"] if m != "model")
    # Baselines conserve the (ideal) coarse input; the water band is used.
    for name in methods - {"model"}:
        assert section["methods"][name]["mass_err_max"] < 1e-9
        assert "mass_on_water" in section["methods"][name]


def test_evaluate_pools_pixels_over_tiles_and_years(tmp_path: Path) -> None:
    config = make_run(tmp_path)
    section = evaluate(config, progress=False).sections[0]
    abs_err, count = 0.0, 0
    for year in YEARS:
        y_cube = np.load(config.tiles_dir / f"Y_{year}.npy")
        pred = np.load(config.predictions_dir / f"Pred_{year}.npy")
        for tile in (t for t in GRID.tiles() if t.id in SPLIT["test"]):
            window = GRID.tile_valid_window(tile)
            truth = y_cube[tile.id, 0, : window.height, : window.width].astype(np.float64)
            p = pred[window.slices()].astype(np.float64)
            ok = np.isfinite(truth)
            abs_err += np.abs(p[ok] - truth[ok]).sum()
            count += int(ok.sum())
    assert section.n_pixels == count
    assert section.metrics["model"]["mae"] == pytest.approx(abs_err / count, rel=1e-6)


def test_evaluate_reports_the_holdout_year_on_all_tiles(tmp_path: Path) -> None:
    config = make_run(tmp_path, holdout_year=2021)
    report = evaluate(config, progress=False)
    assert [s.name for s in report.sections] == [
        "test",
        "coarse level, k = 2: test",
        "coarse level, k = 4: test",
        "holdout 2021",
    ]
    assert report.sections[0].years == (2020,)
    assert report.sections[-1].n_tiles == len(GRID.tiles()) and report.sections[-1].split == "all"
    assert report.holdout_year == 2021
    assert "## holdout 2021" in report.markdown_path.read_text()


def test_evaluate_uses_the_real_coarse_product(tmp_path: Path) -> None:
    config = make_run(tmp_path, with_coarse=True)
    section = evaluate(config, years=[2020], split="val", progress=False).sections[0]
    # The oracle (true shares times the product) is shown but is never the best baseline.
    assert section.references == ("oracle",) and section.best_baseline != "oracle"
    assert section.metrics["oracle"]["mass_err_max"] < 1e-9
    assert section.metrics["oracle"]["mae"] <= section.metrics["uniform"]["mae"]
    assert section.split == "val" and section.years == (2020,)
    # Baselines conserve the real coarse input; the prediction (made from the truth) does not.
    assert section.metrics["uniform"]["mass_err_max"] < 1e-9
    assert section.metrics["model"]["mass_err_max"] > 0.01


def test_missing_predictions_say_to_run_mosaic(tmp_path: Path) -> None:
    config = make_run(tmp_path, predictions=False)
    with pytest.raises(CarbongeoError, match="carbongeo mosaic .*--years 2020-2021"):
        evaluate(config, progress=False)


def test_missing_split_says_to_run_split(tmp_path: Path) -> None:
    config = make_run(tmp_path, split=False)
    with pytest.raises(CarbongeoError, match="carbongeo split"):
        evaluate(config, progress=False)


def test_unknown_split_is_an_error(tmp_path: Path) -> None:
    config = make_run(tmp_path)
    with pytest.raises(ParameterError, match="split: 'holdout' is not one of") as info:
        evaluate(config, split="holdout", progress=False)
    assert info.value.param == "split"


def test_the_forests_learn_only_from_the_training_tiles_and_are_described(tmp_path: Path) -> None:
    report = evaluate(make_run(tmp_path), progress=False)
    forests = report.to_dict()["forests"]
    assert set(forests) == {"learned-dasymetric", "supervised-forest"}
    learned, supervised = forests["learned-dasymetric"], forests["supervised-forest"]
    assert "no fine truth" in learned["data"] and "fine truth" in supervised["data"]
    # 3 training tiles of 16 x 16 px: 16 cells each, at most 2 years x 48 cells (positive ones).
    assert 0 < learned["samples"] <= 2 * 3 * 16
    assert supervised["samples"] <= 3000
    assert learned["fit_seconds"] > 0 and learned["predict_seconds"] > 0
    assert sum(learned["importances"].values()) == pytest.approx(1.0)
    assert "## Forests" in report.markdown_path.read_text()


def _paint_water(config: PipelineConfig, rows: slice, cols: slice) -> None:
    """Make ``rows x cols`` of every tile water (band 2) in every year."""
    for year in YEARS:
        path = config.tiles_dir / f"X_{year}.npy"
        cube = np.load(path)
        cube[:, 2, rows, cols] = 1.0
        np.save(path, cube)


def test_zero_classes_keep_every_method_off_water(tmp_path: Path) -> None:
    config = make_run(tmp_path, zero_water=True)
    _paint_water(config, slice(None), slice(0, 3))  # 3 of the 4 columns of the first cells
    section = evaluate(config, progress=False).to_dict()["sections"][0]
    for name, metrics in section["methods"].items():
        if name != "model":  # the fake prediction of this run ignores the mask
            assert metrics["mass_on_water"] == 0.0, name
            assert metrics["mass_err_max"] < 1e-9, name
    assert section["mass_on_masked"] == 0.0
    # Without the declaration the baselines put mass on water.
    plain_config = make_run(tmp_path / "plain")
    _paint_water(plain_config, slice(None), slice(0, 3))
    plain = evaluate(plain_config, progress=False).to_dict()["sections"][0]
    assert plain["methods"]["uniform"]["mass_on_water"] > 0.0


def test_a_cell_made_only_of_water_keeps_its_mass_and_is_counted(tmp_path: Path) -> None:
    config = make_run(tmp_path, zero_water=True, with_coarse=True)
    _paint_water(config, slice(0, 4), slice(0, 4))  # the first cell of every tile
    section = evaluate(config, progress=False).to_dict()["sections"][0]
    assert section["mass_on_masked"] > 0.0
    uniform = section["methods"]["uniform"]
    assert uniform["mass_err_max"] < 1e-9  # kept, not dropped


def test_the_coarse_level_table_scores_the_degraded_product_against_the_real_one(
    tmp_path: Path,
) -> None:
    config = make_run(tmp_path, with_coarse=True)
    report = evaluate(config, progress=False)
    by_factor = {s.factor: s for s in report.sections}
    assert set(by_factor) == {0, 2, 4} and by_factor[2].level == "coarse"
    wald = by_factor[2]
    assert "model" not in wald.metrics  # no checkpoint in this run: no network to run
    # Uniform from k = 2 spreads each 2 x 2 block of product cells evenly: recompute its MAE.
    errors = []
    for year in YEARS:
        cube = np.load(config.tiles_dir / f"C_{year}.npy")
        x_cube = np.load(config.tiles_dir / f"X_{year}.npy")
        for tile_id in SPLIT["test"]:
            product = cube[tile_id, 0].astype(np.float64)
            domain = np.isfinite(x_cube[tile_id]).any(axis=0)
            cells = block_sum(domain.astype(float), S) > 0
            inside = np.zeros_like(cells)
            inside[: (GRID.height - GRID.tiles()[tile_id].row) // S, :] = True
            degraded = block_sum(np.nan_to_num(product), 2)
            counts = block_sum(cells.astype(float), 2)  # carrying cells per 2 x 2 block
            spread = np.repeat(np.repeat(degraded / np.maximum(counts, 1), 2, 0), 2, 1)
            ok = cells & np.isfinite(product)
            errors.append(np.abs(spread - product)[ok])
    expected = np.concatenate(errors).mean()
    assert wald.metrics["uniform"]["mae"] == pytest.approx(expected, rel=1e-9)
    md = report.markdown_path.read_text()
    assert "Coarse level (Wald protocol, no fine truth used)" in md
    assert "Fine level: every method is scored against the fine truth" in md


def test_another_run_is_compared_as_a_model_on_this_runs_tiles(tmp_path: Path) -> None:
    config = make_run(tmp_path / "a")
    other = make_run(tmp_path / "b")
    section = evaluate(config, progress=False, compare={"model, other run": other}).sections[0]
    assert "model, other run" in section.metrics and section.name == "test"
    assert section.models == ("model", "model, other run")
    assert section.best_baseline not in section.models
    # Both runs hold the same fake predictions (same seed): the same scores.
    assert section.metrics["model, other run"]["mae"] == pytest.approx(
        section.metrics["model"]["mae"]
    )


def test_the_learned_dasymetric_forest_learns_from_every_tile_under_coarse_supervision(
    tmp_path: Path,
) -> None:
    from carbongeo.stages.forests import fit_tiles

    fine = make_run(tmp_path / "fine", with_coarse=True)
    store = TileStore(fine)
    assert fit_tiles(store, "learned-dasymetric")[0] == SPLIT["train"]
    raw = dict(fine.raw, train={"supervision": "coarse"})
    weak = parse_config(raw, tmp_path / "fine")
    weak_store = TileStore(weak)
    assert fit_tiles(weak_store, "learned-dasymetric")[0] == weak_store.tile_ids
    assert fit_tiles(weak_store, "supervised-forest")[0] == SPLIT["train"]
