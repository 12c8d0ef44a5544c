"""Smoke test of ``carbongeo bench`` at a tiny size: structure and positive numbers, no timings."""

from __future__ import annotations

import json
import tempfile

import pytest
from click.testing import CliRunner

from carbongeo.bench import bench_settings, format_table, parse_sizes, run_bench
from carbongeo.cli.app import main
from carbongeo.errors import CarbongeoError


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    scratch = tmp_path_factory.mktemp("scratch")
    settings = bench_settings(
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
    (tile,) = results["tile"]
    assert tile["size"] == 256 and tile["tiles"] == 4
    for key in ("source_mb", "read_mb_per_s", "tile_mb_per_s", "tile_vs_read", "peak_rss_mb"):
        assert tile[key] > 0, key
    assert tile["read_peak_rss_mb"] > 0
    train = results["train"]
    assert train["samples"] == 6 and train["batch"] == 1
    assert [row["workers"] for row in train["loader"]] == [0]
    assert all(row["tiles_per_s"] > 0 for row in train["loader"])
    assert [m["name"] for m in train["models"]] == ["demo"]
    assert all(m["tiles_per_s"] > 0 and m["parameters"] > 0 for m in train["models"])
    (mosaic,) = results["mosaic"]
    assert mosaic["size"] == 128 and mosaic["windows"] >= 1
    assert mosaic["megapixels_per_s"] > 0 and mosaic["peak_rss_mb"] > 0
    assert mosaic["worst_cell_rel_error"] < 1e-4
    assert results["seconds"] > 0
    assert json.loads(json.dumps(results)) == results  # JSON-ready
    assert results["_leftovers"] == []  # the temporary scenes were removed
    assert any(line.startswith("mosaic 128:") for line in results["_lines"])


def test_table(results: dict) -> None:
    table = format_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("carbongeo bench: ") and "load average" in lines[0]
    assert lines[1].split()[:3] == ["stage", "case", "throughput"]
    stages = [
        line.split()[0] for line in lines[2:] if line.split()[0] in ("tile", "train", "mosaic")
    ]
    assert stages == ["tile", "train", "train", "mosaic"]
    assert "MB/s" in table and "tiles/s" in table and "Mpx/s" in table


def test_settings_and_sizes() -> None:
    assert parse_sizes("2048, 8192") == (2048, 8192)
    assert parse_sizes(None) is None
    for bad in ("x", "0", "64,2048", ""):
        with pytest.raises(ValueError):
            parse_sizes(bad)
    quick = bench_settings(quick=True, mosaic_sizes=[1024])
    assert quick.quick and quick.mosaic_sizes == (1024,) and quick.tile_sizes == (1024, 2048)
    assert bench_settings().tile_sizes == (4096, 16384)
    with pytest.raises(CarbongeoError):
        bench_settings(stages=("nope",))


def test_cli_rejects_bad_sizes() -> None:
    result = CliRunner().invoke(main, ["bench", "--sizes", "2048,abc"])
    assert result.exit_code == 2 and "--sizes" in result.output
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0 and "--tile-sizes" in result.output and "--quick" in result.output
