"""Benchmark training input and compute alone, with knobs ``carbongeo bench`` does not expose.

A thin wrapper over :mod:`carbongeo.bench`: DataLoader tiles/s for each ``--workers`` value next
to the training-step tiles/s of the demo-size and full-size models, on the same cubes::

    python benchmarks/bench_train.py --tiles 96 --steps 5 --workers 0 2 4 --device cuda
    python benchmarks/bench_train.py --threads 1   # on a machine shared with other jobs

For every stage at once, with the default settings, use ``carbongeo bench``.
"""

from __future__ import annotations

import argparse
import sys

from carbongeo.bench import bench_settings, format_json, format_table, run_bench


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=48, help="tiles per year (default 48)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per model")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", action="store_true", help="print JSON, not the table")
    args = parser.parse_args(argv)
    settings = bench_settings(
        device=args.device,
        train_tiles=args.tiles,
        train_steps=args.steps,
        train_batch=args.batch,
        loader_workers=tuple(args.workers),
        threads=args.threads,
        stages=("train",),
    )
    results = run_bench(settings, echo=lambda line: print(line, file=sys.stderr))
    print(format_json(results) if args.json else format_table(results))


if __name__ == "__main__":
    main()
