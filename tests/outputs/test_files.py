"""Tests of run_files: a workdir and its pipeline name the same files."""

from __future__ import annotations

from pathlib import Path

import pytest
from _predictions import YEARS, write_predictions

from carbongeo.errors import CarbongeoError
from carbongeo.outputs.files import run_files


def test_a_workdir_names_the_files_its_pipeline_names(tmp_path: Path) -> None:
    config = write_predictions(tmp_path)
    from_config, from_workdir = run_files(config), run_files(config.workdir)
    assert from_config.config is config and from_workdir.config is None
    assert from_config.years == from_workdir.years == list(YEARS)
    for field in ("workdir", "predictions_dir", "catalog", "exports_dir", "tifs", "npys", "items"):
        assert getattr(from_config, field) == getattr(from_workdir, field), field
    assert from_config.cubes == from_workdir.cubes
    for year in YEARS:
        assert (from_config.tifs[year], from_config.npys[year]) == (
            config.layout.prediction_tif(year),
            config.layout.prediction_npy(year),
        )
        assert from_config.cubes["X"][year] == config.layout.tiles.cube("X", year)
    assert from_config.catalog == config.predictions_dir / "catalog.json"
    assert run_files(config.path).tifs == from_config.tifs  # the pipeline file itself


def test_an_untiled_run_says_to_tile(tmp_path: Path) -> None:
    config = write_predictions(tmp_path)
    (config.tiles_dir / "index.json").unlink()
    with pytest.raises(CarbongeoError, match="run 'carbongeo tile' first"):
        run_files(config)
