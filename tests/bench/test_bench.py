"""Smoke test of ``carbongeo bench`` at a tiny size: structure, ratios, table; no timings."""

from __future__ import annotations

import json
import tempfile

import pytest
from click.testing import CliRunner

from carbongeo.bench import bench_settings, format_json, format_table, parse_sizes, run_bench
from carbongeo.cli.app import main
from carbongeo.errors import ConfigError


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    scratch = tmp_path_factory.mktemp("scratch")
    # The --quick settings, with scenes and models small enough for a test.
    settings = bench_settings(
        quick=True,
        device="cpu",
        tile_sizes=(256,),
        mosaic_sizes=(128,),
        train_tiles=2,
        train_steps=1,
        train_batch=1,
        loader_workers=(0,),
        models=(("demo", 8, 1),),
        mosaic_model=(8, 1),
    )
    lines: list[str] = []
    saved = tempfile.tempdir
    tempfile.tempdir = str(scratch)  # the default scratch folder must be removed afterwards
    try:
        out = run_bench(settings, echo=lines.append)
    finally:
        tempfile.tempdir = saved
    out["_lines"] = lines
    out["_leftovers"] = sorted(p.name for p in scratch.iterdir())
    return out


def test_results_structure(results: dict) -> None:
    machine = results["machine"]
    assert machine["cpus"] >= 1 and machine["device"] == "cpu" and machine["torch"]
    assert len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3
    assert machine["rss_floor_mb"] > 0  # in-process here, so pytest's own imports count
    train = results["train"]
    assert train["samples"] == 6 and train["batch"] == 1
    assert [row["workers"] for row in train["loader"]] == [0]
    assert all(row["tiles_per_s"] > 0 and row["peak_rss_mb"] > 0 for row in train["loader"])
    assert [m["name"] for m in train["models"]] == ["demo"]
    assert all(m["tiles_per_s"] > 0 and m["parameters"] > 0 for m in train["models"])
    assert train["torch_threads"] >= 1
    assert results["seconds"] > 0
    assert json.loads(format_json(results)) == results  # JSON-ready
    assert results["_leftovers"] == []  # the temporary scenes were removed
    assert any(line.startswith("mosaic 128:") for line in results["_lines"])


def test_tile_next_to_reproject_and_read(results: dict) -> None:
    (tile,) = results["tile"]
    assert tile["size"] == 256 and tile["tiles"] == 4 and tile["sources"] == 4
    for key in ("source_mb", "read_mb_per_s", "reproject_mb_per_s", "tile_mb_per_s"):
        assert tile[key] > 0, key
    assert tile["read_peak_rss_mb"] > 0 and tile["reproject_peak_rss_mb"] > 0
    # The hand-written warp uses tile's resampling for each kind and fills the whole grid.
    resampling = tile["reproject_resampling"]
    assert resampling["target"] == resampling["pop"] == "sum"
    assert resampling["ntl"] in ("average", "bilinear") and resampling["water"] == "nearest"
    assert tile["reproject_valid_fraction"] > 0.99
    seconds = tile["tile_s"]
    assert tile["tile_vs_reproject"] == pytest.approx(tile["reproject_s"] / seconds, rel=0.02)
    assert tile["tile_vs_read"] == pytest.approx(tile["read_s"] / seconds, rel=0.02)


def test_mosaic_next_to_the_network_alone(results: dict) -> None:
    (mosaic,) = results["mosaic"]
    assert mosaic["size"] == 128 and mosaic["windows"] >= 1
    assert mosaic["megapixels_per_s"] > 0 and mosaic["peak_rss_mb"] > 0
    assert mosaic["worst_cell_rel_error"] < 1e-4
    assert mosaic["forward_s"] > 0 and mosaic["forward_megapixels_per_s"] > 0
    assert mosaic["forward_peak_rss_mb"] > 0
    ratio = mosaic["forward_s"] / mosaic["seconds"]
    assert mosaic["mosaic_vs_forward"] == pytest.approx(ratio, rel=0.02)


def test_table(results: dict) -> None:
    table = format_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("carbongeo bench (--quick): ") and "load average" in lines[0]
    assert lines[1].split()[:3] == ["stage", "case", "throughput"]
    rows = [line for line in lines[2:] if line.split()[0] in ("tile", "train", "mosaic")]
    assert [row.split()[0] for row in rows] == ["tile", "tile", "train", "train", "mosaic"]
    tile, floor, _, _, mosaic = rows
    assert "rasterio.warp.reproject" in tile and "MB/s" in tile
    assert f"{results['tile'][0]['tile_vs_reproject']:.2f}" in tile
    assert "I/O floor" in floor and "raw rasterio read" in floor
    assert f"{results['tile'][0]['tile_vs_read']:.2f}" in floor
    assert "forward alone" in mosaic and "Mpx/s" in mosaic
    assert f"{results['mosaic'][0]['mosaic_vs_forward']:.2f}" in mosaic
    assert "tiles/s" in table and "time of the reference / time of the stage" in table


def test_settings_and_sizes() -> None:
    assert parse_sizes("2048, 8192") == (2048, 8192)
    assert parse_sizes(None) is None
    for bad in ("x", "0", "64,2048", ""):
        with pytest.raises(ValueError):
            parse_sizes(bad)
    quick = bench_settings(quick=True, mosaic_sizes=[1024])
    assert quick.quick and quick.mosaic_sizes == (1024,) and quick.tile_sizes == (1024, 2048)
    assert bench_settings().tile_sizes == (4096, 16384)
    with pytest.raises(ConfigError, match="stages"):
        bench_settings(stages=("nope",))
    with pytest.raises(ConfigError, match="^device: "):
        bench_settings(device="tpu")
    with pytest.raises(ConfigError, match="tile_workers"):
        bench_settings(tile_workers=0)


def test_cli_rejects_bad_sizes() -> None:
    result = CliRunner().invoke(main, ["bench", "--sizes", "2048,abc"])
    assert result.exit_code == 2 and "--sizes" in result.output
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0 and "--tile-sizes" in result.output and "--quick" in result.output
