"""Preview figures: the per-tile comparison panel and the whole-scene map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from matplotlib.image import imread

from carbongeo.config import PipelineConfig, parse_config
from carbongeo.errors import CarbongeoError
from carbongeo.grid import Grid
from carbongeo.stages.preview import best_baseline, preview, scene_map, select_tiles
from carbongeo.store.tiles import TileIndex, TileRecord, TileStore

TS, S, YEAR = 16, 4, 2020
GRID = Grid("EPSG:32650", Affine(1000.0, 0, 300000.0, 0, -1000.0, 4000000.0), 28, 40, TS, S)


def make_run(tmp_path: Path, *, tif: bool = True) -> PipelineConfig:
    """One year of a 28 x 40 scene in six 16 px tiles, with its prediction (.npy and .tif)."""
    raw = {
        "workdir": "run",
        "years": YEAR,
        "grid": {"tile_size": TS, "scale": S},
        "mosaic": {"overlap": 4},
        "target": {"path": "co2_{year}.tif", "units": "t CO2"},
        "aux": [
            {"name": "ntl", "path": "ntl_{year}.tif", "transform": "log1p"},
            {"name": "ndvi", "path": "ndvi.tif"},
        ],
    }
    config = parse_config(raw, tmp_path)
    config.tiles_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    truth = rng.gamma(0.4, 20.0, (GRID.height, GRID.width))
    truth[:, :3] = np.nan
    rows, cols = GRID.padded_shape
    aux = np.full((2, rows, cols), np.nan)
    aux[0, : GRID.height, : GRID.width] = np.log1p(np.nan_to_num(truth) + 1)
    aux[1, : GRID.height, : GRID.width] = rng.random(truth.shape)
    target = np.full((rows, cols), np.nan)
    target[: GRID.height, : GRID.width] = truth
    tiles = GRID.tiles()
    x_cube = np.stack([aux[:, t.row : t.row + TS, t.col : t.col + TS] for t in tiles])
    y_cube = np.stack([target[None, t.row : t.row + TS, t.col : t.col + TS] for t in tiles])
    np.save(config.tiles_dir / f"X_{YEAR}.npy", x_cube.astype(np.float32))
    np.save(config.tiles_dir / f"Y_{YEAR}.npy", y_cube.astype(np.float32))
    index = TileIndex(
        grid=GRID,
        years=[YEAR],
        bands=config.aux_names,
        aux=[{"name": a.name, "kind": a.kind, "transform": a.transform} for a in config.aux],
        target={"units": config.target.units, "kind": "extensive"},
        has_coarse=False,
        tiles=[TileRecord(t.id, t.row, t.col, {YEAR: 1.0}) for t in tiles],
    )
    (config.tiles_dir / "index.json").write_text(json.dumps(index.to_dict()))
    split = {"train": [0, 1], "val": [2], "test": [3, 4, 5], "holdout_year": None}
    (config.tiles_dir / "split.json").write_text(json.dumps(split))
    pred = (truth * rng.uniform(0.5, 1.5, truth.shape)).astype(np.float32)
    config.predictions_dir.mkdir(parents=True)
    np.save(config.predictions_dir / f"Pred_{YEAR}.npy", pred)
    if tif:
        profile = {
            "driver": "GTiff",
            "height": GRID.height,
            "width": GRID.width,
            "count": 1,
            "dtype": "float32",
            "crs": GRID.crs,
            "transform": GRID.transform,
            "nodata": np.nan,
        }
        with rasterio.open(config.predictions_dir / f"Pred_{YEAR}.tif", "w", **profile) as dst:
            dst.write(pred, 1)
    return config


def test_preview_writes_the_panel_and_the_scene_map(tmp_path: Path) -> None:
    config = make_run(tmp_path)
    panel, scene = preview(config, YEAR, n_tiles=2)
    assert panel == config.reports_dir / f"preview_{YEAR}.png"
    assert scene == config.reports_dir / f"scene_{YEAR}.png"
    image = imread(panel)
    assert image.shape[0] > 300 and image.shape[1] > 1000  # 2 rows x 8 columns
    assert image.shape[1] > image.shape[0]
    assert image[..., :3].std() > 0.05  # not blank
    scene_image = imread(scene)
    assert scene_image.shape[0] > 200 and scene_image.shape[1] > 400
    assert not list(config.reports_dir.glob(".*tmp*"))  # written atomically


def test_preview_output_folder(tmp_path: Path) -> None:
    config = make_run(tmp_path)
    paths = preview(config, YEAR, n_tiles=1, out=tmp_path / "figs")
    assert all(p.parent == tmp_path / "figs" and p.stat().st_size > 0 for p in paths)


def test_sample_tiles_are_the_largest_test_tiles(tmp_path: Path) -> None:
    config = make_run(tmp_path)
    store = TileStore(config)
    chosen = select_tiles(store, YEAR, [3, 4, 5], 2)
    totals = {i: store.truth_total(YEAR, i) for i in (3, 4, 5)}
    assert chosen == sorted(totals, key=lambda i: -totals[i])[:2]
    assert select_tiles(store, YEAR, [3, 4, 5], 2) == chosen  # deterministic


def test_best_baseline_comes_from_the_evaluation(tmp_path: Path) -> None:
    config = make_run(tmp_path)
    store = TileStore(config)
    assert best_baseline(config, store) == "dasymetric:ntl"
    config.reports_dir.mkdir(parents=True)
    # The forests are not proxy baselines: the best proxy baseline of the ranking is shown.
    ranking = ["supervised-forest", "model", "learned-dasymetric", "bicubic", "uniform"]
    report = {"sections": [{"best_baseline": "supervised-forest", "ranking": ranking}]}
    (config.reports_dir / "evaluation.json").write_text(json.dumps(report))
    assert best_baseline(config, store) == "bicubic"


def test_scene_map_reads_decimated(tmp_path: Path) -> None:
    config = make_run(tmp_path)
    path = scene_map(config, YEAR, max_pixels=10)
    assert imread(path).shape[0] > 100


def test_missing_prediction_says_to_run_mosaic(tmp_path: Path) -> None:
    config = make_run(tmp_path, tif=False)
    with pytest.raises(CarbongeoError, match="carbongeo mosaic"):
        scene_map(config, YEAR)
    with pytest.raises(CarbongeoError, match="carbongeo mosaic"):
        preview(config, 2019)
