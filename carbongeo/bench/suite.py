"""`run_bench`: the stages' measurements, in order, each in a fresh worker, and their results.

Light: runs in the parent process, which must not import numpy, torch or rasterio (see
:mod:`carbongeo.bench.harness`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from carbongeo import __version__
from carbongeo.bench import workers as w
from carbongeo.bench.harness import has_psutil, peak_rss_mb, run_worker
from carbongeo.bench.settings import TRAIN_YEARS, BenchSettings, bench_settings, validate

Echo = Callable[[str], None]


def run_bench(
    settings: BenchSettings | None = None,
    *,
    out: str | Path | None = None,
    echo: Echo | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return its results, ready for :func:`json.dumps`.

    Args:
        settings: What to measure (default: :func:`~carbongeo.bench.bench_settings`).
        out: Keep the generated scenes in this folder (and reuse those already there); by
            default they go to a temporary folder that is removed at the end.
        echo: Receives one progress line per step (e.g. ``print`` to stderr); None is silent.

    Returns:
        ``machine`` (CPUs, torch, device, load averages at start and end, ``rss_floor_mb``),
        ``settings``, ``seconds``, and per stage run: ``tile`` (one row per size: source MB,
        raw-read, hand-written reproject and tile seconds and MB/s, ``tile_vs_read``,
        ``tile_vs_reproject``, peak RSS), ``train`` (``loader`` rows per worker count and
        ``models`` rows, in tiles/s) and ``mosaic`` (one row per size: windows, seconds,
        ``megapixels_per_s``, the bare network forward's seconds and Mpx/s,
        ``mosaic_vs_forward``, worst coarse-cell mass error, peak RSS). A ratio is the
        reference's time over the stage's (> 1: the stage is faster). Peak RSS values are MB:
        ``peak_rss_mb`` is the measured process's ``ru_maxrss``, ``sampled_rss_mb`` the
        psutil-sampled peak of its process tree (None without psutil).

    Raises:
        ConfigError: Bad settings.
        CarbongeoError: ``cuda`` asked for without a GPU.
        RuntimeError: A measurement process failed (its stderr is in the message).
    """
    settings = settings or bench_settings()
    validate(settings)
    say = echo or (lambda message: None)
    start = time.perf_counter()
    machine = _machine(settings)
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
    machine["rss_floor_mb"] = round(peak_rss_mb(), 1)
    machine["psutil"] = has_psutil()
    results["seconds"] = round(time.perf_counter() - start, 1)
    return results


def _machine(settings: BenchSettings) -> dict[str, Any]:
    """CPUs, load, versions and the device the measurements will run on."""
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
        return machine
    info = run_worker(w.INFO, w.InfoParams(settings.device, settings.threads)).result
    machine.update(
        torch=info.torch,
        device=info.device,
        device_name=info.device_name,
        torch_threads=info.torch_threads,
    )
    return machine


def _round(value: float | None, digits: int = 3) -> float | None:
    """``digits`` significant digits (one decimal from ``10**digits`` up)."""
    if value is None or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}") if abs(value) < 10**digits else round(value, 1)


def _bench_tile(root: Path, settings: BenchSettings, say: Echo) -> list[dict[str, Any]]:
    threads = settings.tile_workers or os.cpu_count() or 1
    rows = []
    for size in settings.tile_sizes:
        folder = str(root / f"tile_{size}")
        say(f"tile {size}: writing the scene (a kept one is reused)")
        made = run_worker(w.PREPARE_TILE, w.SceneParams(folder, size)).result
        read = run_worker(w.READ, w.ReadParams(folder))
        warp = run_worker(w.REPROJECT, w.ReprojectParams(folder, threads))
        tiled = run_worker(
            w.TILING, w.TileParams(folder, settings.tile_workers, settings.tile_scheduler)
        )
        megabytes = read.result.source_mb
        row = {
            "size": size,
            "source_mb": round(megabytes, 1),
            "sources": read.result.sources,
            "generate_s": round(made.seconds, 1),
            "tiles": tiled.result.tiles,
            "read_s": _round(read.result.seconds),
            "read_mb_per_s": _round(megabytes / read.result.seconds),
            "read_peak_rss_mb": read.memory.peak_rss_mb,
            "reproject_s": _round(warp.result.seconds),
            "reproject_mb_per_s": _round(megabytes / warp.result.seconds),
            "reproject_peak_rss_mb": warp.memory.peak_rss_mb,
            "reproject_threads": threads,
            "reproject_resampling": warp.result.resampling,
            "reproject_valid_fraction": _round(warp.result.valid_fraction, 6),
            "tile_s": _round(tiled.result.seconds),
            "tile_mb_per_s": _round(megabytes / tiled.result.seconds),
            "tile_vs_read": _round(read.result.seconds / tiled.result.seconds),
            "tile_vs_reproject": _round(warp.result.seconds / tiled.result.seconds),
            "peak_rss_mb": tiled.memory.peak_rss_mb,
            "workers_peak_rss_mb": tiled.memory.children_peak_rss_mb,
            "sampled_rss_mb": tiled.memory.sampled_rss_mb,
        }
        say(
            f"tile {size}: {row['tile_mb_per_s']} MB/s (reproject {row['reproject_mb_per_s']} "
            f"MB/s, read {row['read_mb_per_s']} MB/s), peak RSS {row['peak_rss_mb']:.0f} MB"
        )
        rows.append(row)
    return rows


def _bench_train(root: Path, settings: BenchSettings, device: str, say: Echo) -> dict[str, Any]:
    folder = str(root / f"train_{settings.train_tiles}")
    tiles, batch = settings.train_tiles, settings.train_batch
    say(
        f"train: {tiles} tiles x {len(TRAIN_YEARS)} years, loader workers "
        f"{list(settings.loader_workers)}, {settings.train_steps} steps per model"
    )
    run_worker(w.PREPARE_TRAIN, w.SceneParams(folder, tiles))
    loaders, samples = [], 0
    for workers in settings.loader_workers:
        run = run_worker(w.LOADER, w.LoaderParams(folder, tiles, batch, workers))
        samples = run.result.samples
        loaders.append(
            {
                "workers": workers,
                "tiles_per_s": _round(run.result.tiles_per_s),
                "seconds": _round(run.result.seconds),
                "peak_rss_mb": run.memory.peak_rss_mb,
                "workers_peak_rss_mb": run.memory.children_peak_rss_mb,
            }
        )
    models, threads = [], None
    for name, dim, depth in settings.models:
        params = w.StepParams(
            folder, tiles, batch, settings.train_steps, dim, depth, device, settings.threads
        )
        run = run_worker(w.STEP, params)
        threads = run.result.torch_threads
        models.append(
            {
                "name": name,
                "dim": dim,
                "depth": depth,
                "parameters": run.result.parameters,
                "tiles_per_s": _round(run.result.tiles_per_s),
                "seconds": _round(run.result.seconds),
                "peak_rss_mb": run.memory.peak_rss_mb,
            }
        )
        say(f"train step, {name}: {models[-1]['tiles_per_s']} tiles/s")
    return {
        "samples": samples,
        "batch": batch,
        "steps": settings.train_steps,
        "torch_threads": threads,
        "loader": loaders,
        "models": models,
        "peak_rss_mb": max(row["peak_rss_mb"] for row in [*loaders, *models]),
    }


def _bench_mosaic(
    root: Path, settings: BenchSettings, device: str, say: Echo
) -> list[dict[str, Any]]:
    dim, depth = settings.mosaic_model
    rows = []
    for size in settings.mosaic_sizes:
        folder = str(root / f"mosaic_{size}_dim{dim}_depth{depth}")
        say(f"mosaic {size}: writing the scene (a kept one is reused)")
        made = run_worker(w.PREPARE_MOSAIC, w.MosaicSceneParams(folder, size, dim, depth)).result
        params = w.MosaicParams(folder, settings.mosaic_predictor, device)
        run = run_worker(w.MOSAIC, params)
        forward = run_worker(w.FORWARD, params)
        row = {
            "size": size,
            "megapixels": round(size * size / 1e6, 2),
            "generate_s": round(made.seconds, 1),
            "predictor": settings.mosaic_predictor,
            "model": {"dim": dim, "depth": depth},
            "windows": run.result.windows,
            "seconds": _round(run.result.seconds),
            "megapixels_per_s": _round(run.result.megapixels_per_s),
            "forward_s": _round(forward.result.seconds),
            "forward_megapixels_per_s": _round(forward.result.megapixels_per_s),
            "forward_peak_rss_mb": forward.memory.peak_rss_mb,
            "mosaic_vs_forward": _round(forward.result.seconds / run.result.seconds),
            "worst_cell_rel_error": run.result.worst_cell_rel_error,
            "peak_rss_mb": run.memory.peak_rss_mb,
            "sampled_rss_mb": run.memory.sampled_rss_mb,
        }
        say(
            f"mosaic {size}: {row['megapixels_per_s']} Mpx/s (network alone "
            f"{row['forward_megapixels_per_s']} Mpx/s), peak RSS {row['peak_rss_mb']:.0f} MB"
        )
        rows.append(row)
    return rows
