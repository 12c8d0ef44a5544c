"""Inputs that printed a traceback where one line is promised: now one line and exit 2.

Each case breaks one thing in the tiny world (``carbongeo synth --size tiny``) and runs the
command a user would run. Decisions recorded here:

* Floats of the pipeline file must be finite; ``grid.resolution`` must give at most 2**24 pixels
  per side; seeds and ``train.weight_decay`` must be >= 0; ``model.dim`` is a multiple of 4 up to
  1024 (the network's own rule, and what can be allocated).
* ``{year}`` in a path may carry an integer format (``{year:05d}``); other placeholders are
  refused as typos. A byte-order mark at the start of the pipeline file is accepted.
* ``workers`` below zero is refused by ``tile`` and ``mosaic`` alike (0: one per CPU).
* ``grid.tile_size`` above 256 px is refused when it exceeds twice the scene's larger side.
* A cube that is truncated, holds Python objects or has another shape than the index is refused
  by every stage that reads it, naming the file and ``carbongeo tile --year``.
* Values beyond the float32 range are refused (they would become inf, and ``Infinity`` in
  ``index.json``): rescale the file or declare the value as nodata.
* Ctrl-C under ``tile --workers 2`` prints one line and exits 130; the worker processes print
  nothing. GDAL's own ``ERROR 1:`` lines and Python warnings do not reach stderr (``-v`` and
  ``-vv`` show them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _scenario import (
    ENV,
    assert_error,
    assert_ok,
    cli,
    config_of,
    copy_world,
    edit_config,
    files,
    invoke,
    temporaries,
)

pytestmark = pytest.mark.usefixtures("single_thread")

GRID_OVERRIDE = (
    'scale = 8\ncrs = "EPSG:32650"\nresolution = {res}\n'
    "bounds = [{b0}, 2884000.0, 556000.0, 3012000.0]\n"
)


@pytest.fixture(scope="module")
def trained(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world tiled, split, trained for one epoch and mosaicked (read-only for tests)."""
    site = copy_world(world, tmp_path_factory.mktemp("oneline-trained"))
    for args in (["tile"], ["split"], ["train", "--epochs", "1"], ["mosaic"]):
        assert_ok(invoke(*args, "-c", config_of(site)))
    return site


@pytest.fixture
def site(world: Path, tmp_path: Path) -> Path:
    return copy_world(world, tmp_path / "site")


# --------------------------------------------------------------------------- the pipeline file
def _grid(res: str, b0: str = "300000.0") -> tuple[str, str]:
    return "scale = 8\n", GRID_OVERRIDE.format(res=res, b0=b0)


CONFIG_CASES: dict[str, tuple[tuple[str, str], tuple[str, ...]]] = {
    "resolution-nan": (_grid("nan"), ("grid.resolution", "finite")),
    "resolution-inf": (_grid("inf"), ("grid.resolution", "finite")),
    "resolution-denormal": (_grid("1e-310"), ("grid.resolution", "pixels", "units")),
    "bounds-nan": (_grid("1000.0", "nan"), ("grid.bounds", "finite")),
    "bounds-inf": (_grid("1000.0", "-inf"), ("grid.bounds", "finite")),
    "lr-nan": (("lr = 2e-3", "lr = nan"), ("train.lr", "finite")),
    "lr-inf": (("lr = 2e-3", "lr = inf"), ("train.lr", "finite")),
    "weight-decay-negative": (
        ("lr = 2e-3", "lr = 2e-3\nweight_decay = -0.1"),
        ("train.weight_decay", ">= 0"),
    ),
    "train-seed-negative": (("lr = 2e-3", "lr = 2e-3\nseed = -1"), ("train.seed", ">= 0")),
    "split-seed-negative": (("seed = 0", "seed = -3"), ("split.seed", ">= 0")),
    "dim-absurd": (("dim = 8", "dim = 1000000"), ("model.dim", "multiple of 4", "1024")),
    "dim-not-multiple-of-4": (("dim = 8", "dim = 6"), ("model.dim", "multiple of 4")),
    "depth-absurd": (("depth = 1", "depth = 100000"), ("model.depth",)),
    "loss-weight-nan": (("[mosaic]", "[loss]\npixel = nan\n\n[mosaic]"), ("loss.pixel", "finite")),
    "ratios-inf": (("ratios = [0.8, 0.1, 0.1]", "ratios = [inf, 1, 1]"), ("split.ratios",)),
    "unknown-placeholder": (
        ('path = "aux/roads.tif"', 'path = "aux/roads_{yr}.tif"'),
        ("path", "unknown placeholder", "{yr}"),
    ),
    "bad-year-format": (
        ('path = "emissions/co2_{year}.tif"', 'path = "emissions/co2_{year:q}.tif"'),
        ("target.path", "{year:q}", "not a year format"),
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_pipeline_value(case: str, site: Path) -> None:
    (old, new), fragments = CONFIG_CASES[case]
    edit_config(site, old, new)
    for command in (["tile"], ["train", "--epochs", "1"]):
        assert_error(invoke(*command, "-c", config_of(site)), *fragments)
    assert not (site / "runs").exists()


def test_year_format_in_a_path_is_understood(site: Path) -> None:
    for year in (2014, 2015, 2016):
        (site / "emissions" / f"co2_{year}.tif").rename(site / "emissions" / f"co2_0{year}.tif")
    edit_config(site, 'path = "emissions/co2_{year}.tif"', 'path = "emissions/co2_{year:05d}.tif"')
    assert_ok(invoke("tile", "-c", config_of(site), "--year", "2015"))
    assert (site / "runs" / "tiles" / "Y_2015.npy").is_file()


def test_pipeline_file_with_a_byte_order_mark(site: Path) -> None:
    path = site / "carbongeo.toml"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert_ok(invoke("tile", "-c", config_of(site), "--year", "2015"))


def test_tile_size_far_beyond_the_scene(site: Path) -> None:
    edit_config(site, "tile_size = 64", "tile_size = 65536")
    line = assert_error(invoke("tile", "-c", config_of(site)), "grid.tile_size", "padding")
    assert "at most 512" in line  # twice the 256 px side of the scene
    assert not (site / "runs").exists()


# --------------------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["tile", "--foo"], ("No such option", "--foo", "tile --help")),
        (["train", "--epochs", "0"], ("--epochs", "x>=1")),
        (["mosaic", "--device", "tpu"], ("--device", "'tpu'")),
        (["nosuch"], ("No such command 'nosuch'",)),
    ],
    ids=["unknown-option", "bad-parameter", "bad-choice", "unknown-command"],
)
def test_usage_errors_are_one_line(args: list[str], fragments: tuple[str, ...]) -> None:
    assert_error(cli(*args), *fragments)  # refused before any pipeline file is read


@pytest.mark.parametrize("command", ["tile", "mosaic"])
def test_scheduler_that_is_not_an_address(command: str, trained: Path) -> None:
    before = files(trained)
    extra = ["--overwrite"] if command == "mosaic" else []
    result = invoke(command, "-c", config_of(trained), "--scheduler", "nonsense", *extra)
    assert_error(result, "scheduler", "'nonsense'", "tcp://")
    assert files(trained) == before


@pytest.mark.parametrize("command", ["tile", "mosaic"])
def test_negative_workers_are_refused_alike(command: str, trained: Path) -> None:
    before = files(trained)
    extra = ["--overwrite"] if command == "mosaic" else []
    result = invoke(command, "-c", config_of(trained), "--workers", "-1", *extra)
    assert_error(result, "workers", "x>=0")
    assert files(trained) == before


def test_gdal_and_python_warnings_stay_off_stderr(site: Path) -> None:
    """A CRS PROJ refuses: GDAL printed its own ERROR 1 line before carbongeo's."""
    edit_config(site, *_grid("1000.0"))
    edit_config(site, 'crs = "EPSG:32650"', 'crs = "+proj=utm +zone=99"')
    driver = (
        "import sys, warnings\n"
        "import carbongeo.stages.tile as tile\n"
        "real = tile.build_grid\n"
        "def build_grid(config):\n"
        "    warnings.warn('a library warning', UserWarning)\n"
        "    return real(config)\n"
        "tile.build_grid = build_grid\n"
        "from carbongeo.cli.app import main\n"
        "main(args=sys.argv[1:], prog_name='carbongeo')\n"
    )
    for verbosity in ([], ["-q"]):
        proc = subprocess.run(
            [sys.executable, "-c", driver, *verbosity, "tile", "-c", config_of(site)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=300,
        )
        assert_error(proc, "grid.crs", "+proj=utm +zone=99")


# --------------------------------------------------------------------------- damaged cubes
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _wrong_bands(path: Path) -> None:
    cube = np.load(path)
    np.save(path, cube[:, :-1])


def _objects(path: Path) -> None:
    np.save(path, np.array([{"tile": 1}, None], dtype=object), allow_pickle=True)


def _float64(path: Path) -> None:
    np.save(path, np.load(path).astype(np.float64))


@pytest.mark.parametrize(
    "damage", [_truncate, _wrong_bands, _objects, _float64], ids=lambda f: f.__name__[1:]
)
@pytest.mark.parametrize(
    "command",
    [["train", "--epochs", "1", "--no-resume"], ["mosaic", "--overwrite"], ["evaluate"], ["check"]],
    ids=lambda c: c[0],
)
def test_damaged_cube(
    damage: object, command: list[str], trained: Path, world: Path, tmp_path: Path
) -> None:
    site = copy_world(
        world, tmp_path / "site", "tiles", "checkpoints", "predictions", source=trained
    )
    damage(site / "runs" / "tiles" / "X_2015.npy")  # type: ignore[operator]
    before = files(site)
    line = assert_error(invoke(*command, "-c", config_of(site)), "X_2015.npy")
    assert "carbongeo tile --year 2015" in line
    assert files(site) == before


# --------------------------------------------------------------------------- values and index
def test_values_beyond_float32_are_refused(site: Path) -> None:
    path = site / "emissions" / "co2_2015.tif"
    with rasterio.open(path) as src:
        data, profile = src.read(1).astype(np.float64), src.profile
    data[40, 50] = 1e39
    profile.update(dtype="float64")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    line = assert_error(invoke("tile", "-c", config_of(site)), "co2_2015.tif", "float32 range")
    assert "1e+39" in line and "nodata" in line
    assert not (site / "runs" / "tiles" / "index.json").exists()  # never inf / Infinity in it
    assert temporaries(site) == []


# --------------------------------------------------------------------------- Ctrl-C
def _interrupt(command: list[str], folder: Path, when: str) -> subprocess.CompletedProcess:
    """Run ``python -m carbongeo -q COMMAND`` in its own process group and send the group
    SIGINT (like a terminal) as soon as temporaries appear (``start``: the cluster is starting)
    or once the worker processes run (``running``)."""
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-m", "carbongeo", "-q", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    parent = psutil.Process(proc.pid)
    while proc.poll() is None and time.monotonic() < deadline:
        if when == "start" and temporaries(folder):
            break
        if when == "running" and len(parent.children(recursive=True)) >= 2:
            time.sleep(1.0)
            break
        time.sleep(0.01)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("when", ["start", "running"])
def test_ctrl_c_under_tile_workers_is_one_line(when: str, site: Path) -> None:
    run = _interrupt(["tile", "-c", config_of(site), "--workers", "2"], site, when)
    if run.returncode == 0:
        pytest.skip("the run finished before the interrupt")
    assert run.returncode == 130, run.stderr
    assert run.stderr.splitlines() == ["carbongeo: interrupted"], run.stderr
    assert temporaries(site) == []
    assert not list(site.rglob("*.npy"))  # nothing published
