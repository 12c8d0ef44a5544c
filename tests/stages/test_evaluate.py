"""Evaluation metrics and the ``evaluate`` command on a tiny tiled run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from carbongeo.config import PipelineConfig, parse_config
from carbongeo.errors import CarbongeoError, ParameterError
from carbongeo.evaluation.baselines import block_sum
from carbongeo.grid import Grid
from carbongeo.stages.evaluate import (
    EvaluationReport,
    block_mass_errors,
    compute_metrics,
    evaluate,
    hotspot_mask,
    ssim_map,
)
from carbongeo.stages.tile import TileIndex, TileRecord

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
            {"name": "water", "path": "water.tif", "kind": "categorical"},
        ],
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
    write_index(tiles_dir, config, YEARS, has_coarse=with_coarse)
    if split:
        (tiles_dir / "split.json").write_text(json.dumps({**SPLIT, "holdout_year": holdout_year}))
    return config


def write_index(
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
    (tiles_dir / "index.json").write_text(json.dumps(index.to_dict()))


def block_sum_cube(cube: np.ndarray) -> np.ndarray:
    return np.stack([block_sum(tile[0], S)[None] for tile in cube])


# --------------------------------------------------------------------------- pure metrics
def test_perfect_prediction() -> None:
    rng = np.random.default_rng(1)
    truth = rng.gamma(0.5, 10.0, (32, 32))
    truth[:4, :4] = 0.0
    metrics = compute_metrics(truth, truth, block_sum(truth, S), S, np.ones(truth.shape, bool))
    assert metrics["mae"] == 0.0 and metrics["rmse"] == 0.0
    assert metrics["r2"] == 1.0 and metrics["r2_log1p"] == 1.0
    assert metrics["ssim"] == pytest.approx(1.0) and metrics["ssim_log1p"] == pytest.approx(1.0)
    assert metrics["hotspot_recall"] == 1.0 and metrics["hotspot_precision"] == 1.0
    assert metrics["hotspot_mae"] == 0.0
    assert metrics["psnr"] == math.inf
    assert metrics["mass_err_max"] < 1e-12
    assert abs(metrics["pbias"]) < 1e-12
    assert metrics["mass_on_zero_truth"] == 0.0
    assert metrics["n_pixels"] == 32 * 32


def test_small_example_by_hand() -> None:
    truth = np.array([[1.0, 2.0], [3.0, 4.0]])
    pred = np.array([[2.0, 2.0], [2.0, 4.0]])
    metrics = compute_metrics(pred, truth, np.array([[10.0]]), 2, np.ones((2, 2), bool))
    assert metrics["mae"] == pytest.approx(0.5)
    assert metrics["rmse"] == pytest.approx(math.sqrt(0.5))
    assert metrics["r2"] == pytest.approx(1 - 2.0 / 5.0)  # SST about the mean 2.5 is 5
    assert metrics["mae_log1p"] == pytest.approx(
        (abs(math.log(3) - math.log(2)) + abs(math.log(3) - math.log(4))) / 4
    )
    assert metrics["psnr"] == pytest.approx(10 * math.log10(3.0**2 / 0.5))  # range 4 - 1
    assert metrics["mass_err_max"] == 0.0  # 2 + 2 + 2 + 4 = 10


def test_nodata_pixels_are_excluded() -> None:
    rng = np.random.default_rng(2)
    truth = rng.gamma(0.5, 10.0, (16, 16))
    pred = truth + rng.normal(0, 1, truth.shape)
    valid = np.ones(truth.shape, bool)
    coarse = block_sum(truth, S)
    reference = compute_metrics(pred, truth, coarse, S, valid)
    masked_truth = truth.copy()
    masked_truth[3, 5] = np.nan
    wild = pred.copy()
    wild[3, 5] = 1e9
    outside = compute_metrics(wild, masked_truth, coarse, S, valid)
    assert outside["n_pixels"] == reference["n_pixels"] - 1
    assert outside["mae"] < 2 * reference["mae"]
    not_valid = valid.copy()
    not_valid[3, 5] = False
    same = compute_metrics(wild, truth, coarse, S, not_valid)
    assert same["mae"] == pytest.approx(outside["mae"])
    assert same["rmse"] == pytest.approx(outside["rmse"])


def test_missing_prediction_counts_as_zero() -> None:
    truth = np.full((4, 4), 2.0)
    pred = truth.copy()
    pred[0, 0] = np.nan
    metrics = compute_metrics(pred, truth, block_sum(truth, 4), 4, np.ones((4, 4), bool))
    assert metrics["pred_nodata_pixels"] == 1
    assert metrics["mae"] == pytest.approx(2.0 / 16)
    assert metrics["mass_err_max"] == pytest.approx(2.0 / 32)


def test_hotspot_recall_and_precision() -> None:
    truth = np.arange(1.0, 201.0).reshape(10, 20)  # top 1 %: the two largest cells
    pred = truth.copy()
    pred[9, 19] = 0.0  # the largest truth cell is missed
    metrics = compute_metrics(pred, truth, block_sum(truth, 10), 10, np.ones(truth.shape, bool))
    assert metrics["hotspot_recall"] == pytest.approx(0.5)
    assert metrics["hotspot_precision"] == pytest.approx(0.5)
    assert metrics["hotspot_mae"] == pytest.approx(200.0 / 2)
    assert hotspot_mask(np.array([0.0, 0.0, 0.0])).sum() == 0  # zeros are never hotspots


def test_mass_on_zero_truth_and_water() -> None:
    truth = np.array([[0.0, 2.0], [2.0, 4.0]])
    pred = np.array([[2.0, 2.0], [2.0, 2.0]])
    water = np.array([[True, False], [False, False]])
    metrics = compute_metrics(
        pred, truth, np.array([[8.0]]), 2, np.ones((2, 2), bool), zero_aux=water
    )
    assert metrics["mass_on_zero_truth"] == pytest.approx(0.25)
    assert metrics["mass_on_water"] == pytest.approx(0.25)


def test_block_mass_errors_skip_empty_and_zero_cells() -> None:
    pred = np.full((4, 4), np.nan)
    pred[:2, :2] = 1.0
    coarse = np.array([[5.0, 3.0], [0.0, 1.0]])
    np.testing.assert_allclose(block_mass_errors(pred, coarse, 2), [0.2])


def test_ssim_matches_scikit_image_on_a_full_tile() -> None:
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(4)
    truth = rng.gamma(0.5, 10.0, (24, 30))
    pred = truth + rng.normal(0, 2, truth.shape)
    data_range = float(truth.max() - truth.min())
    _, full = skimage_metrics.structural_similarity(pred, truth, data_range=data_range, full=True)
    ours = ssim_map(pred, truth, np.ones(truth.shape, bool), data_range)
    np.testing.assert_allclose(ours, full, atol=1e-10)


def test_ssim_ignores_nodata_values() -> None:
    rng = np.random.default_rng(5)
    truth = rng.gamma(0.5, 10.0, (20, 20))
    mask = np.ones(truth.shape, bool)
    mask[8:12, 8:12] = False
    a = ssim_map(truth + 1, truth, mask, 50.0)
    noisy = truth.copy()
    noisy[~mask] = 1e6
    b = ssim_map(noisy + 1, noisy, mask, 50.0)
    np.testing.assert_allclose(a[mask], b[mask], rtol=1e-9)
    assert np.isnan(a[~mask]).all()


# --------------------------------------------------------------------------- the command
def test_evaluate_writes_both_reports(tmp_path: Path) -> None:
    config = make_run(tmp_path)
    report = evaluate(config, progress=False)
    assert isinstance(report, EvaluationReport)
    methods = {"model", "uniform", "bicubic", "dasymetric:ntl", "dasymetric:population"}
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
    assert [s.name for s in report.sections] == ["test", "holdout 2021"]
    assert report.sections[0].years == (2020,)
    assert report.sections[1].n_tiles == len(GRID.tiles()) and report.sections[1].split == "all"
    assert report.holdout_year == 2021
    assert "## holdout 2021" in report.markdown_path.read_text()


def test_evaluate_uses_the_real_coarse_product(tmp_path: Path) -> None:
    config = make_run(tmp_path, with_coarse=True)
    section = evaluate(config, years=[2020], split="val", progress=False).sections[0]
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
