"""Tests of carbongeo.store.layout: the names of every file a run makes."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from carbongeo.config import parse_config
from carbongeo.errors import CheckpointError, InputDataError
from carbongeo.store.layout import RunLayout, TilesLayout, missing_input


def test_every_path_of_a_run(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "run")
    names = {
        layout.tiles.cube("X", 2014): "tiles/X_2014.npy",
        layout.tiles.cube("Y", 2014): "tiles/Y_2014.npy",
        layout.tiles.cube("C", 2014): "tiles/C_2014.npy",
        layout.tiles.index: "tiles/index.json",
        layout.tiles.index_lock: "tiles/.index.lock",
        layout.tiles.split: "tiles/split.json",
        layout.latest_checkpoint: "checkpoints/latest.pt",
        layout.best_checkpoint: "checkpoints/best.pt",
        layout.train_log: "checkpoints/train_log.csv",
        layout.prediction_tif(2015): "predictions/Pred_2015.tif",
        layout.prediction_npy(2015): "predictions/Pred_2015.npy",
        layout.evaluation_md: "reports/evaluation.md",
        layout.evaluation_json: "reports/evaluation.json",
        layout.preview_png(2016): "reports/preview_2016.png",
        layout.scene_png(2016): "reports/scene_2016.png",
        layout.exports_dir: "exports",
    }
    for path, name in names.items():
        assert path.relative_to(layout.workdir).as_posix() == name
    assert layout.tiles == TilesLayout(layout.tiles_dir)
    assert layout.preview_png(2016, tmp_path / "figs") == tmp_path / "figs" / "preview_2016.png"
    assert layout.scene_png(2016, tmp_path / "figs") == tmp_path / "figs" / "scene_2016.png"


def test_unknown_cube_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="X, Y or C"):
        TilesLayout(tmp_path).cube("Z", 2014)  # type: ignore[arg-type]


def test_layouts_pickle_and_accept_strings(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path))  # type: ignore[arg-type]
    assert isinstance(layout.workdir, Path)
    assert isinstance(TilesLayout(str(tmp_path)).root, Path)  # type: ignore[arg-type]
    again = pickle.loads(pickle.dumps(layout))
    assert again == layout and again.prediction_npy(2014) == layout.prediction_npy(2014)


def test_the_config_folders_are_the_layout_folders(tmp_path: Path) -> None:
    raw = {
        "workdir": "runs/demo",
        "years": "2014-2015",
        "target": {"path": "t_{year}.tif"},
        "aux": [{"name": "a", "path": "a.tif"}],
    }
    config = parse_config(raw, tmp_path)
    layout = config.layout
    assert layout == RunLayout(tmp_path / "runs" / "demo")
    assert (config.tiles_dir, config.checkpoints_dir) == (layout.tiles_dir, layout.checkpoints_dir)
    assert (config.predictions_dir, config.reports_dir) == (
        layout.predictions_dir,
        layout.reports_dir,
    )


def test_missing_input_names_the_file_and_the_command(tmp_path: Path) -> None:
    path = tmp_path / "tiles" / "X_2015.npy"
    error = missing_input(path, "carbongeo tile --year 2015")
    assert isinstance(error, InputDataError)
    assert str(error) == f"{path} not found; run 'carbongeo tile --year 2015' first"
    assert isinstance(missing_input(path, "carbongeo train", CheckpointError), CheckpointError)
