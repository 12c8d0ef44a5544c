"""SIGKILL in the middle of ``tile``, ``train`` and ``mosaic``, then the same command again.

A killed run must never leave a partial file under a final name (a reader polls the folder while
the process runs), and rerunning the command must give exactly what an uninterrupted run gives:
byte-identical cubes and ``Pred_<year>.npy``, the same COG pixels and tags, and the same trained
weights after resuming.

The process under test is the real command line (``carbongeo.cli.app.main`` in a fresh interpreter).
To kill it at a known point rather than by luck, a small driver wraps one internal function so
that, at the chosen call, the process writes a marker file and waits; the test then sends SIGKILL.
Nothing in the package knows about this: the hook lives in :data:`DRIVER`. One test kills the plain
``python -m carbongeo`` as soon as a temporary file shows up.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch

from carbongeo.store.checkpoint import load_checkpoint
from carbongeo.synth import generate_world

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX only")

YEARS = (2014, 2015, 2016)
EPOCHS = "2"
# One intra-op thread in every process: results are then bit-identical between runs, and tiny
# models run faster on a busy 2-core machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMING_COLUMNS = {"seconds", "tiles_per_s", "data_tiles_per_s"}

DRIVER = r"""
import os, sys, threading, time
from pathlib import Path

hook, marker, count, name = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lock = threading.Lock()
seen = [0]


def due(path=None):
    # The count-th call (of those on a file called `name`, unless name is "-").
    if name != "-" and (path is None or Path(path).name != name):
        return False
    with lock:
        seen[0] += 1
        return seen[0] == count


def pause():
    marker.write_text(str(os.getpid()))
    while True:  # the test sends SIGKILL now
        time.sleep(1)


def after(owner, attr, path_of=lambda args: None):
    original = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        if due(path_of(args)):
            pause()
        return result

    setattr(owner, attr, wrapper)


if hook == "tile-block":  # a block has written its tiles into the temporary cubes
    import carbongeo.stages.tile as m
    after(m, "write_block")
elif hook == "tile-commit":  # some cubes renamed into place, the others not yet
    import carbongeo.io.atomic as m
    after(m, "commit")
elif hook == "train-step":  # an optimisation step in the middle of an epoch
    import carbongeo.training.loop as m
    after(m.Trainer, "_step")
elif hook == "train-save":  # half of a checkpoint written to its temporary file
    import torch
    original_save = torch.save

    def save(obj, f, *args, **kwargs):
        original_save(obj, f, *args, **kwargs)
        if due():
            os.truncate(f, os.path.getsize(f) // 2)
            pause()

    torch.save = save
elif hook == "mosaic-rows":  # rows streamed into a year's temporary outputs
    import carbongeo.store.predictions as m
    after(m._NpyRows, "write_rows", lambda args: args[0].path)
elif hook == "mosaic-publish":  # Pred_<year>.npy renamed into place, the .tif not yet
    import carbongeo.io.cog as m
    original_publish = m.COGWriter.publish

    def publish(self):
        if due(self.path):
            pause()
        return original_publish(self)

    m.COGWriter.publish = publish
else:
    raise SystemExit(f"unknown hook {hook}")

from carbongeo.cli.app import main

main(args=sys.argv[5:], prog_name="carbongeo")
"""


# --------------------------------------------------------------------------- helpers
def carbongeo(*args: str) -> subprocess.CompletedProcess:
    """``python -m carbongeo -q ARGS``, which must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", "carbongeo", "-q", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, f"carbongeo {' '.join(args)}: {proc.stderr}"
    return proc


def temporaries(folder: Path) -> list[str]:
    """Names of the atomic writers' temporary files under ``folder``."""
    return sorted(p.name for p in folder.rglob(".*") if ".tmp" in p.name)


def kill_when(
    command: list[str],
    ready: Callable[[], bool],
    watch: Callable[[], None],
    *,
    expect_killed: bool = True,
    timeout: float = 120.0,
) -> None:
    """Start ``command``, poll ``watch`` until ``ready``, then SIGKILL the process.

    ``watch`` checks the output folder on every poll (no partial file under a final name).
    With ``expect_killed`` the process must still be running when ``ready`` holds.
    """
    with open(os.devnull, "w") as devnull:
        proc = subprocess.Popen(command, stdout=devnull, stderr=subprocess.PIPE, env=ENV)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            watch()
            if proc.poll() is not None:
                stderr = proc.stderr.read().decode() if proc.stderr else ""
                if expect_killed:
                    pytest.fail(f"exited ({proc.returncode}) before the kill point: {stderr}")
                assert proc.returncode == 0, stderr
                return
            assert time.monotonic() < deadline, "the kill point was never reached"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        watch()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    if expect_killed:
        assert proc.returncode == -signal.SIGKILL


def kill_at(hook: str, count: int, name: str, args: list[str], folder: Path, watch: Any) -> None:
    """Run the CLI under :data:`DRIVER`'s ``hook`` and SIGKILL it where the hook pauses."""
    marker = folder / "paused"
    command = [sys.executable, "-c", DRIVER, hook, str(marker), str(count), name, "-q", *args]
    kill_when(command, marker.exists, watch)
    marker.unlink()


def copy_site(reference: Path, dest: Path, *keep: str) -> Path:
    """The reference world's inputs and pipeline file, plus the ``runs/`` folders in ``keep``."""
    for name in ("emissions", "coarse", "aux"):
        shutil.copytree(reference / name, dest / name)
    shutil.copy2(reference / "carbongeo.toml", dest / "carbongeo.toml")
    for sub in keep:
        shutil.copytree(reference / "runs" / sub, dest / "runs" / sub)
    return dest


def cube_names() -> list[str]:
    return [f"{kind}_{year}.npy" for year in YEARS for kind in ("X", "Y", "C")]


def watch_cubes(tiles: Path, shapes: dict[str, tuple[int, ...]]) -> Callable[[], None]:
    """A poll that loads every cube under its final name: it must be complete."""

    def watch() -> None:
        for name, shape in shapes.items():
            path = tiles / name
            try:
                cube = np.load(path, mmap_mode="r")
            except FileNotFoundError:
                continue
            assert cube.shape == shape and cube.dtype == np.float32, name
            assert np.isfinite(cube).any(), f"{name} is visible but empty"
        if (tiles / "index.json").exists():
            json.loads((tiles / "index.json").read_text())

    return watch


def watch_predictions(folder: Path) -> Callable[[], None]:
    """A poll that opens every ``Pred_*`` under its final name: it must be complete."""

    def watch() -> None:
        for path in folder.glob("Pred_*"):
            try:
                if path.suffix == ".npy":
                    array = np.load(path)
                else:
                    with rasterio.open(path) as src:
                        array = src.read(1)
            except FileNotFoundError:
                continue  # replaced between glob and open
            assert array.shape == (128, 256), path.name
            assert np.isfinite(array).mean() > 0.5, f"{path.name} is visible but unfinished"

    return watch


def watch_checkpoints(folder: Path) -> Callable[[], None]:
    """A poll that loads ``best.pt``/``latest.pt`` whenever they change: always complete."""
    seen: set[tuple[str, int, int]] = set()

    def watch() -> None:
        for name in ("best.pt", "latest.pt"):
            try:
                stat = (folder / name).stat()
            except FileNotFoundError:
                continue
            key = (name, stat.st_mtime_ns, stat.st_size)
            if key not in seen:
                load_checkpoint(folder / name)  # raises on a truncated file
                seen.add(key)

    return watch


def assert_same_cubes(tiles: Path, reference: Path) -> None:
    for name in cube_names():
        assert (tiles / name).read_bytes() == (reference / name).read_bytes(), name
    assert json.loads((tiles / "index.json").read_text()) == json.loads(
        (reference / "index.json").read_text()
    )


def assert_same_predictions(folder: Path, reference: Path) -> None:
    for year in YEARS:
        npy = f"Pred_{year}.npy"
        assert (folder / npy).read_bytes() == (reference / npy).read_bytes(), npy
        tif = f"Pred_{year}.tif"
        with rasterio.open(folder / tif) as got, rasterio.open(reference / tif) as want:
            np.testing.assert_array_equal(got.read(), want.read())
            assert got.tags() == want.tags()
            assert got.tags(1) == want.tags(1)
            assert (got.crs, got.transform) == (want.crs, want.transform)
            np.testing.assert_array_equal(got.nodatavals, want.nodatavals)  # NaN == NaN here
            assert got.overviews(1) == want.overviews(1)


def assert_same_training(folder: Path, reference: Path) -> None:
    """Same weights, optimiser and scheduler state, epochs and metrics (timings aside)."""
    for name in ("latest.pt", "best.pt"):
        got, want = load_checkpoint(folder / name), load_checkpoint(reference / name)
        got_run, want_run = got.training, want.training
        assert got_run is not None and want_run is not None
        assert got_run.epoch == want_run.epoch
        if name == "latest.pt":
            assert got_run.epoch == int(EPOCHS)
        assert got_run.best_metric == want_run.best_metric
        assert got.weights.keys() == want.weights.keys()
        for key, tensor in want.weights.items():
            assert torch.equal(got.weights[key], tensor), f"{name}: {key}"
        _assert_same_state(got_run.optimizer, want_run.optimizer, f"{name} optimizer")
        assert got_run.scheduler == want_run.scheduler
        assert got.normalization == want.normalization
        assert got_run.partial is None and want_run.partial is None
        assert _untimed(got_run.history) == _untimed(want_run.history)
    got_log = (folder / "train_log.csv").read_text().splitlines()
    want_log = (reference / "train_log.csv").read_text().splitlines()
    header = want_log[0].split(",")
    timed = [i for i, column in enumerate(header) if column in TIMING_COLUMNS]
    assert len(got_log) == len(want_log) == int(EPOCHS) + 1

    def untimed(line: str) -> list[str]:
        return [v for i, v in enumerate(line.split(",")) if i not in timed]

    assert [untimed(line) for line in got_log] == [untimed(line) for line in want_log]


def _epoch(path: Path) -> int:
    """Completed epochs recorded in a training checkpoint."""
    training = load_checkpoint(path).training
    assert training is not None
    return training.epoch


def _untimed(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in history]


def _assert_same_state(got: Any, want: Any, where: str) -> None:
    if isinstance(want, torch.Tensor):
        assert torch.equal(got, want), where
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            _assert_same_state(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_same_state(a, b, f"{where}[{i}]")
    else:
        assert got == want, where


# --------------------------------------------------------------------------- the reference run
@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny world run without interruption: tile, split, train (2 epochs), mosaic."""
    root = tmp_path_factory.mktemp("fault-reference")
    generate_world(root, seed=0, size="tiny")
    config = str(root / "carbongeo.toml")
    carbongeo("tile", "-c", config)
    carbongeo("split", "-c", config)
    carbongeo("train", "-c", config, "--epochs", EPOCHS)
    carbongeo("mosaic", "-c", config)
    yield root


@pytest.fixture(scope="module")
def cube_shapes(reference: Path) -> dict[str, tuple[int, ...]]:
    tiles = reference / "runs" / "tiles"
    return {name: np.load(tiles / name, mmap_mode="r").shape for name in cube_names()}


# --------------------------------------------------------------------------- tile
def test_sigkill_during_tile_then_rerun(
    reference: Path, tmp_path: Path, cube_shapes: dict[str, tuple[int, ...]]
) -> None:
    site = copy_site(reference, tmp_path)
    tiles = site / "runs" / "tiles"
    config = str(site / "carbongeo.toml")
    watch = watch_cubes(tiles, cube_shapes)
    # Killed after the second block has written its tiles into the temporary cubes.
    kill_at("tile-block", 2, "-", ["tile", "-c", config], site, watch)
    left = temporaries(tiles)
    assert any(name.startswith(".X_2014.tmp-") for name in left), left  # killed mid-work
    assert not [p for p in tiles.iterdir() if not p.name.startswith(".")]  # nothing final

    carbongeo("tile", "-c", config)
    assert_same_cubes(tiles, reference / "runs" / "tiles")
    assert temporaries(site) == []  # the dead run's temporaries are cleaned up


@pytest.mark.slow
def test_sigkill_while_tile_renames_its_cubes(
    reference: Path, tmp_path: Path, cube_shapes: dict[str, tuple[int, ...]]
) -> None:
    site = copy_site(reference, tmp_path)
    tiles = site / "runs" / "tiles"
    config = str(site / "carbongeo.toml")
    kill_at("tile-commit", 4, "-", ["tile", "-c", config], site, watch_cubes(tiles, cube_shapes))
    final = sorted(p.name for p in tiles.glob("[XYC]_*.npy"))
    assert 0 < len(final) < len(cube_names())  # killed between two renames
    assert not (tiles / "index.json").exists()  # the index is written last
    for name in final:  # what is in place is complete (and already what it will be)
        assert (tiles / name).read_bytes() == (reference / "runs" / "tiles" / name).read_bytes()

    carbongeo("tile", "-c", config)
    assert_same_cubes(tiles, reference / "runs" / "tiles")
    assert temporaries(site) == []


@pytest.mark.slow
def test_sigkill_during_retile_keeps_the_old_cubes(
    reference: Path, tmp_path: Path, cube_shapes: dict[str, tuple[int, ...]]
) -> None:
    site = copy_site(reference, tmp_path, "tiles")
    tiles = site / "runs" / "tiles"
    before = {p.name: p.read_bytes() for p in tiles.iterdir() if not p.name.startswith(".")}
    config = str(site / "carbongeo.toml")
    kill_at("tile-block", 3, "-", ["tile", "-c", config], site, watch_cubes(tiles, cube_shapes))
    assert temporaries(tiles)
    after = {p.name: p.read_bytes() for p in tiles.iterdir() if not p.name.startswith(".")}
    assert after == before  # the previous outputs are untouched until the new ones are complete

    carbongeo("tile", "-c", config)
    assert_same_cubes(tiles, reference / "runs" / "tiles")
    assert temporaries(site) == []


# --------------------------------------------------------------------------- train
def test_sigkill_during_train_then_resume(reference: Path, tmp_path: Path) -> None:
    site = copy_site(reference, tmp_path, "tiles")
    checkpoints = site / "runs" / "checkpoints"
    config = str(site / "carbongeo.toml")
    args = ["train", "-c", config, "--epochs", EPOCHS]
    # Tiny world: 2 steps per epoch, so step 3 is the middle of epoch 2.
    kill_at("train-step", 3, "-", args, site, watch_checkpoints(checkpoints))
    assert _epoch(checkpoints / "latest.pt") == 1

    carbongeo(*args)  # resumes from latest.pt
    assert_same_training(checkpoints, reference / "runs" / "checkpoints")
    assert temporaries(site) == []


@pytest.mark.slow
def test_sigkill_while_saving_a_checkpoint(reference: Path, tmp_path: Path) -> None:
    site = copy_site(reference, tmp_path, "tiles")
    checkpoints = site / "runs" / "checkpoints"
    config = str(site / "carbongeo.toml")
    args = ["train", "-c", config, "--epochs", EPOCHS]
    # Saves: epoch 1 best.pt, latest.pt; the third is epoch 2's first, killed half-written.
    kill_at("train-save", 3, "-", args, site, watch_checkpoints(checkpoints))
    half_written = temporaries(checkpoints)
    assert len(half_written) == 1 and half_written[0].endswith(".pt")
    assert _epoch(checkpoints / "latest.pt") == 1

    carbongeo(*args)
    assert_same_training(checkpoints, reference / "runs" / "checkpoints")
    assert temporaries(site) == []  # the half-written temporary is removed


# --------------------------------------------------------------------------- mosaic
def test_sigkill_during_mosaic_then_rerun(reference: Path, tmp_path: Path) -> None:
    site = copy_site(reference, tmp_path, "tiles", "checkpoints")
    predictions = site / "runs" / "predictions"
    config = str(site / "carbongeo.toml")
    watch = watch_predictions(predictions)
    # Killed once the first rows of 2015 are streamed: 2014 is done, 2015 half-way.
    kill_at("mosaic-rows", 1, "Pred_2015.npy", ["mosaic", "-c", config], site, watch)
    assert sorted(p.name for p in predictions.glob("Pred_*")) == ["Pred_2014.npy", "Pred_2014.tif"]
    assert any(name.startswith(".Pred_2015") for name in temporaries(predictions))

    carbongeo("mosaic", "-c", config)  # 2014 is kept, 2015 and 2016 are computed
    assert_same_predictions(predictions, reference / "runs" / "predictions")
    assert temporaries(site) == []


@pytest.mark.slow
def test_sigkill_between_the_two_outputs_of_a_year(reference: Path, tmp_path: Path) -> None:
    site = copy_site(reference, tmp_path, "tiles", "checkpoints")
    predictions = site / "runs" / "predictions"
    config = str(site / "carbongeo.toml")
    watch = watch_predictions(predictions)
    kill_at("mosaic-publish", 1, "Pred_2015.tif", ["mosaic", "-c", config], site, watch)
    names = sorted(p.name for p in predictions.glob("Pred_*"))
    assert names == ["Pred_2014.npy", "Pred_2014.tif", "Pred_2015.npy"]  # .tif not yet renamed

    carbongeo("mosaic", "-c", config)  # 2015 lacks its .tif: redone, not skipped
    assert_same_predictions(predictions, reference / "runs" / "predictions")
    assert temporaries(site) == []


# --------------------------------------------------------------------------- plain python -m
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["tile", "mosaic"])
def test_sigkill_python_m_as_soon_as_a_temporary_appears(
    stage: str, reference: Path, tmp_path: Path, cube_shapes: dict[str, tuple[int, ...]]
) -> None:
    """No hook at all: kill ``python -m carbongeo`` when its first temporary file shows up."""
    keep = () if stage == "tile" else ("tiles", "checkpoints")
    site = copy_site(reference, tmp_path, *keep)
    folder = site / "runs" / ("tiles" if stage == "tile" else "predictions")
    watch = watch_cubes(folder, cube_shapes) if stage == "tile" else watch_predictions(folder)
    config = str(site / "carbongeo.toml")
    command = [sys.executable, "-m", "carbongeo", "-q", stage, "-c", config]
    # A fast machine may finish first; the run must then simply be complete.
    kill_when(command, lambda: bool(temporaries(folder)), watch, expect_killed=False)
    carbongeo(stage, "-c", config)
    if stage == "tile":
        assert_same_cubes(folder, reference / "runs" / "tiles")
    else:
        assert_same_predictions(folder, reference / "runs" / "predictions")
    assert temporaries(site) == []
