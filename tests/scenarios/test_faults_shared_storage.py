"""Faults of shared storage: a second host in the same workdir, a kill between two renames.

* Two ``tile`` runs on different hosts (or PID namespaces) share one workdir. The second used to
  take the first one's temporaries for stale, because their process id is not alive where it
  looks, and deleted them: the first run's whole multi-year ``tile`` was lost. The second host is
  simulated twice: by a process that names another host and a process id that does not exist
  here (what a temporary from another machine looks like), and by running the second ``tile`` in
  a PID namespace of its own (``unshare``), where the first run's process id is not visible.
* ``mosaic --overwrite`` killed between the renames of ``Pred_<year>.npy`` and ``.tif`` left the
  new ``.npy`` beside the old ``.tif``, and the next run skipped the year as done.

As in ``test_faults.py``, a small driver wraps one internal function of the real command line so
that the process pauses at a known point; nothing in the package knows about it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _scenario import ENV, WORLD_FOLDERS, temporaries

from carbongeo.synth import generate_world

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX only")

YEARS = (2014, 2015, 2016)

DRIVER = r"""
import os, sys, time, types
from pathlib import Path

mode, marker, resume, fake_pid = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]


def pause():
    marker.write_text(str(os.getpid()))
    while not resume.exists():  # the test resumes the run, or kills it
        time.sleep(0.05)


if fake_pid != "-":  # this process is on another host: another name, a process id unknown here
    import socket
    socket.gethostname = lambda: "second-host"
    import carbongeo.io.atomic as atomic

    class _Os(types.ModuleType):
        def __getattr__(self, name):
            return getattr(os, name)

    fake_os = _Os("os")
    fake_os.getpid = lambda: int(fake_pid)
    atomic.os = fake_os

if mode == "tile-block":  # the first block has written its tiles into the temporary cubes
    import carbongeo.stages.tile as m
    original = m.write_block
    calls = [0]

    def write_tiles(*args, **kwargs):
        original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == 1:
            pause()

    m.write_block = write_tiles
elif mode == "mosaic-publish":  # Pred_2015.npy renamed into place, its .tif not yet
    import carbongeo.io.cog as m
    original_publish = m.COGWriter.publish

    def publish(self):
        if self.path.name == "Pred_2015.tif":
            pause()
        return original_publish(self)

    m.COGWriter.publish = publish

from carbongeo.cli.app import main

main(args=sys.argv[5:], prog_name="carbongeo")
"""


def carbongeo(*args: str, prefix: tuple[str, ...] = ()) -> None:
    """``python -m carbongeo -q ARGS`` (optionally under ``prefix``), which must succeed."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "carbongeo", "-q", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, f"carbongeo {' '.join(args)}: {proc.stderr}"


def start_paused(mode: str, args: list[str], folder: Path, fake_pid: str = "-") -> subprocess.Popen:
    """Start the command line under :data:`DRIVER` and wait until it pauses."""
    marker, resume = folder / "paused", folder / "resume"
    command = [sys.executable, "-c", DRIVER, mode, str(marker), str(resume), fake_pid, "-q", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 180
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before pausing: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, "the pause point was never reached"
        time.sleep(0.02)
    return proc


def resume_and_wait(proc: subprocess.Popen, folder: Path) -> subprocess.CompletedProcess:
    (folder / "resume").write_text("go")
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def dead_pid() -> int:
    """A process id that no process has here (beyond the kernel's largest)."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 4242
    except OSError:
        return 2**22 + 4242


def copy_site(reference: Path, dest: Path, *keep: str) -> Path:
    for name in WORLD_FOLDERS:
        shutil.copytree(reference / name, dest / name)
    shutil.copy2(reference / "carbongeo.toml", dest / "carbongeo.toml")
    for sub in keep:
        shutil.copytree(reference / "runs" / sub, dest / "runs" / sub)
    return dest


def assert_same_cubes(tiles: Path, reference: Path) -> None:
    for year in YEARS:
        for kind in ("X", "Y", "C"):
            name = f"{kind}_{year}.npy"
            assert (tiles / name).read_bytes() == (reference / name).read_bytes(), name
    assert json.loads((tiles / "index.json").read_text()) == json.loads(
        (reference / "index.json").read_text()
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny world tiled, split, trained (1 epoch) and mosaicked without interruption."""
    root = tmp_path_factory.mktemp("shared-reference")
    generate_world(root, seed=0, size="tiny")
    config = str(root / "carbongeo.toml")
    for args in (["tile"], ["split"], ["train", "--epochs", "1"], ["mosaic"]):
        carbongeo(*args, "-c", config)
    yield root


# --------------------------------------------------------------------------- a second host
def _two_hosts_tile(reference: Path, site: Path, fake_pid: str, prefix: tuple[str, ...]) -> None:
    tiles = site / "runs" / "tiles"
    config = str(site / "carbongeo.toml")
    first = start_paused(
        "tile-block", ["tile", "-c", config, "--years", "2014-2015"], site, fake_pid
    )
    try:
        assert temporaries(tiles)  # the first host is half-way through its cubes
        carbongeo("tile", "-c", config, "--year", "2016", prefix=prefix)  # the second host
        assert temporaries(tiles), "the second host deleted the first host's temporaries"
        done = resume_and_wait(first, site)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert done.returncode == 0, done.stderr.decode()
    assert_same_cubes(tiles, reference / "runs" / "tiles")  # all three years, as one run gives
    assert temporaries(site) == []


def test_second_host_keeps_the_first_hosts_temporaries(reference: Path, tmp_path: Path) -> None:
    """The first run names another host and a process id that does not exist here."""
    site = copy_site(reference, tmp_path)
    _two_hosts_tile(reference, site, str(dead_pid()), ())


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    proc = subprocess.run(
        ["unshare", "-Urpf", "--mount-proc", "true"], capture_output=True, timeout=30
    )
    return proc.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="no unprivileged PID namespaces here")
def test_pid_namespace_keeps_the_other_runs_temporaries(reference: Path, tmp_path: Path) -> None:
    """The second run lives in its own PID namespace: the first run's process is not visible."""
    site = copy_site(reference, tmp_path)
    _two_hosts_tile(reference, site, "-", ("unshare", "-Urpf", "--mount-proc"))


# --------------------------------------------------------------------------- the prediction pair
def test_sigkill_between_the_renames_of_a_pair_is_redone(reference: Path, tmp_path: Path) -> None:
    site = copy_site(reference, tmp_path, "tiles", "checkpoints")
    predictions = site / "runs" / "predictions"
    config = str(site / "carbongeo.toml")
    carbongeo("mosaic", "-c", config, "--overlap", "0")  # an older pair of every year
    old_tif = (predictions / "Pred_2015.tif").read_bytes()
    proc = start_paused("mosaic-publish", ["mosaic", "-c", config, "--overwrite"], site)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    want = reference / "runs" / "predictions"
    # Killed between the renames: the new .npy lies beside the older .tif.
    assert (predictions / "Pred_2015.npy").read_bytes() == (want / "Pred_2015.npy").read_bytes()
    assert (predictions / "Pred_2015.tif").read_bytes() == old_tif

    carbongeo("mosaic", "-c", config)  # 2014 is a pair and kept; 2015 is not one and redone
    for year in (2014, 2015):
        npy = np.load(predictions / f"Pred_{year}.npy")
        np.testing.assert_array_equal(npy, np.load(want / f"Pred_{year}.npy"))
        with rasterio.open(predictions / f"Pred_{year}.tif") as got:
            np.testing.assert_array_equal(got.read(1), npy)
    with rasterio.open(predictions / "Pred_2016.tif") as older:  # an older but whole pair: kept
        np.testing.assert_array_equal(older.read(1), np.load(predictions / "Pred_2016.npy"))
    assert temporaries(site) == []
