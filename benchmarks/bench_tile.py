"""Benchmark ``carbongeo tile``: throughput and peak memory next to a raw rasterio read.

Run on demand (not part of the tests)::

    python benchmarks/bench_tile.py --sizes 4096 16384 [--folder DIR] [--workers N]

For each size it writes a synthetic scene (tiled, DEFLATE-compressed GeoTIFFs, kept in
``--folder`` for the next run):

* ``co2.tif``: the target, ``size x size`` float32 at 100 m in UTM 50N (on the grid: copied);
* ``ntl.tif``: an intensive aux band in EPSG:4326 at 0.001 degree (warped, average/bilinear);
* ``pop.tif``: an extensive aux band in UTM 50N at 200 m (split by area onto 100 m pixels).

Then, each in a fresh subprocess, it reads every source once with rasterio in 1024-pixel windows
(the I/O floor) and runs :func:`carbongeo.tiling.tile_years` for one year. It reports wall time,
throughput in MB/s of uncompressed source data, and peak memory: ``ru_maxrss`` of the subprocess
and of any dask worker processes it started, and, when psutil is installed, the peak RSS of the
whole process tree sampled every 50 ms. Peak memory should stay flat as the scene grows.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds
from rasterio.windows import Window

UTM = "EPSG:32650"
ORIGIN = (400_000.0, 3_400_000.0)
RESOLUTION = 100.0
STRIP = 1024  # rows per generated / read strip
GDAL_CACHE_MB = 128


def _field(rows: np.ndarray, cols: np.ndarray, seed: int, scale: float) -> np.ndarray:
    """A smooth positive field plus noise (compresses like real data, not like white noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(rows.astype(np.float32), cols.astype(np.float32), indexing="ij")
    smooth = (np.sin(xx / (300 * scale)) * np.cos(yy / (250 * scale)) + 1.5) * 10
    return (smooth + rng.random(smooth.shape, dtype=np.float32)).astype(np.float32)


def _write(path: Path, width: int, height: int, crs: str, transform: Affine, seed: int) -> None:
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
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, height, STRIP):
            rows = np.arange(row, min(row + STRIP, height))
            data = _field(rows, np.arange(width), seed + row, scale)
            dst.write(data, 1, window=Window(0, row, width, len(rows)))


def make_scene(folder: Path, size: int) -> Path:
    """Write the scene's rasters and pipeline file (skipped when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "carbongeo.toml"
    if config.exists():
        return config
    x0, y0 = ORIGIN
    target = Affine(RESOLUTION, 0.0, x0, 0.0, -RESOLUTION, y0)
    _write(folder / "co2.tif", size, size, UTM, target, seed=1)
    extent = size * RESOLUTION
    west, south, east, north = transform_bounds(UTM, "EPSG:4326", x0, y0 - extent, x0 + extent, y0)
    res = 0.001
    ntl = Affine(res, 0.0, west, 0.0, -res, north)
    _write(
        folder / "ntl.tif",
        math.ceil((east - west) / res),
        math.ceil((north - south) / res),
        "EPSG:4326",
        ntl,
        seed=2,
    )
    pop = Affine(2 * RESOLUTION, 0.0, x0, 0.0, -2 * RESOLUTION, y0)
    _write(folder / "pop.tif", size // 2, size // 2, UTM, pop, seed=3)
    config.write_text(
        """workdir = "run"
years = 2020
[grid]
tile_size = 128
scale = 8
[target]
path = "co2.tif"
units = "t"
[[aux]]
name = "ntl"
path = "ntl.tif"
kind = "intensive"
transform = "log1p"
[[aux]]
name = "pop"
path = "pop.tif"
kind = "extensive"
transform = "log1p"
""",
        encoding="utf-8",
    )
    return config


def source_megabytes(folder: Path) -> float:
    """Uncompressed size of the sources in MB."""
    total = 0
    for name in ("co2.tif", "ntl.tif", "pop.tif"):
        with rasterio.open(folder / name) as src:
            total += src.width * src.height * np.dtype(src.dtypes[0]).itemsize
    return total / 1e6


def _peak_rss_mb(who: int) -> float:
    peak = resource.getrusage(who).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def child_read(folder: Path) -> dict[str, float]:
    """Read every source once in 1024-pixel windows (the I/O floor of tiling)."""
    start = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        for name in ("co2.tif", "ntl.tif", "pop.tif"):
            with rasterio.open(folder / name) as src:
                for row in range(0, src.height, STRIP):
                    for col in range(0, src.width, STRIP):
                        src.read(1, window=Window(col, row, STRIP, STRIP))
    return {"wall_s": time.perf_counter() - start}


def child_tile(folder: Path, workers: int | None, scheduler: str | None) -> dict[str, float]:
    """Run tile_years on the scene."""
    from carbongeo.config import load_config
    from carbongeo.tiling import tile_years

    config = load_config(folder / "carbongeo.toml")
    shutil.rmtree(config.tiles_dir, ignore_errors=True)
    start = time.perf_counter()
    tile_years(config, config.years, progress=False, scheduler=scheduler, workers=workers)
    wall = time.perf_counter() - start
    shutil.rmtree(config.tiles_dir, ignore_errors=True)
    return {"wall_s": wall}


def _run_child(args: list[str]) -> dict[str, float]:
    """Run this script in a subprocess; adds the peak RSS of its process tree when psutil exists.

    ``ru_maxrss`` alone is not enough on Linux: a child starts with the high-water mark of the
    process that forked it, so the scene is generated in its own subprocess and the tree's RSS is
    also sampled directly.
    """
    try:
        import psutil
    except ImportError:
        psutil = None
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sampled = 0.0
    if psutil is not None:
        tree = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                members = [tree, *tree.children(recursive=True)]
                rss = sum(m.memory_info().rss for m in members)
            except psutil.Error:
                rss = 0
            sampled = max(sampled, rss / 2**20)
            time.sleep(0.05)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"benchmark child {args} failed:\n{stderr}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["sampled_rss_mb"] = sampled
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--folder", type=Path, default=None, help="where scenes are kept")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--child", choices=["gen", "read", "tile"], help=argparse.SUPPRESS)
    parser.add_argument("--scene", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.child == "gen":
            start = time.perf_counter()
            make_scene(args.scene, args.size)
            result = {"wall_s": time.perf_counter() - start}
        elif args.child == "read":
            result = child_read(args.scene)
        else:
            result = child_tile(args.scene, args.workers, args.scheduler)
        result["peak_rss_mb"] = _peak_rss_mb(resource.RUSAGE_SELF)
        result["peak_rss_children_mb"] = _peak_rss_mb(resource.RUSAGE_CHILDREN)
        print(json.dumps(result))
        return

    root = args.folder or Path(tempfile.gettempdir()) / "carbongeo-bench-tile"
    rows = []
    for size in args.sizes:
        folder = root / f"scene_{size}"
        made = _run_child(["--child", "gen", "--scene", str(folder), "--size", str(size)])
        print(f"scene {size}: ready in {made['wall_s']:.0f} s", file=sys.stderr)
        megabytes = source_megabytes(folder)
        extra = []
        if args.workers:
            extra += ["--workers", str(args.workers)]
        if args.scheduler:
            extra += ["--scheduler", args.scheduler]
        for kind in ("read", "tile"):
            result = _run_child(["--child", kind, "--scene", str(folder), *extra])
            rows.append(
                {
                    "size": size,
                    "run": "rasterio read" if kind == "read" else "carbongeo tile",
                    "source_mb": round(megabytes, 1),
                    "wall_s": round(result["wall_s"], 2),
                    "mb_per_s": round(megabytes / result["wall_s"], 1),
                    "peak_rss_mb": round(result["peak_rss_mb"], 1),
                    "peak_rss_workers_mb": round(result["peak_rss_children_mb"], 1),
                    "sampled_rss_mb": round(result["sampled_rss_mb"], 1),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(
        f"{'size':>6} {'run':<15} {'src MB':>8} {'wall s':>8} {'MB/s':>7} "
        f"{'maxrss MB':>10} {'workers MB':>10} {'sampled MB':>10}"
    )
    for row in rows:
        print(
            f"{row['size']:>6} {row['run']:<15} {row['source_mb']:>8} {row['wall_s']:>8} "
            f"{row['mb_per_s']:>7} {row['peak_rss_mb']:>10} {row['peak_rss_workers_mb']:>10} "
            f"{row['sampled_rss_mb']:>10}"
        )


if __name__ == "__main__":
    main()
