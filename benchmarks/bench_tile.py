"""Benchmark ``carbongeo tile`` alone, with the dask knobs ``carbongeo bench`` does not expose.

A thin wrapper over :mod:`carbongeo.bench` (scenes, measurement and table live there). Tile is
measured next to a hand-written ``rasterio.warp.reproject`` of the same sources (with as many
threads as tile's workers) and a raw read::

    python benchmarks/bench_tile.py --sizes 4096 16384 [--out DIR] [--workers N] [--scheduler S]

For every stage at once, with the default settings, use ``carbongeo bench``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from carbongeo.bench import bench_settings, format_json, format_table, run_bench


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--out", type=Path, default=None, help="keep (and reuse) scenes here")
    parser.add_argument("--workers", type=int, default=None, help="tile_years(workers=...)")
    parser.add_argument("--scheduler", default=None, help="tile_years(scheduler=...)")
    parser.add_argument("--json", action="store_true", help="print JSON, not the table")
    args = parser.parse_args(argv)
    settings = bench_settings(
        tile_sizes=args.sizes,
        tile_workers=args.workers,
        tile_scheduler=args.scheduler,
        stages=("tile",),
    )
    results = run_bench(settings, out=args.out, echo=lambda line: print(line, file=sys.stderr))
    print(format_json(results) if args.json else format_table(results))


if __name__ == "__main__":
    main()
