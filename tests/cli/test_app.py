"""The ``carbongeo`` command line: help, version, quiet mode, user errors and the tiny pipeline.

Most tests call the click group in-process with :class:`click.testing.CliRunner`; the ones about
what a user sees at the top level (exit status, stderr, import cost) start ``python -m carbongeo``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner, Result

from carbongeo import __version__
from carbongeo.cli.app import main
from carbongeo.config import load_config
from carbongeo.synth import generate_world

COMMANDS = sorted(main.commands)
PIPELINE_COMMANDS = {
    "tile": [],
    "split": [],
    "check": [],
    "train": ["--epochs", "1"],
    "mosaic": [],
    "evaluate": [],
    "preview": ["--year", "2015"],
}


def invoke(*args: str) -> Result:
    """Run the CLI in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m carbongeo ARGS`` in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "carbongeo", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def assert_one_line_error(exit_code: int, stderr: str, stdout: str = "") -> str:
    """Exit status 2, a single ``carbongeo: error:`` line on stderr, no traceback anywhere."""
    assert exit_code == 2, f"exit {exit_code}\nstdout: {stdout}\nstderr: {stderr}"
    assert "Traceback" not in stderr + stdout
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("carbongeo: error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic world (rasters and carbongeo.toml), shared read-only by the module."""
    folder = tmp_path_factory.mktemp("cli-world")
    generate_world(folder, seed=0, size="tiny")
    return folder


# --------------------------------------------------------------------------- help and version
def test_help_lists_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    assert "Downscale coarse carbon-emission rasters" in result.stdout
    for name in COMMANDS:
        assert f"  {name} " in result.stdout, name
    assert {"synth", "tile", "split", "check", "train", "mosaic", "evaluate", "preview"} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name: str) -> None:
    result = invoke(name, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: main {name} [OPTIONS]")
    summary = main.commands[name].get_short_help_str(limit=60).rstrip(".")
    assert summary and summary.split()[0] in result.stdout
    assert "-h, --help" in result.stdout
    if name in PIPELINE_COMMANDS:
        assert "--config" in result.stdout


def test_help_and_version_through_python_m() -> None:
    help_result = cli("--help")
    assert help_result.returncode == 0, help_result.stderr
    assert "Usage:" in help_result.stdout and help_result.stderr == ""
    version = cli("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"carbongeo, version {__version__}"


def test_help_does_not_import_torch() -> None:
    """Heavy modules are imported inside each command, so ``--help`` stays fast."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from carbongeo.cli.app import main\n"
        "for name in [[]] + [[c] for c in main.commands]:\n"
        "    assert CliRunner().invoke(main, [*name, '--help']).exit_code == 0\n"
        "print(sorted(m for m in ('torch', 'dask', 'matplotlib') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_version_in_process() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"carbongeo, version {__version__}\n"


# --------------------------------------------------------------------------- user errors
def test_missing_config_through_python_m(tmp_path: Path) -> None:
    proc = cli("tile", cwd=tmp_path)
    line = assert_one_line_error(proc.returncode, proc.stderr, proc.stdout)
    assert "config file not found: carbongeo.toml" in line
    assert "carbongeo synth --out DIR" in line  # says how to get one
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", sorted(PIPELINE_COMMANDS))
def test_missing_config_every_command(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(name, *PIPELINE_COMMANDS[name])
    line = assert_one_line_error(result.exit_code, result.stderr, result.stdout)
    assert "config file not found: carbongeo.toml" in line
    result = invoke(name, "--config", str(tmp_path / "elsewhere.toml"), *PIPELINE_COMMANDS[name])
    line = assert_one_line_error(result.exit_code, result.stderr, result.stdout)
    assert str(tmp_path / "elsewhere.toml") in line
    assert list(tmp_path.iterdir()) == []


def test_bad_option_values_are_one_line(tiny_world: Path) -> None:
    config = str(tiny_world / "carbongeo.toml")
    for args, fragment in [
        (["tile", "-c", config, "--year", "1999"], "1999 is not in the config's years"),
        (["tile", "-c", config, "--year", "2014", "--years", "2014-2015"], "not both"),
        (["tile", "-c", config, "--years", "20x4"], "not a year range"),
    ]:
        result = invoke("-q", *args)
        assert fragment in assert_one_line_error(result.exit_code, result.stderr, result.stdout)
    assert not (tiny_world / "runs").exists()


# --------------------------------------------------------------------------- synth and quiet
def test_synth_writes_a_parseable_config(tmp_path: Path) -> None:
    out = tmp_path / "world"
    result = invoke("synth", "--out", str(out), "--size", "tiny")
    assert result.exit_code == 0, result.output
    config_path = Path(result.stdout.strip())
    assert config_path == out / "carbongeo.toml"
    config = load_config(config_path, check_files=True)  # every referenced raster exists
    assert config.years == (2014, 2015, 2016)
    assert config.grid.tile_size == 64 and config.grid.scale == 8
    assert config.train.num_workers == 0
    assert config.workdir == out.resolve() / "runs"
    assert not config.workdir.exists()  # synth writes inputs only


def test_quiet_suppresses_progress(tiny_world: Path, tmp_path: Path) -> None:
    config = tmp_path / "carbongeo.toml"
    text = (tiny_world / "carbongeo.toml").read_text()
    config.write_text(text.replace('path = "', f'path = "{tiny_world}/'))
    loud = invoke("tile", "-c", str(config), "--year", "2014")
    assert loud.exit_code == 0, loud.output
    assert "block" in loud.stderr  # the progress bar
    quiet = invoke("-q", "tile", "-c", str(config), "--year", "2014")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""
    assert quiet.stdout.startswith("tiled 1 year(s)")
    assert quiet.stdout == loud.stdout


# --------------------------------------------------------------------------- the whole pipeline
def test_tiny_pipeline_through_the_cli(tmp_path: Path) -> None:
    """synth, tile, split, check --json, train --epochs 1, mosaic, evaluate --json, preview."""

    def step(*args: str) -> str:
        proc = cli("-q", *args)
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
        assert proc.stderr == "", f"{args}: -q must keep stderr empty: {proc.stderr}"
        return proc.stdout

    config = step("synth", "--out", str(tmp_path / "w"), "--size", "tiny").strip()
    assert Path(config) == tmp_path / "w" / "carbongeo.toml"
    assert step("tile", "-c", config).startswith("tiled 3 year(s)")
    assert step("split", "-c", config).startswith("train ")
    stats = json.loads(step("check", "-c", config, "--json"))
    assert set(stats["years"]) == {"2014", "2015", "2016"}
    assert stats["years"]["2015"]["target"]["count"] > 0
    chose, trained = step("train", "-c", config, "--epochs", "1").splitlines()
    assert (
        chose == "supervision: auto chose fine, because the training years 2014-2016 have a target"
    )
    assert trained.startswith("trained 1 epoch(s); best validation MAE")
    assert len(step("mosaic", "-c", config).splitlines()) == 3
    report = json.loads(step("evaluate", "-c", config, "--json"))
    methods = report["sections"][0]["methods"]
    assert {"model", "uniform"} <= set(methods)
    assert np.isfinite(methods["model"]["mae"])
    assert len(step("preview", "-c", config, "--year", "2015").splitlines()) == 2

    workdir = tmp_path / "w" / "runs"
    for year in (2014, 2015, 2016):
        assert (workdir / "tiles" / f"X_{year}.npy").is_file()
        prediction = np.load(workdir / "predictions" / f"Pred_{year}.npy")
        with rasterio.open(workdir / "predictions" / f"Pred_{year}.tif") as src:
            assert src.shape == prediction.shape == (128, 256)
            np.testing.assert_array_equal(src.read(1), prediction)
    assert (workdir / "checkpoints" / "best.pt").is_file()
    reports = workdir / "reports"
    for name in ("preview_2015.png", "scene_2015.png", "evaluation.md", "evaluation.json"):
        assert (reports / name).stat().st_size > 0, name
    assert [p for p in tmp_path.rglob(".*") if ".tmp" in p.name] == []
