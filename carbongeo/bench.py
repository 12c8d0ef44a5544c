"""``carbongeo bench``: throughput and peak memory of tile, train and mosaic on this machine.

Everything runs on synthetic data written to a scratch folder (a temporary one, removed at the
end, unless ``out`` is given: then the scenes are kept there and reused by the next run):

* **tile**: for each scene side, a target in UTM (copied onto the grid), an intensive aux band in
  EPSG:4326 (warped) and an extensive one at half the resolution (split by area), as tiled,
  DEFLATE-compressed GeoTIFFs. Two measurements, each in a fresh process: a raw rasterio read of
  every source in 1024-pixel windows (the I/O floor) and
  :func:`carbongeo.stages.tile.tile_years` for one year. Throughput is in MB/s of uncompressed
  source data.
* **train**: tile cubes (9 aux bands, ``tile_size`` 128, ``scale`` 8, three years); tiles per
  second of the :class:`~carbongeo.training.data.CubeDataset` DataLoader (after a warm-up pass) for
  each number of workers, and of the training step (forward, loss, backward, clip, AdamW) on a
  batch already in memory, for the demo-size and the full-size model.
  The loader is not the bottleneck when its rate exceeds the step rate.
* **mosaic**: tile cubes, index and a small untrained checkpoint for each scene side;
  :func:`carbongeo.stages.mosaic.mosaic_years` in a fresh process, in megapixels per second.

Peak memory: every measurement runs in its own ``python -m carbongeo.bench _worker ...`` process,
which reports its ``ru_maxrss``. On Linux a new process starts with the high-water mark of the one
that forked it (even across ``exec``), so the parent imports nothing heavy (no numpy, torch or
rasterio: about 30 MB, reported as ``rss_floor_mb``) and generates no data itself. When psutil is
installed, the RSS of the worker's whole process tree (dask or DataLoader workers included) is
also sampled every 50 ms.

The API: :func:`bench_settings` (or :class:`BenchSettings`), :func:`run_bench` and
:func:`format_table`; the scripts in ``benchmarks/`` are thin wrappers that expose more knobs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from carbongeo import __version__
from carbongeo.config import DEVICES
from carbongeo.errors import CarbongeoError, ParameterError, WorkerError

# Nothing heavy may be imported at module level: see the module docstring.

STAGES = ("tile", "train", "mosaic")

# Synthetic data.
UTM = "EPSG:32650"
ORIGIN = (400_000.0, 3_400_000.0)
RESOLUTION = 100.0
STRIP = 1024  # rows per generated strip and side of a raw-read window
GDAL_CACHE_MB = 128  # the block cache tile_years uses
TILE = 128
SCALE = 8
BANDS = ("ntl", "pop", "road", "ndvi", "built", "lst", "elev", "water", "lights2")
TRAIN_YEARS = (2019, 2020, 2021)
MOSAIC_YEAR = 2020

Echo = Callable[[str], None]


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class BenchSettings:
    """What :func:`run_bench` measures.

    Attributes:
        tile_sizes: Sides in pixels of the tile scenes.
        mosaic_sizes: Sides in pixels of the mosaic scenes.
        train_tiles: Tiles per year of the training cubes.
        train_steps: Timed training steps per model (after one warm-up step).
        train_batch: Batch size of the loader and of the training step.
        loader_workers: DataLoader worker counts to measure.
        models: ``(name, dim, depth)`` of the models whose training step is measured.
        mosaic_model: ``(dim, depth)`` of the untrained network the mosaic runs.
        mosaic_predictor: ``model`` (the network) or ``fast`` (a numpy stand-in that measures the
            streaming machinery alone).
        device: ``auto``, ``cpu`` or ``cuda``, for the training step and the mosaic.
        tile_workers: ``workers`` of :func:`~carbongeo.stages.tile.tile_years` (default: threads).
        tile_scheduler: ``scheduler`` of :func:`~carbongeo.stages.tile.tile_years`.
        threads: torch intra-op threads of the train worker (default: torch's choice).
        stages: Stages to run, among ``tile``, ``train``, ``mosaic``.
        quick: Informational: the settings came from ``--quick``.
    """

    tile_sizes: tuple[int, ...] = (4096, 16384)
    mosaic_sizes: tuple[int, ...] = (2048, 8192)
    train_tiles: int = 48
    train_steps: int = 3
    train_batch: int = 8
    loader_workers: tuple[int, ...] = (0, 2)
    models: tuple[tuple[str, int, int], ...] = (("demo", 16, 1), ("full", 32, 2))
    mosaic_model: tuple[int, int] = (8, 1)
    mosaic_predictor: str = "model"
    device: str = "auto"
    tile_workers: int | None = None
    tile_scheduler: str | None = None
    threads: int | None = None
    stages: tuple[str, ...] = STAGES
    quick: bool = False


QUICK = BenchSettings(
    tile_sizes=(1024, 2048),
    mosaic_sizes=(256, 512),
    train_tiles=8,
    train_steps=2,
    train_batch=4,
    quick=True,
)
"""``--quick``: small scenes and few steps (about a minute on 2 idle cores)."""


def bench_settings(
    *,
    quick: bool = False,
    tile_sizes: Sequence[int] | None = None,
    mosaic_sizes: Sequence[int] | None = None,
    device: str = "auto",
    **overrides: Any,
) -> BenchSettings:
    """The default (or ``quick``) settings with the given sizes, device and other fields."""
    base = QUICK if quick else BenchSettings()
    if tile_sizes is not None:
        overrides["tile_sizes"] = tuple(int(s) for s in tile_sizes)
    if mosaic_sizes is not None:
        overrides["mosaic_sizes"] = tuple(int(s) for s in mosaic_sizes)
    settings = replace(base, device=device, **overrides)
    _validate(settings)
    return settings


def _validate(settings: BenchSettings) -> None:
    unknown = set(settings.stages) - set(STAGES)
    if unknown:
        raise ParameterError(f"unknown {sorted(unknown)}; use {', '.join(STAGES)}", param="stages")
    for name in ("tile_sizes", "mosaic_sizes"):
        sizes = getattr(settings, name)
        if any(size < TILE for size in sizes):
            raise ParameterError(f"every size must be >= {TILE} pixels, got {sizes}", param=name)
    if settings.train_tiles < 1 or settings.train_steps < 1 or settings.train_batch < 1:
        raise ParameterError("train_tiles, train_steps and train_batch must be >= 1")
    if any(w < 0 for w in settings.loader_workers):
        raise ParameterError(f"must be >= 0, got {settings.loader_workers}", param="loader_workers")
    if settings.device not in DEVICES:
        raise ParameterError(
            f"{settings.device!r} is not one of {', '.join(DEVICES)}", param="device"
        )
    if settings.mosaic_predictor not in ("model", "fast"):
        raise ParameterError(
            f"{settings.mosaic_predictor!r} is not one of model, fast", param="mosaic_predictor"
        )


def parse_sizes(text: str | None) -> tuple[int, ...] | None:
    """``"2048,8192"`` -> ``(2048, 8192)``; None stays None.

    Raises:
        ValueError: Not a comma-separated list of positive integers.
    """
    if text is None:
        return None
    try:
        sizes = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or any(size < TILE for size in sizes):
        raise ValueError(f"expected sizes >= {TILE} pixels, got {text!r}")
    return sizes


# --------------------------------------------------------------------------- running workers
def _peak_rss_mb(who: int) -> float:
    peak = resource.getrusage(who).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _sample_tree(proc: subprocess.Popen[bytes]) -> float | None:
    """Wait for ``proc``; the peak RSS sum of its process tree in MB (None without psutil)."""
    try:
        import psutil
    except ImportError:
        proc.wait()
        return None
    peak = 0
    try:
        root = psutil.Process(proc.pid)
    except psutil.Error:
        proc.wait()
        return None
    while proc.poll() is None:
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            members = []
        rss = 0
        for member in members:
            with contextlib.suppress(psutil.Error):
                rss += member.memory_info().rss
        peak = max(peak, rss)
        time.sleep(0.05)
    return peak / 2**20


def _run_worker(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh ``python -m carbongeo.bench _worker`` process.

    Returns:
        The worker's JSON result plus ``sampled_rss_mb`` (psutil, else None).

    Raises:
        WorkerError: The worker stopped on a user error (exit code 2).
        RuntimeError: The worker failed otherwise.
    """
    cmd = [sys.executable, "-m", "carbongeo.bench", "_worker", kind, json.dumps(params)]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        try:
            sampled = _sample_tree(proc)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    if proc.returncode == 2 and stderr.strip():
        raise WorkerError(stderr.strip().splitlines()[-1].removeprefix("carbongeo: error: "))
    if proc.returncode:
        raise RuntimeError(
            f"bench worker {kind} failed with exit code {proc.returncode}:\n{stderr[-4000:]}"
        )
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    result["sampled_rss_mb"] = None if sampled is None else round(sampled, 1)
    return result


def _round(value: float | None, digits: int = 3) -> float | None:
    if value is None or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}") if abs(value) < 10**digits else round(value, 1)


# --------------------------------------------------------------------------- orchestration
def run_bench(
    settings: BenchSettings | None = None,
    *,
    out: str | Path | None = None,
    echo: Echo | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return its results, ready for :func:`json.dumps`.

    Args:
        settings: What to measure (default: :func:`bench_settings`).
        out: Keep the generated scenes in this folder (and reuse those already there); by
            default they go to a temporary folder that is removed at the end.
        echo: Receives one progress line per step (e.g. ``print`` to stderr); None is silent.

    Returns:
        ``machine`` (CPUs, torch, device, load averages at start and end, ``rss_floor_mb``),
        ``settings``, ``seconds``, and per stage run: ``tile`` (one row per size: source MB,
        read and tile seconds, MB/s, ``tile_vs_read``, peak RSS), ``train`` (``loader`` rows
        per worker count and ``models`` rows, in tiles/s) and ``mosaic`` (one row per size:
        windows, seconds, ``megapixels_per_s``, worst coarse-cell mass error, peak RSS). Peak
        RSS values are MB: ``peak_rss_mb`` is the measured process's ``ru_maxrss``,
        ``sampled_rss_mb`` the psutil-sampled peak of its process tree (None without psutil).

    Raises:
        ParameterError: Bad settings.
        WorkerError: A measurement stopped on a user error (``cuda`` without a GPU, ...).
        RuntimeError: A measurement process failed (its stderr is in the message).
    """
    settings = settings or bench_settings()
    _validate(settings)
    say = echo or (lambda message: None)
    start = time.perf_counter()
    machine: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "carbongeo": __version__,
    }
    if settings.device == "cpu":  # no need to start torch to know
        machine.update(
            torch=metadata.version("torch"), device="cpu", device_name="cpu", torch_threads=None
        )
    else:
        info = _run_worker("info", {"device": settings.device, "threads": settings.threads})
        machine.update({k: info[k] for k in ("torch", "device", "device_name", "torch_threads")})
    say(
        f"bench: {machine['cpus']} CPUs, torch {machine['torch']}, device {machine['device']}, "
        f"load average {machine['load_average_start'][0]:.2f}"
    )
    root = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="carbongeo-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": machine,
        "settings": json.loads(json.dumps(asdict(settings))),  # tuples as lists
    }
    try:
        if "tile" in settings.stages:
            results["tile"] = _bench_tile(root, settings, say)
        if "train" in settings.stages:
            results["train"] = _bench_train(root, settings, machine["device"], say)
            machine["torch_threads"] = results["train"]["torch_threads"]
        if "mosaic" in settings.stages:
            results["mosaic"] = _bench_mosaic(root, settings, machine["device"], say)
    finally:
        if out is None:
            shutil.rmtree(root, ignore_errors=True)
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["rss_floor_mb"] = round(_peak_rss_mb(resource.RUSAGE_SELF), 1)
    machine["psutil"] = _has_psutil()
    results["seconds"] = round(time.perf_counter() - start, 1)
    return results


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def _bench_tile(root: Path, settings: BenchSettings, say: Echo) -> list[dict[str, Any]]:
    folders = {size: root / f"tile_{size}" for size in settings.tile_sizes}
    sizes = ", ".join(str(s) for s in folders)
    say(f"tile: writing scenes {sizes} (kept ones are reused)")
    made = _run_worker("prepare_tile", {"scenes": {str(s): str(f) for s, f in folders.items()}})
    rows = []
    for size, folder in folders.items():
        read = _run_worker("read", {"scene": str(folder)})
        tiled = _run_worker(
            "tile",
            {
                "scene": str(folder),
                "workers": settings.tile_workers,
                "scheduler": settings.tile_scheduler,
            },
        )
        megabytes = read["source_mb"]
        row = {
            "size": size,
            "source_mb": round(megabytes, 1),
            "generate_s": made["seconds"].get(str(size)),
            "tiles": tiled["tiles"],
            "read_s": round(read["wall_s"], 3),
            "read_mb_per_s": _round(megabytes / read["wall_s"]),
            "read_peak_rss_mb": round(read["peak_rss_mb"], 1),
            "tile_s": round(tiled["wall_s"], 3),
            "tile_mb_per_s": _round(megabytes / tiled["wall_s"]),
            "tile_vs_read": _round(read["wall_s"] / tiled["wall_s"]),
            "peak_rss_mb": round(tiled["peak_rss_mb"], 1),
            "workers_peak_rss_mb": round(tiled["children_peak_rss_mb"], 1),
            "sampled_rss_mb": tiled["sampled_rss_mb"],
        }
        say(
            f"tile {size}: {row['tile_mb_per_s']} MB/s (read {row['read_mb_per_s']} MB/s), "
            f"peak RSS {row['peak_rss_mb']:.0f} MB"
        )
        rows.append(row)
    return rows


def _bench_train(root: Path, settings: BenchSettings, device: str, say: Echo) -> dict[str, Any]:
    say(
        f"train: {settings.train_tiles} tiles x {len(TRAIN_YEARS)} years, loader workers "
        f"{list(settings.loader_workers)}, {settings.train_steps} steps per model"
    )
    result = _run_worker(
        "train",
        {
            "folder": str(root / f"train_{settings.train_tiles}"),
            "tiles": settings.train_tiles,
            "steps": settings.train_steps,
            "batch": settings.train_batch,
            "loader_workers": list(settings.loader_workers),
            "models": [list(m) for m in settings.models],
            "device": device,
            "threads": settings.threads,
        },
    )
    for loader in result["loader"]:
        loader["tiles_per_s"] = _round(loader["tiles_per_s"])
    for model in result["models"]:
        model["tiles_per_s"] = _round(model["tiles_per_s"])
        say(f"train step, {model['name']}: {model['tiles_per_s']} tiles/s")
    return {
        "samples": result["samples"],
        "batch": result["batch"],
        "steps": result["steps"],
        "torch_threads": result["torch_threads"],
        "loader": result["loader"],
        "models": result["models"],
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
    }


def _bench_mosaic(
    root: Path, settings: BenchSettings, device: str, say: Echo
) -> list[dict[str, Any]]:
    dim, depth = settings.mosaic_model
    folders = {
        size: root / f"mosaic_{size}_dim{dim}_depth{depth}" for size in settings.mosaic_sizes
    }
    sizes = ", ".join(str(s) for s in folders)
    say(f"mosaic: writing scenes {sizes} (kept ones are reused)")
    made = _run_worker(
        "prepare_mosaic",
        {"scenes": {str(s): str(f) for s, f in folders.items()}, "dim": dim, "depth": depth},
    )
    rows = []
    for size, folder in folders.items():
        run = _run_worker(
            "mosaic",
            {"scene": str(folder), "predictor": settings.mosaic_predictor, "device": device},
        )
        row = {
            "size": size,
            "megapixels": round(size * size / 1e6, 2),
            "generate_s": made["seconds"].get(str(size)),
            "predictor": settings.mosaic_predictor,
            "model": {"dim": dim, "depth": depth},
            "windows": run["windows"],
            "seconds": round(run["seconds"], 2),
            "megapixels_per_s": _round(run["megapixels_per_s"]),
            "worst_cell_rel_error": run["worst_cell_rel_error"],
            "peak_rss_mb": round(run["peak_rss_mb"], 1),
            "sampled_rss_mb": run["sampled_rss_mb"],
        }
        say(f"mosaic {size}: {row['megapixels_per_s']} Mpx/s, peak RSS {row['peak_rss_mb']:.0f} MB")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the table
def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def format_table(results: dict[str, Any]) -> str:
    """One text table of :func:`run_bench` results, with the machine line on top."""
    machine = results["machine"]
    load = machine["load_average_start"]
    mode = " (--quick)" if results["settings"].get("quick") else ""
    head = (
        f"carbongeo bench{mode}: {machine['cpus']} CPUs, torch {machine['torch']} "
        f"({machine['torch_threads'] or 'default'} threads), device {machine['device_name']}, "
        f"python {machine['python']}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        "at start"
    )
    if "load_average_end" in machine:
        end = machine["load_average_end"]
        head += f", {end[0]:.2f} {end[1]:.2f} {end[2]:.2f} at end"
    if "seconds" in results:
        head += f"; {results['seconds']:.0f} s"
    rows = [["stage", "case", "throughput", "reference", "ratio", "seconds", "peak RSS MB"]]
    for row in results.get("tile", []):
        rows.append(
            [
                "tile",
                f"{row['size']} px scene, {row['source_mb']:g} MB of sources",
                f"{_num(row['tile_mb_per_s'])} MB/s",
                f"rasterio read {_num(row['read_mb_per_s'])} MB/s "
                f"({row['read_peak_rss_mb']:.0f} MB)",
                f"{row['tile_vs_read']:.2f}",
                f"{row['tile_s']:.1f}",
                f"{row['peak_rss_mb']:.0f}",
            ]
        )
    train = results.get("train")
    if train:
        best = _loader_reference(train["loader"])
        reference, ratio = "", lambda rate: ""
        if best is not None:
            reference = (
                f"DataLoader ({best['workers']} workers) {_num(best['tiles_per_s'])} tiles/s"
            )
            ratio = lambda rate: f"{best['tiles_per_s'] / rate:.1f}"  # noqa: E731
        for loader in train["loader"]:
            rows.append(
                [
                    "train",
                    f"DataLoader, {loader['workers']} workers ({train['samples']} samples, "
                    f"batch {train['batch']})",
                    f"{_num(loader['tiles_per_s'])} tiles/s",
                    "",
                    "",
                    f"{loader['seconds']:.1f}",
                    "",
                ]
            )
        for model in train["models"]:
            rows.append(
                [
                    "train",
                    f"step, {model['name']} model dim {model['dim']} depth {model['depth']} "
                    f"({model['parameters'] / 1e6:.2f} M)",
                    f"{_num(model['tiles_per_s'])} tiles/s",
                    reference,
                    ratio(model["tiles_per_s"]),
                    f"{model['seconds']:.1f}",
                    "",
                ]
            )
        rows[-1][-1] = f"{train['peak_rss_mb']:.0f}"  # the train worker's peak, loaders included
    for row in results.get("mosaic", []):
        what = (
            f"network dim {row['model']['dim']} depth {row['model']['depth']}"
            if row["predictor"] == "model"
            else "numpy stand-in"
        )
        rows.append(
            [
                "mosaic",
                f"{row['size']} px scene, {row['windows']} windows, {what}",
                f"{_num(row['megapixels_per_s'])} Mpx/s",
                "",
                "",
                f"{row['seconds']:.1f}",
                f"{row['peak_rss_mb']:.0f}",
            ]
        )
    ratios = []
    if results.get("tile"):
        ratios.append(
            "tile = time of the raw read / time of tile (1 = tiling as fast as reading the sources)"
        )
    if train:
        ratios.append("train = DataLoader rate / step rate (> 1: the loader keeps up)")
    notes = [f"ratio: {'; '.join(ratios)}."] if ratios else []
    notes.append(
        f"peak RSS: ru_maxrss of the measured process (each in a fresh process started by a "
        f"parent of {machine.get('rss_floor_mb', 0):.0f} MB)"
        + ("; train: its whole worker (loaders and models)." if train else ".")
    )
    return "\n".join([head, *_table(rows, right={2, 4, 5, 6}), *notes])


def _loader_reference(loaders: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The loader the training default uses (2 workers) when measured, else the fastest."""
    for loader in loaders:
        if loader["workers"] == 2:
            return loader
    return max(loaders, key=lambda loader: loader["tiles_per_s"], default=None)


# =========================================================================== worker side
# Everything below runs in the ``_worker`` processes and may import heavy modules.


# --------------------------------------------------------------------------- info
def _worker_info(params: dict[str, Any]) -> dict[str, Any]:
    import torch

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    from carbongeo.device import resolve_device

    device = resolve_device(params["device"]).type
    return {
        "torch": torch.__version__,
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- tile scenes
def _field(rows: Any, cols: Any, seed: int, scale: float) -> Any:
    """A smooth positive field plus noise (compresses like real data, not like white noise)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(rows.astype(np.float32), cols.astype(np.float32), indexing="ij")
    smooth = (np.sin(xx / (300 * scale)) * np.cos(yy / (250 * scale)) + 1.5) * 10
    return (smooth + rng.random(smooth.shape, dtype=np.float32)).astype(np.float32)


def _write_raster(path: Path, width: int, height: int, crs: str, transform: Any, seed: int) -> None:
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "float32",
        "crs": crs,
        "transform": transform,
        "nodata": -9999.0,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    scale = max(width, height) / 4096
    tmp = path.with_name(path.name + ".part")
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, height, STRIP):
            rows = np.arange(row, min(row + STRIP, height))
            data = _field(rows, np.arange(width), seed + row, scale)
            dst.write(data, 1, window=Window(0, row, width, len(rows)))
    tmp.replace(path)


def make_tile_scene(folder: Path, size: int) -> Path:
    """Write a ``size x size`` tile scene and its pipeline file (kept when already there).

    ``co2.tif`` (target, UTM 50N, 100 m: copied), ``ntl.tif`` (intensive, EPSG:4326 at 0.001
    degree: warped) and ``pop.tif`` (extensive, UTM 50N at 200 m: split by area).
    """
    from affine import Affine
    from rasterio.warp import transform_bounds

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "carbongeo.toml"
    if config.exists():
        return config
    x0, y0 = ORIGIN
    _write_raster(
        folder / "co2.tif", size, size, UTM, Affine(RESOLUTION, 0, x0, 0, -RESOLUTION, y0), 1
    )
    extent = size * RESOLUTION
    west, south, east, north = transform_bounds(UTM, "EPSG:4326", x0, y0 - extent, x0 + extent, y0)
    res = 0.001
    _write_raster(
        folder / "ntl.tif",
        math.ceil((east - west) / res),
        math.ceil((north - south) / res),
        "EPSG:4326",
        Affine(res, 0.0, west, 0.0, -res, north),
        2,
    )
    pop = Affine(2 * RESOLUTION, 0.0, x0, 0.0, -2 * RESOLUTION, y0)
    _write_raster(folder / "pop.tif", size // 2, size // 2, UTM, pop, 3)
    config.write_text(
        f'workdir = "run"\nyears = 2020\n[grid]\ntile_size = {TILE}\nscale = {SCALE}\n'
        '[target]\npath = "co2.tif"\nunits = "t"\n'
        '[[aux]]\nname = "ntl"\npath = "ntl.tif"\nkind = "intensive"\ntransform = "log1p"\n'
        '[[aux]]\nname = "pop"\npath = "pop.tif"\nkind = "extensive"\ntransform = "log1p"\n',
        encoding="utf-8",
    )
    return config


def _worker_prepare_tile(params: dict[str, Any]) -> dict[str, Any]:
    seconds = {}
    for size, folder in params["scenes"].items():
        start = time.perf_counter()
        make_tile_scene(Path(folder), int(size))
        seconds[size] = round(time.perf_counter() - start, 1)
    return {"seconds": seconds}


def _worker_read(params: dict[str, Any]) -> dict[str, Any]:
    """Read every source once in 1024-pixel windows (the I/O floor of tiling)."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    folder = Path(params["scene"])
    total = 0
    start = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        for name in ("co2.tif", "ntl.tif", "pop.tif"):
            with rasterio.open(folder / name) as src:
                total += src.width * src.height * np.dtype(src.dtypes[0]).itemsize
                for row in range(0, src.height, STRIP):
                    for col in range(0, src.width, STRIP):
                        src.read(1, window=Window(col, row, STRIP, STRIP))
    return {"wall_s": time.perf_counter() - start, "source_mb": total / 1e6}


def _worker_tile(params: dict[str, Any]) -> dict[str, Any]:
    from carbongeo.config import load_config
    from carbongeo.stages.tile import tile_years

    config = load_config(Path(params["scene"]) / "carbongeo.toml")
    shutil.rmtree(config.tiles_dir, ignore_errors=True)
    start = time.perf_counter()
    index = tile_years(
        config,
        config.years,
        progress=False,
        scheduler=params.get("scheduler"),
        workers=params.get("workers"),
    )
    wall = time.perf_counter() - start
    shutil.rmtree(config.tiles_dir, ignore_errors=True)
    return {"wall_s": wall, "tiles": len(index.tiles)}


# --------------------------------------------------------------------------- train
def write_train_cubes(folder: Path, n_tiles: int, seed: int = 0) -> list[int]:
    """Write ``X``/``Y`` cubes of three years and ``index.json`` (kept when already there).

    Returns:
        The tile ids.
    """
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    ids = list(range(n_tiles))
    if (folder / "index.json").is_file():
        return ids
    rng = np.random.default_rng(seed)
    for year in TRAIN_YEARS:
        x = rng.normal(0.0, 1.0, (n_tiles, len(BANDS), TILE, TILE)).astype(np.float32)
        sparse = rng.random((n_tiles, 1, TILE, TILE)) < 0.3
        y = np.where(sparse, rng.lognormal(2.0, 1.5, (n_tiles, 1, TILE, TILE)), 0.0)
        np.save(folder / f"X_{year}.npy", x)
        np.save(folder / f"Y_{year}.npy", y.astype(np.float32))
    cols = math.ceil(math.sqrt(n_tiles))
    grid = _scene_grid(TILE * math.ceil(n_tiles / cols), TILE * cols)
    _write_index(folder, grid, TRAIN_YEARS, n_tiles)
    return ids


def _scene_grid(height: int, width: int) -> Any:
    """A UTM 50N grid at 100 m of ``height x width`` pixels, tiles of 128, scale 8."""
    from affine import Affine
    from rasterio.crs import CRS

    from carbongeo.grid import Grid

    return Grid(
        CRS.from_epsg(32650).to_wkt(),
        Affine(100.0, 0.0, 300000.0, 0.0, -100.0, 2600000.0),
        height,
        width,
        tile_size=TILE,
        scale=SCALE,
    )


def _write_index(tiles_dir: Path, grid: Any, years: Sequence[int], n_tiles: int) -> None:
    """Write ``index.json`` for the first ``n_tiles`` tiles of ``grid`` (the cubes' rows)."""
    from itertools import islice

    from carbongeo.stages.tile import TileIndex, TileRecord, index_path

    index = TileIndex(
        grid=grid,
        years=list(years),
        bands=list(BANDS),
        aux=[{"name": b, "kind": "intensive", "transform": "log1p", "units": ""} for b in BANDS],
        target={"units": "t CO2 / cell / yr", "kind": "extensive"},
        has_coarse=False,
        tiles=[TileRecord(t.id, t.row, t.col, {}) for t in islice(grid.iter_tiles(), n_tiles)],
    )
    index_path(tiles_dir).write_text(json.dumps(index.to_dict()), encoding="utf-8")


def loader_rate(data: Any, workers: int, batch: int) -> tuple[float, float]:
    """Tiles per second of one pass over ``data`` after a warm-up pass; and its seconds."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(
        data,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    for _ in loader:  # warm-up: page cache, worker start-up
        pass
    start = time.perf_counter()
    count = sum(len(b["year"]) for b in loader)
    seconds = time.perf_counter() - start
    return count / seconds, seconds


def step_rate(
    data: Any, dim: int, depth: int, steps: int, batch: int, device: Any
) -> tuple[float, float, int]:
    """Training tiles per second of a model on a batch already in memory; seconds; parameters."""
    import torch
    from torch.utils.data import DataLoader

    from carbongeo.models.losses import HybridLoss
    from carbongeo.models.network import DSTCarbonFormer, count_parameters
    from carbongeo.stages.train import select_amp

    torch.manual_seed(0)
    norm = data.norm
    model = DSTCarbonFormer(
        len(BANDS), SCALE, dim=dim, depth=depth, value_scale=norm.value_scale
    ).to(device)
    loss_fn = HybridLoss(SCALE, value_scale=norm.value_scale, high_threshold=norm.high_threshold)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp, dtype, _ = select_amp(device)
    first = next(iter(DataLoader(data, batch_size=batch)))
    aux, coarse = first["aux"].to(device), first["coarse"].to(device)
    target, mask = first["target"].to(device), first["mask"].to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            pred = model(aux, coarse)
        loss, _ = loss_fn(pred.float(), target, coarse[:, :, 1], mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return steps * len(aux) / seconds, seconds, count_parameters(model)


def _worker_train(params: dict[str, Any]) -> dict[str, Any]:
    import torch

    from carbongeo.training.data import CubeDataset
    from carbongeo.training.normalization import compute_normalization

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    device = torch.device(params["device"])
    folder = Path(params["folder"])
    ids = write_train_cubes(folder, int(params["tiles"]))
    norm = compute_normalization(folder, ids, TRAIN_YEARS, high_quantile=0.9)
    data = CubeDataset(folder, ids, list(TRAIN_YEARS), norm, augment=True)
    batch = int(params["batch"])
    loaders = []
    for workers in params["loader_workers"]:
        rate, seconds = loader_rate(data, int(workers), batch)
        loaders.append({"workers": int(workers), "tiles_per_s": rate, "seconds": seconds})
    models = []
    for name, dim, depth in params["models"]:
        rate, seconds, n_params = step_rate(data, dim, depth, int(params["steps"]), batch, device)
        models.append(
            {
                "name": name,
                "dim": dim,
                "depth": depth,
                "parameters": n_params,
                "tiles_per_s": rate,
                "seconds": seconds,
            }
        )
    return {
        "samples": len(data),
        "batch": batch,
        "steps": int(params["steps"]),
        "torch_threads": torch.get_num_threads(),
        "loader": loaders,
        "models": models,
    }


# --------------------------------------------------------------------------- mosaic scenes
def make_mosaic_scene(folder: Path, size: int, dim: int = 8, depth: int = 1, seed: int = 0) -> Path:
    """Write cubes, index, an untrained checkpoint and a pipeline file (kept when already there).

    One year of a ``size x size`` scene with 9 aux bands and a nodata corner. Returns the
    pipeline file.
    """
    import numpy as np
    import torch

    from carbongeo.config import load_config
    from carbongeo.models.network import DSTCarbonFormer
    from carbongeo.stages.tile import cube_path, index_path
    from carbongeo.store.checkpoint import FORMAT, VERSION, plain, save_checkpoint
    from carbongeo.training.normalization import Normalization

    config_path = folder / "carbongeo.toml"
    aux_tables = "\n".join(
        f'[[aux]]\nname = "{name}"\npath = "data/{name}_{{year}}.tif"\n' for name in BANDS
    )
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(
        f'workdir = "run"\nyears = [{MOSAIC_YEAR}]\n\n[grid]\ntile_size = {TILE}\n'
        f'scale = {SCALE}\n\n[target]\npath = "data/co2_{{year}}.tif"\n'
        f'units = "t CO2 / cell / yr"\n\n{aux_tables}\n[model]\ndim = {dim}\ndepth = {depth}\n\n'
        "[mosaic]\noverlap = 32\nbatch_size = 8\n",
        encoding="utf-8",
    )
    config = load_config(config_path)
    tiles_dir = config.tiles_dir
    checkpoint = config.checkpoints_dir / "best.pt"
    if index_path(tiles_dir).is_file() and checkpoint.is_file():
        return config_path
    grid = _scene_grid(size, size)
    tiles_dir.mkdir(parents=True, exist_ok=True)
    n = grid.tile_rows * grid.tile_cols
    x = np.lib.format.open_memmap(
        cube_path(tiles_dir, "X", MOSAIC_YEAR), "w+", np.float32, (n, len(BANDS), TILE, TILE)
    )
    y = np.lib.format.open_memmap(
        cube_path(tiles_dir, "Y", MOSAIC_YEAR), "w+", np.float32, (n, 1, TILE, TILE)
    )
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:TILE, 0:TILE]
    for tile in grid.iter_tiles():
        sea = (tile.row + rows) + (tile.col + cols) < size // 4  # a nodata corner
        aux = np.log1p(rng.uniform(0.0, 50.0, (len(BANDS), TILE, TILE))).astype(np.float32)
        target = rng.gamma(2.0, 5.0, (1, TILE, TILE)).astype(np.float32)
        aux[:, sea] = np.nan
        target[:, sea] = np.nan
        x[tile.id] = aux
        y[tile.id] = target
    x.flush()
    y.flush()
    del x, y
    torch.manual_seed(seed)
    model = DSTCarbonFormer(len(BANDS), SCALE, dim=dim, depth=depth, value_scale=10.0)
    norm = Normalization(
        aux_mean=(3.0,) * len(BANDS),
        aux_std=(1.0,) * len(BANDS),
        value_scale=10.0,
        high_threshold=20.0,
        hotspot_threshold=40.0,
    )
    save_checkpoint(
        checkpoint,
        {
            "format": FORMAT,
            "version": VERSION,
            "model_config": dict(model.config),
            "model": model.state_dict(),
            "norm": norm.to_dict(),
            "config": plain(config.raw),
            "data_hash": config.data_hash(),
            "bands": list(BANDS),
            "scale": SCALE,
            "tile_size": TILE,
        },
    )
    _write_index(tiles_dir, grid, [MOSAIC_YEAR], n)  # last: marks the scene complete
    return config_path


def _worker_prepare_mosaic(params: dict[str, Any]) -> dict[str, Any]:
    seconds = {}
    for size, folder in params["scenes"].items():
        start = time.perf_counter()
        make_mosaic_scene(Path(folder), int(size), int(params["dim"]), int(params["depth"]))
        seconds[size] = round(time.perf_counter() - start, 1)
    return {"seconds": seconds}


def fast_predictor(model: Any, device: Any = "cpu") -> Any:
    """A stand-in for the network: each coarse cell spread evenly over its pixels."""
    import numpy as np

    def predict(aux: Any, coarse: Any) -> Any:
        centre = coarse[:, 0, coarse.shape[2] // 2]
        spread = np.repeat(np.repeat(centre, SCALE, axis=1), SCALE, axis=2)
        return spread / (SCALE * SCALE)

    return predict


def _worker_mosaic(params: dict[str, Any]) -> dict[str, Any]:
    import carbongeo.stages.mosaic as mosaic
    from carbongeo.config import load_config

    if params["predictor"] == "fast":
        mosaic.torch_predictor = fast_predictor  # type: ignore[assignment]
    config = load_config(Path(params["scene"]) / "carbongeo.toml")
    start = time.perf_counter()
    (result,) = mosaic.mosaic_years(
        config, [MOSAIC_YEAR], device=params["device"], overwrite=True, progress=False
    )
    data = result.to_dict()
    data["wall_s"] = time.perf_counter() - start
    shutil.rmtree(config.predictions_dir, ignore_errors=True)
    return data


_WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "info": _worker_info,
    "prepare_tile": _worker_prepare_tile,
    "read": _worker_read,
    "tile": _worker_tile,
    "train": _worker_train,
    "prepare_mosaic": _worker_prepare_mosaic,
    "mosaic": _worker_mosaic,
}


def _worker_main(kind: str, params: dict[str, Any]) -> int:
    """Run one worker; print its result (plus this process's peak RSS) as the last JSON line."""
    try:
        result = _WORKERS[kind](params)
    except CarbongeoError as err:
        print(f"carbongeo: error: {err}", file=sys.stderr)
        return 2
    result["peak_rss_mb"] = _peak_rss_mb(resource.RUSAGE_SELF)
    result["children_peak_rss_mb"] = _peak_rss_mb(resource.RUSAGE_CHILDREN)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_worker" and sys.argv[2] in _WORKERS:
        sys.exit(_worker_main(sys.argv[2], json.loads(sys.argv[3])))
    sys.exit("usage: python -m carbongeo.bench _worker KIND PARAMS_JSON (internal)")
