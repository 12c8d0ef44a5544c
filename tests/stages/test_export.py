"""Tests of ``carbongeo export``, ``carbongeo catalog`` and ``carbongeo mosaic --units``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from _predictions import UNITS, YEARS, mosaic_run, write_predictions
from click.testing import CliRunner, Result

from carbongeo.cli.app import main
from carbongeo.config import PipelineConfig
from carbongeo.errors import CarbongeoError
from carbongeo.outputs.files import run_files
from carbongeo.outputs.geodesy import pixel_areas
from carbongeo.outputs.units import year_seconds
from carbongeo.stages.export import export
from carbongeo.stages.mosaic import mosaic_years
from carbongeo.store.tiles import load_index


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def assert_one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("carbongeo: error: "), result.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    return write_predictions(tmp_path_factory.mktemp("export"))


def test_export_writes_all_years_under_exports(run: PipelineConfig) -> None:
    result = export(run, units="flux")
    assert result.path == run.workdir / "exports" / "emissions_2019-2020_flux.nc"
    assert result.years == list(YEARS) and result.units == "kg CO2 m-2 s-1"
    with xr.open_dataset(result.path) as ds:
        assert ds.attrs["units_choice"] == "flux"
        assert "export --format netcdf --units flux" in ds.attrs["history"]
        assert ds.attrs["config_hash"] == run.data_hash()
    assert [p.name for p in result.path.parent.iterdir()] == [result.path.name]


def test_export_of_some_years_to_a_chosen_path(run: PipelineConfig, tmp_path: Path) -> None:
    out = tmp_path / "cube.nc"
    result = export(run, [2020], out=out)
    assert result.path == out and result.years == [2020] and result.units == UNITS
    with xr.open_dataset(out) as ds:
        np.testing.assert_array_equal(
            ds.emissions.values[0], np.load(run.layout.prediction_npy(2020))
        )


def test_export_refuses_what_it_cannot_do(run: PipelineConfig, tmp_path: Path) -> None:
    with pytest.raises(CarbongeoError, match="units: 'per_m2' is not one of"):
        export(run, units="per_m2")
    with pytest.raises(CarbongeoError, match="format: 'grib' is not one of netcdf, zarr"):
        export(run, fmt="grib")  # type: ignore[arg-type]
    bare = write_predictions(tmp_path, years=(2019,))
    for tif in run_files(bare).tifs.values():
        tif.unlink()
    with pytest.raises(CarbongeoError, match="no prediction in .*; run: carbongeo mosaic"):
        export(bare)


def test_cli_export_and_catalog(run: PipelineConfig, tmp_path: Path) -> None:
    out = tmp_path / "cli.nc"
    result = invoke(
        "export", "-c", str(run.path), "--units", "per_km2", "--out", str(out), "--json"
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["path"] == str(out) and record["units"] == "t CO2 / km2 / yr"
    assert record["years"] == list(YEARS) and out.is_file()
    result = invoke("-q", "export", "-c", str(run.path), "--years", "2019", "--out", str(out))
    assert result.exit_code == 0 and f"{out}: 1 year(s) in {UNITS}" in result.stdout
    result = invoke("catalog", "-c", str(run.path))
    assert result.exit_code == 0 and result.stdout.strip() == str(run_files(run).catalog)


def test_cli_errors_are_one_line(run: PipelineConfig, tmp_path: Path) -> None:
    assert_one_line_error(
        invoke("export", "-c", str(run.path), "--years", "2030"), "--years: 2030 is not in"
    )
    odd = write_predictions(tmp_path, units="persons / cell")
    assert_one_line_error(
        invoke("export", "-c", str(odd.path), "--units", "flux"),
        "target.units: cannot convert 'persons / cell'",
    )


def test_mosaic_units_flux_converts_the_cog_and_keeps_the_npy(tmp_path: Path) -> None:
    config = mosaic_run(tmp_path)
    results = mosaic_years(config, list(YEARS), device="cpu", progress=False, units="flux")
    grid = load_index(config.tiles_dir).grid
    area = pixel_areas(grid)
    for result in results:
        npy = np.load(result.npy_path)
        with rasterio.open(result.tif_path) as src:
            flux = src.read(1).astype(np.float64)
            tags = src.tags()
            assert src.units == ("kg CO2 m-2 s-1",)
        assert tags["units"] == "kg CO2 m-2 s-1" and tags["units_choice"] == "flux"
        assert tags["target_units"] == UNITS
        totals = flux * area * year_seconds(result.year) / 1000.0
        np.testing.assert_allclose(totals, npy, rtol=3e-7)
        np.testing.assert_array_equal(np.isnan(flux), np.isnan(npy))
    catalog = run_files(config).catalog
    assert catalog.is_file()  # mosaic ends by refreshing the STAC catalog
    # The datacube of flux COGs in per-cell units is the .npy again.
    cube = export(config, units="per_cell")
    assert cube.units == UNITS
    with xr.open_dataset(cube.path) as ds:
        for k, result in enumerate(results):
            np.testing.assert_allclose(ds.emissions.values[k], np.load(result.npy_path), rtol=3e-7)


def test_mosaic_refuses_unconvertible_units_before_any_work(tmp_path: Path) -> None:
    config = mosaic_run(tmp_path)
    with pytest.raises(CarbongeoError, match="units: 'per_acre' is not one of"):
        mosaic_years(config, [2019], device="cpu", progress=False, units="per_acre")
    assert not config.predictions_dir.exists()
    assert config.layout.tiles.cube("X", 2019).is_file()
