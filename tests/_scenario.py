"""Helpers of the scenario tests: run the command line, check the one-line contract, copy worlds.

Import them as ``from _scenario import ...``. A case breaks one thing in an otherwise good tiny
world (``carbongeo synth --size tiny``) and runs the command a user would run; a refused input must
end with exit status 2 and exactly one ``carbongeo: error:`` line on stderr, without a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner, Result

from carbongeo.cli.app import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WORLD_FOLDERS = ("emissions", "coarse", "aux")


def invoke(*args: str) -> Result:
    """``carbongeo -q ARGS`` in-process (stdout and stderr apart, exceptions caught)."""
    return CliRunner().invoke(main, ["-q", *args], catch_exceptions=True)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m carbongeo -q ARGS`` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "carbongeo", "-q", *args],
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=300,
    )


def assert_error(run: Result | subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, one ``carbongeo: error:`` line on stderr holding ``fragments``, no traceback."""
    if isinstance(run, Result):
        code, stdout, stderr = run.exit_code, run.stdout, run.stderr
        if run.exception is not None and not isinstance(run.exception, SystemExit):
            raised = "".join(traceback.format_exception(run.exception))
            pytest.fail(f"unhandled exception:\n{raised}\nstderr: {stderr}")
    else:
        code, stdout, stderr = run.returncode, run.stdout, run.stderr
    assert code == 2, f"exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert "Traceback" not in stdout + stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    line = lines[0]
    assert line.startswith("carbongeo: error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def assert_ok(run: Result | subprocess.CompletedProcess) -> None:
    """Exit 0 (the output is shown when not)."""
    if isinstance(run, Result):
        assert run.exit_code == 0, f"{run.output}\n{run.exception!r}"
    else:
        assert run.returncode == 0, run.stderr


def temporaries(folder: Path) -> list[str]:
    """Temporary files of the atomic writers (``.<name>.tmp-...``) under ``folder``."""
    return sorted(p.name for p in folder.rglob(".*") if ".tmp" in p.name)


def files(site: Path) -> set[str]:
    """Every file under ``site``, relative."""
    return {str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()}


def copy_world(world: Path, dest: Path, *runs: str, source: Path | None = None) -> Path:
    """Copy the world's inputs to ``dest`` and, from ``source``, the ``runs/`` folders named."""
    for name in WORLD_FOLDERS:
        shutil.copytree(world / name, dest / name)
    shutil.copy2(world / "carbongeo.toml", dest / "carbongeo.toml")
    for sub in runs:
        assert source is not None
        shutil.copytree(source / "runs" / sub, dest / "runs" / sub)
    return dest


def config_of(site: Path) -> str:
    """The pipeline file of a site."""
    return str(site / "carbongeo.toml")


def edit_config(site: Path, old: str, new: str) -> None:
    """Replace the first ``old`` of the site's pipeline file by ``new``."""
    path = site / "carbongeo.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def rewrite_raster(path: Path, change: Callable[[np.ndarray], Any], **profile: Any) -> None:
    """Rewrite a raster in place after ``change(array)`` (and profile overrides)."""
    with rasterio.open(path) as src:
        data = src.read(1)
        meta = src.profile
    change(data)
    meta.update(profile)
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(data, 1)
