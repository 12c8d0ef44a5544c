"""Benchmark ``carbongeo mosaic`` alone, with knobs ``carbongeo bench`` does not expose.

A thin wrapper over :mod:`carbongeo.bench`. ``--predictor fast`` replaces the network by a cheap
numpy stand-in (each coarse cell spread evenly), which measures the streaming machinery alone
(reading, blending, mass re-projection, writing the COG and the ``.npy``) at sizes where the CPU
model would take too long. Either is measured next to the same predictor alone over the same
windows (no reading, blending or writing)::

    python benchmarks/bench_mosaic.py --sizes 2048 4096 --out bench-scenes
    python benchmarks/bench_mosaic.py --sizes 2048 8192 --predictor fast
    python benchmarks/bench_mosaic.py --dim 16 --depth 1   # the demo-size network

For every stage at once, with the default settings, use ``carbongeo bench``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from carbongeo.bench import bench_settings, format_json, format_table, run_bench


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--out", type=Path, default=None, help="keep (and reuse) scenes here")
    parser.add_argument("--predictor", choices=["model", "fast"], default="model")
    parser.add_argument("--dim", type=int, default=8, help="network width (default 8)")
    parser.add_argument("--depth", type=int, default=1, help="network depth (default 1)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", action="store_true", help="print JSON, not the table")
    args = parser.parse_args(argv)
    settings = bench_settings(
        device=args.device,
        mosaic_sizes=args.sizes,
        mosaic_predictor=args.predictor,
        mosaic_model=(args.dim, args.depth),
        stages=("mosaic",),
    )
    results = run_bench(settings, out=args.out, echo=lambda line: print(line, file=sys.stderr))
    print(format_json(results) if args.json else format_table(results))


if __name__ == "__main__":
    main()
