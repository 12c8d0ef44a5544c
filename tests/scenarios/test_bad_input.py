"""Bad inputs through the real command line: one line, exit code 2, nothing half-written.

Every case breaks one thing in an otherwise good tiny world (``carbongeo synth --size tiny``) and
runs the command a user would run. The contract checked each time: exit status 2, exactly one line
on stderr that starts with ``carbongeo: error:`` and names what to fix, no traceback, and no
output left behind (no cube, index, checkpoint or prediction, and no temporary file). A few
representative cases run ``python -m carbongeo`` in a fresh process; the rest call the click group
in-process, which also lets the disk-full cases patch the low-level writers.

Decisions recorded here:

* NaN and +/-inf in a source are nodata, not an error: the run succeeds and they stay NaN.
* Negative emissions in the target are refused (one line naming the file and the pixel count):
  an inventory with negative values is a data error, and clamping would hide it.
* A target year without a single valid pixel on the grid is refused the same way.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import torch
from _scenario import (
    assert_error,
    assert_ok,
    cli,
    config_of,
    copy_world,
    edit_config,
    files,
    invoke,
    rewrite_raster,
    temporaries,
)
from affine import Affine
from conftest import write_netcdf, write_raster
from rasterio._err import CPLE_AppDefinedError

import carbongeo.store.predictions as predictions_module
from carbongeo.grid import Window
from carbongeo.store.tiles import load_index, read_window

pytestmark = pytest.mark.usefixtures("single_thread")

CUBE = re.compile(r"^[XYC]_\d{4}\.npy$")


# --------------------------------------------------------------------------- running the CLI


# --------------------------------------------------------------------------- what a run left


def assert_nothing_written(
    site: Path, *, cubes: bool = True, index: bool = True, checkpoints: bool = True
) -> None:
    """No temporary file and no prediction anywhere; no cube, index or checkpoint unless the
    test put them there itself (``False``)."""
    assert temporaries(site) == []
    runs = site / "runs"
    found = sorted(p.name for p in runs.rglob("*")) if runs.exists() else []
    if cubes:
        assert [n for n in found if CUBE.match(n)] == []
    if index:
        assert "index.json" not in found
    if checkpoints:
        assert [n for n in found if n.endswith(".pt")] == []
    assert [n for n in found if n.startswith("Pred_")] == []


def assert_no_new_outputs(site: Path, before: set[str]) -> None:
    assert temporaries(site) == []
    now = {str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()}
    assert now - before == set(), sorted(now - before)


# --------------------------------------------------------------------------- worlds


@pytest.fixture(scope="module")
def trained(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world tiled, split, trained for one epoch and mosaicked (read-only for tests)."""
    folder = tmp_path_factory.mktemp("bad-input-trained")
    site = copy_world(world, folder)
    config = str(site / "carbongeo.toml")
    for args in (["tile"], ["split"], ["train", "--epochs", "1"], ["mosaic"]):
        assert_ok(invoke(*args, "-c", config))
    return site


@pytest.fixture
def site(world: Path, tmp_path: Path) -> Path:
    """A private copy of the world's inputs."""
    return copy_world(world, tmp_path / "site")


# --------------------------------------------------------------------------- representative cases
def _missing(site: Path) -> tuple[str, ...]:
    (site / "aux" / "ntl_2015.tif").unlink()
    return "aux[0].path (ntl)", "ntl_2015.tif", "not found"


def _corrupt(site: Path) -> tuple[str, ...]:
    (site / "aux" / "ntl_2015.tif").write_bytes(np.random.default_rng(0).bytes(5000))
    return "aux[0].path (ntl)", "ntl_2015.tif", "cannot open as a raster"


def _no_crs(site: Path) -> tuple[str, ...]:
    path = site / "aux" / "roads.tif"
    with rasterio.open(path) as src:
        data, transform = src.read(1), src.transform
    path.unlink()
    write_raster(path, data, crs=None, transform=transform, nodata=-9999.0)
    return "roads.tif", "has no CRS", "gdal_edit.py -a_srs"


def _workdir_in_a_file(site: Path) -> tuple[str, ...]:
    (site / "blocker").write_text("a regular file where the workdir should go\n")
    edit_config(site, 'workdir = "runs"', 'workdir = "blocker/runs"')
    return "blocker/runs/tiles", "Not a directory"


@pytest.mark.parametrize(
    "breaks", [_missing, _corrupt, _no_crs, _workdir_in_a_file], ids=lambda f: f.__name__[1:]
)
def test_tile_through_python_m(breaks: Callable[[Path], tuple[str, ...]], site: Path) -> None:
    fragments = breaks(site)
    proc = cli("tile", "-c", config_of(site))
    assert_error(proc, *fragments)
    assert proc.stdout == ""
    assert_nothing_written(site)


def test_text_file_as_checkpoint_through_python_m(
    trained: Path, world: Path, tmp_path: Path
) -> None:
    site = copy_world(world, tmp_path / "site", "tiles", source=trained)
    fake = site / "runs" / "checkpoints" / "best.pt"
    fake.parent.mkdir(parents=True)
    fake.write_text("this is not a checkpoint\n")
    proc = cli("mosaic", "-c", config_of(site))
    assert_error(proc, str(fake), "not a carbongeo checkpoint")
    assert_nothing_written(site, cubes=False, index=False, checkpoints=False)


# --------------------------------------------------------------------------- broken sources
def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(4096))


def _damage_pixels(path: Path) -> None:
    """Keep the TIFF header and directory, overwrite the compressed blocks: reads fail later."""
    data = bytearray(path.read_bytes())
    data[1000:-2000] = np.random.default_rng(2).bytes(len(data) - 3000)
    path.write_bytes(bytes(data))


def _shift_far_away(path: Path) -> None:
    with rasterio.open(path) as src:
        data, t, crs, nodata = src.read(1), src.transform, src.crs, src.nodata
    write_raster(path, data, crs.to_string(), Affine(t.a, 0, t.c + 1e7, 0, t.e, t.f), nodata)


def _all_nodata(path: Path) -> None:
    rewrite_raster(path, lambda a: a.fill(-9999.0))


def _negative(path: Path) -> None:
    def change(a: np.ndarray) -> None:
        a[5:8, 5:9] = -3.0  # 12 pixels
        a[100, 200] = -0.5

    rewrite_raster(path, change)


SOURCE_CASES: dict[str, tuple[str, Callable[[Path], None], tuple[str, ...]]] = {
    "missing-target": (
        "emissions/co2_2016.tif",
        Path.unlink,
        ("target.path: file for year 2016 not found", "co2_2016.tif"),
    ),
    "corrupt-target": (
        "emissions/co2_2015.tif",
        _random_bytes,
        ("target.path", "co2_2015.tif", "cannot open as a raster"),
    ),
    "empty-aux": (
        "aux/roads.tif",
        lambda p: p.write_bytes(b""),
        ("aux[1].path (roads)", "roads.tif", "cannot open as a raster"),
    ),
    "empty-target": (
        "emissions/co2_2014.tif",
        lambda p: p.write_bytes(b""),
        ("target.path", "co2_2014.tif", "cannot open as a raster"),
    ),
    "damaged-blocks": (
        "aux/population_2015.tif",
        _damage_pixels,
        ("aux[4].path (population)", "population_2015.tif", "read failed"),
    ),
    "no-overlap": (
        "aux/roads.tif",
        _shift_far_away,
        ("roads.tif", "does not overlap the grid"),
    ),
    "all-nodata-target-year": (
        "emissions/co2_2015.tif",
        _all_nodata,
        ("target.path", "co2_2015.tif", "no valid pixel on the grid for 2015", "nodata"),
    ),
    "negative-target": (
        "emissions/co2_2015.tif",
        _negative,
        ("co2_2015.tif", "13 pixel(s) with negative emissions", "2015", "lowest -3"),
    ),
}


@pytest.mark.parametrize("case", sorted(SOURCE_CASES))
def test_broken_source(case: str, site: Path) -> None:
    relative, breaks, fragments = SOURCE_CASES[case]
    breaks(site / relative)
    assert_error(invoke("tile", "-c", config_of(site)), *fragments)
    assert_nothing_written(site)


def test_refused_year_leaves_other_years_alone(site: Path) -> None:
    """Only the year with negative emissions is refused; the index keeps the good years."""
    _negative(site / "emissions" / "co2_2015.tif")
    assert_ok(invoke("tile", "-c", config_of(site), "--year", "2014"))
    assert (site / "runs" / "tiles" / "Y_2014.npy").is_file()
    assert_error(invoke("tile", "-c", config_of(site), "--year", "2015"), "co2_2015.tif")
    assert not (site / "runs" / "tiles" / "Y_2015.npy").exists()
    assert load_index(site / "runs" / "tiles").years == [2014]  # the index is untouched
    assert temporaries(site) == []


def test_wrong_band_number(site: Path) -> None:
    edit_config(site, 'name = "roads"', 'name = "roads"\nband = 2')
    line = assert_error(invoke("tile", "-c", config_of(site)), "roads.tif", "band 2 requested")
    assert "has 1 band(s)" in line
    assert_nothing_written(site)


def test_netcdf_without_georeferencing(site: Path) -> None:
    write_netcdf(site / "aux" / "extra.nc", np.ones((20, 20)), georeferenced=False)
    edit_config(site, "[split]", '[[aux]]\nname = "extra"\npath = "aux/extra.nc"\n\n[split]')
    assert_error(invoke("tile", "-c", config_of(site)), "extra.nc", "no georeferencing found")
    assert_nothing_written(site)


def test_nan_and_inf_are_nodata_not_errors(site: Path) -> None:
    """NaN and +/-inf in the target and in an aux band become NaN in the cubes; the run succeeds."""

    def target_change(a: np.ndarray) -> None:
        a[30, 40], a[31, 41], a[32, 42] = np.nan, np.inf, -np.inf

    rewrite_raster(site / "emissions" / "co2_2015.tif", target_change)
    # dist_roads lies on the grid's lattice, 4 pixels up and left of the grid's origin.
    ar, ac = 10, 20

    def aux_change(a: np.ndarray) -> None:
        a[ar + 4, ac + 4], a[ar + 5, ac + 5], a[ar + 6, ac + 6] = np.nan, np.inf, -np.inf

    rewrite_raster(site / "aux" / "dist_roads.tif", aux_change)

    assert_ok(invoke("tile", "-c", config_of(site)))
    tiles = site / "runs" / "tiles"
    index = load_index(tiles)
    y = read_window(np.load(tiles / "Y_2015.npy", mmap_mode="r"), index, Window(30, 40, 3, 3))[0]
    assert np.isnan(np.diag(y)).all()
    assert np.isfinite(y[0, 1:]).all() and np.isfinite(y[1:, 0]).all()  # neighbours untouched
    band = index.bands.index("dist_roads")
    for year in (2014, 2015, 2016):
        x = read_window(
            np.load(tiles / f"X_{year}.npy", mmap_mode="r"), index, Window(ar, ac, 3, 3)
        )
        assert np.isnan(np.diag(x[band])).all()
        assert np.isfinite(x[band][0, 1:]).all()
    totals = index.totals[2015]
    assert np.isfinite(totals["target_source"]) and np.isfinite(totals["target_aligned"])
    assert totals["target_source"] == pytest.approx(totals["target_aligned"], rel=1e-9)
    assert temporaries(site) == []
    assert_ok(invoke("split", "-c", config_of(site)))


# --------------------------------------------------------------------------- the pipeline file
CONFIG_CASES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "unknown-top-key": (
        'workdir = "runs"',
        'workdir = "runs"\ncolour = "red"',
        ("colour: unknown key",),
    ),
    "unknown-table-key": (
        "epochs = 2",
        "epochs = 2\nepoch = 3",
        ("train.epoch: unknown key", "epochs"),
    ),
    "unknown-source-key": (
        'units = "t CO2 / cell / yr"',
        'units = "t CO2 / cell / yr"\nunit = "t"',
        ("target.unit: unknown key",),
    ),
    "string-for-int": ("epochs = 2", 'epochs = "two"', ("train.epochs: expected int", "'two'")),
    "float-for-int": ("tile_size = 64", "tile_size = 64.5", ("grid.tile_size: expected int",)),
    "bool-for-float": ("lr = 2e-3", "lr = true", ("train.lr: expected float",)),
    "bad-kind": ('kind = "extensive"', 'kind = "summed"', ("target.kind", "'summed'")),
    "bad-years": ('years = "2014-2016"', 'years = "2016-2014"', ("years", "ends before it starts")),
    "scale-not-dividing": ("scale = 8", "scale = 7", ("grid.scale: 7 does not divide",)),
    "invalid-toml": ("[split]", "[split\n", ("not valid TOML",)),
    "list-for-int": ("[model]\ndim = 8", "[model]\ndim = [8]", ("model.dim: expected int",)),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_pipeline_file(case: str, site: Path) -> None:
    old, new, fragments = CONFIG_CASES[case]
    edit_config(site, old, new)
    for command in (["tile"], ["train", "--epochs", "1"]):
        assert_error(invoke(*command, "-c", config_of(site)), *fragments)
    assert not (site / "runs").exists()


# --------------------------------------------------------------------------- tiles and checkpoints
@pytest.mark.parametrize("kinds", [("X",), ("Y",), ("X", "Y")], ids="+".join)
def test_missing_year_inside_the_time_window(
    kinds: tuple[str, ...], trained: Path, world: Path, tmp_path: Path
) -> None:
    """2015 is the neighbour of 2014 and 2016: without its cubes nothing can be trained."""
    site = copy_world(world, tmp_path / "site", "tiles", source=trained)
    for kind in kinds:
        (site / "runs" / "tiles" / f"{kind}_2015.npy").unlink()
    line = assert_error(invoke("train", "-c", config_of(site), "--epochs", "1"), "2015")
    assert "carbongeo tile --year 2015" in line
    assert not (site / "runs" / "checkpoints").exists()
    if "X" in kinds:  # mosaic of 2016 reads the aux bands of 2015
        checkpoint = str(trained / "runs" / "checkpoints" / "best.pt")
        for year in ("2014", "2016"):
            result = invoke(
                "mosaic", "-c", config_of(site), "--year", year, "--checkpoint", checkpoint
            )
            assert_error(result, "X_2015.npy", "carbongeo tile --year 2015")
    assert_nothing_written(site, cubes=False, index=False)


def _scale_4(site: Path) -> None:
    edit_config(site, "scale = 8", "scale = 4")


def _drop_last_aux(site: Path) -> None:
    path = site / "carbongeo.toml"
    text = path.read_text()
    start = text.index('[[aux]]\nname = "dist_roads"')
    path.write_text(text[:start] + text[text.index("[split]") :])


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (_scale_4, ("grid.scale: 4 in this config", "trained with 8")),
        (_drop_last_aux, ("trained with 9 bands", "this config has 8")),
    ],
    ids=["scale", "bands"],
)
def test_checkpoint_of_another_config(
    change: Callable[[Path], None], fragments: tuple[str, ...], trained: Path, site: Path
) -> None:
    change(site)
    config = config_of(site)
    assert_ok(invoke("tile", "-c", config))
    assert_ok(invoke("split", "-c", config))
    before = files(site)
    checkpoint = str(trained / "runs" / "checkpoints" / "best.pt")
    assert_error(invoke("mosaic", "-c", config, "--checkpoint", checkpoint), *fragments)
    assert_no_new_outputs(site, before)
    # Resuming training from a foreign latest.pt is refused too.
    shutil.copytree(trained / "runs" / "checkpoints", site / "runs" / "checkpoints")
    before = files(site)
    result = invoke("train", "-c", config, "--epochs", "1")
    assert_error(result, "latest.pt", "another data or model configuration", "--no-resume")
    assert_no_new_outputs(site, before)


def _text(path: Path) -> None:
    path.write_text("hello\n")


def _random(path: Path) -> None:
    path.write_bytes(np.random.default_rng(3).bytes(2048))


def _truncated(path: Path, good: Path) -> None:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _no_marker(path: Path) -> None:
    torch.save({"model": {"weight": torch.zeros(3)}}, path)


class _Payload:
    """Any pickled Python object: never unpickled by carbongeo."""


def _pickled_object(path: Path) -> None:
    torch.save({"format": "carbongeo-checkpoint", "payload": _Payload()}, path)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_text, "not a carbongeo checkpoint or corrupt"),
        (_random, "not a carbongeo checkpoint or corrupt"),
        (_truncated, "not a carbongeo checkpoint or corrupt"),
        (_no_marker, "no 'carbongeo-checkpoint' marker"),
        (_pickled_object, "refused: the file holds pickled Python objects"),
    ],
    ids=["text", "random", "truncated", "no-marker", "pickle"],
)
def test_not_a_checkpoint(
    make: Callable[..., None], fragment: str, trained: Path, world: Path, tmp_path: Path
) -> None:
    site = copy_world(world, tmp_path / "site", "tiles", source=trained)
    fake = tmp_path / "best.pt"
    if make is _truncated:
        make(fake, trained / "runs" / "checkpoints" / "best.pt")
    else:
        make(fake)
    assert_error(
        invoke("mosaic", "-c", config_of(site), "--checkpoint", str(fake)), str(fake), fragment
    )
    assert_nothing_written(site, cubes=False, index=False)


def test_evaluate_with_a_checkpoint_that_is_missing_or_not_a_checkpoint(
    trained: Path, tmp_path: Path
) -> None:
    site = copy_world(trained, tmp_path / "site", "tiles", "predictions", source=trained)
    missing = tmp_path / "nowhere.pt"
    assert_error(
        invoke("evaluate", "-c", config_of(site), "--checkpoint", str(missing)),
        str(missing),
        "carbongeo train",
    )
    fake = tmp_path / "fake.pt"
    _text(fake)
    assert_error(
        invoke("evaluate", "-c", config_of(site), "--checkpoint", str(fake)),
        str(fake),
        "not a carbongeo checkpoint or corrupt",
    )
    assert not (site / "runs" / "reports").exists()


# --------------------------------------------------------------------------- unwritable outputs
def _chmod_blocks_writes(folder: Path) -> bool:
    """Whether a read-only folder really refuses writes here (it does not for root)."""
    probe = folder / "probe"
    probe.mkdir()
    probe.chmod(0o500)
    try:
        (probe / "file").write_text("x")
    except PermissionError:
        return True
    finally:
        probe.chmod(0o700)
        shutil.rmtree(probe)
    return False


def test_synth_into_a_file(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x")
    result = invoke("synth", "--out", str(tmp_path / "blocker" / "world"), "--size", "tiny")
    assert_error(result, "cannot write the synthetic world", "blocker/world")


@pytest.mark.parametrize(
    ("command", "folder"),
    [
        (["train", "--epochs", "1"], "checkpoints"),
        (["mosaic"], "predictions"),
        (["evaluate"], "reports"),
        (["preview", "--year", "2015"], "reports"),
    ],
    ids=["train", "mosaic", "evaluate", "preview"],
)
def test_output_folder_is_a_file(
    command: list[str], folder: str, trained: Path, world: Path, tmp_path: Path
) -> None:
    """A regular file where an output folder must go: mkdir fails even for root."""
    runs = ["tiles"] + (["checkpoints"] if folder != "checkpoints" else [])
    runs += ["predictions"] if folder == "reports" else []
    site = copy_world(world, tmp_path / "site", *runs, source=trained)
    (site / "runs" / folder).write_text("a file in the way\n")
    before = files(site)
    line = assert_error(invoke(*command, "-c", config_of(site)), f"runs/{folder}")
    assert "File exists" in line or "Not a directory" in line
    assert_no_new_outputs(site, before)


def test_read_only_workdir(site: Path, tmp_path: Path) -> None:
    if not _chmod_blocks_writes(tmp_path):
        pytest.skip("permissions do not block writes here (running as root)")
    runs = site / "runs"
    runs.mkdir()
    runs.chmod(0o500)
    try:
        assert_error(invoke("tile", "-c", config_of(site)), "runs/tiles", "Permission denied")
    finally:
        runs.chmod(0o700)
    assert_nothing_written(site)


# --------------------------------------------------------------------------- disk full
def test_disk_full_before_tiling(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The free-space check refuses before the first byte is written."""
    usage = shutil.disk_usage(site)
    monkeypatch.setattr(
        "carbongeo.stages.tile.shutil.disk_usage", lambda _: usage._replace(free=1_000_000)
    )
    assert_error(invoke("tile", "-c", config_of(site)), "the cubes need", "GB are free")
    assert_nothing_written(site)


@pytest.mark.parametrize(
    ("failing", "fail_at"), [("w+", 2), ("r+", 4)], ids=["creating-a-cube", "writing-tiles"]
)
def test_disk_full_while_tiling(
    failing: str, fail_at: int, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from the cube files (created, then opened by each block): nothing is kept."""
    real = np.lib.format.open_memmap
    calls = {"w+": 0, "r+": 0}

    def open_memmap(filename: Any, mode: str = "r+", *args: Any, **kwargs: Any) -> Any:
        calls[mode] = calls.get(mode, 0) + 1
        if mode == failing and calls[mode] == fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real(filename, mode, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "open_memmap", open_memmap)
    assert_error(invoke("tile", "-c", config_of(site)), "No space left on device")
    assert calls[failing] >= fail_at
    assert_nothing_written(site)


def test_disk_full_writing_the_tile_index(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        if self.name.startswith(".index"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    assert_error(invoke("tile", "-c", config_of(site)), "index.json", "No space left on device")
    tiles = site / "runs" / "tiles"
    assert not (tiles / "index.json").exists()
    assert temporaries(site) == []
    for cube in tiles.glob("*.npy"):  # what was published is complete
        assert np.isfinite(np.load(cube, mmap_mode="r")).any()


def test_disk_full_saving_a_checkpoint(
    trained: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch reports a failed write as a RuntimeError: still one line, no partial checkpoint."""
    site = copy_world(world, tmp_path / "site", "tiles", source=trained)  # with split.json
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        Path(f).write_bytes(b"PK\x03\x04 partial")  # what a full disk leaves behind
        if os.path.exists("/dev/full"):  # the real error of torch on a full device
            real_save(obj, "/dev/full", *args, **kwargs)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704")

    monkeypatch.setattr(torch, "save", save)
    assert_error(invoke("train", "-c", config_of(site), "--epochs", "1"), "best.pt", "free space")
    checkpoints = site / "runs" / "checkpoints"
    assert list(checkpoints.glob("*.pt")) == []
    assert temporaries(site) == []


def _npy_disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    class FullDisk:
        """A file that accepts the .npy header and a few rows, then reports ENOSPC."""

        def __init__(self, file: Any) -> None:
            self._file = file
            self._written = 0

        def write(self, data: Any) -> int:
            size = memoryview(data).nbytes
            if self._written + size > 8192:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._written += size
            return self._file.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._file, name)

    def fake_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        file = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 - the caller closes it
        return FullDisk(file) if "w" in mode else file  # reads (the checkpoint hash) work

    monkeypatch.setattr(predictions_module, "open", fake_open, raising=False)


def _cog_disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    def copy(src: Any, dst: Any, **kwargs: Any) -> None:
        Path(dst).write_bytes(b"II*\x00 partial")  # a truncated TIFF under the temporary name
        raise CPLE_AppDefinedError(1, 3, f"{dst}: _tiffWriteProc: No space left on device")

    monkeypatch.setattr(rasterio.shutil, "copy", copy)


@pytest.mark.parametrize(
    ("fill", "fragment"),
    [(_npy_disk_full, "Pred_2014.npy"), (_cog_disk_full, "Pred_2014.tif")],
    ids=["npy-rows", "cog-conversion"],
)
def test_disk_full_during_mosaic(
    fill: Callable[[pytest.MonkeyPatch], None],
    fragment: str,
    trained: Path,
    world: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = copy_world(world, tmp_path / "site", "tiles", "checkpoints", source=trained)
    fill(monkeypatch)
    assert_error(invoke("mosaic", "-c", config_of(site)), fragment, "No space left on device")
    assert_nothing_written(site, cubes=False, index=False, checkpoints=False)
    assert not (site / "runs" / "predictions").exists() or not any(
        (site / "runs" / "predictions").iterdir()
    )


def test_disk_full_writing_a_plot(
    trained: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = copy_world(world, tmp_path / "site", "tiles", "predictions", source=trained)
    from matplotlib.figure import Figure

    def savefig(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> None:
        Path(fname).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fname))

    monkeypatch.setattr(Figure, "savefig", savefig)
    result = invoke("preview", "-c", config_of(site), "--year", "2015")
    assert_error(result, "reports/preview_2015.png", "No space left on device")
    reports = site / "runs" / "reports"
    assert not reports.exists() or sorted(p.name for p in reports.iterdir()) == []
    assert temporaries(site) == []


def test_failed_json_command_prints_nothing_on_stdout(site: Path) -> None:
    """--json commands print nothing on stdout when they fail (scripts parse stdout)."""
    result = invoke("check", "-c", config_of(site), "--json")
    assert_error(result, "index.json", "carbongeo tile")
    assert result.stdout == ""
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)
