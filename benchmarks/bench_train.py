"""Benchmark of training input and compute: is the DataLoader fast enough to feed the model?

The script writes synthetic tile cubes to a temporary folder (9 aux bands, ``tile_size`` 128,
``scale`` 8, three years) and measures:

* the DataLoader alone: tiles per second delivered by :class:`carbongeo.data.CubeDataset`
  (memory-mapped reads, 3-year windows, block sums, normalisation, augmentation, collation) for
  each ``--workers`` value, after one warm-up pass so the cubes are in the page cache;
* the training step alone: tiles per second of forward + loss + backward + clip + AdamW step on a
  batch already in memory, for the full-size model (``dim`` 32, ``depth`` 2) and the demo-size
  model (``dim`` 16, ``depth`` 1).

The loader is not the bottleneck when its rate exceeds the step rate (on a GPU, compare with the
step rate measured on that GPU: ``--device cuda``).

Usage::

    python benchmarks/bench_train.py
    python benchmarks/bench_train.py --tiles 96 --steps 5 --workers 0 2 4 --device cuda
    python benchmarks/bench_train.py --threads 1   # on a machine shared with other jobs

This is an on-demand script, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from carbongeo.data import CubeDataset
from carbongeo.losses import HybridLoss
from carbongeo.models.network import DSTCarbonFormer, count_parameters
from carbongeo.normalization import compute_normalization
from carbongeo.train import select_amp

BANDS = ("ntl", "pop", "road", "ndvi", "built", "lst", "elev", "water", "lights2")
YEARS = (2019, 2020, 2021)
TILE = 128
SCALE = 8
BATCH = 8
MODELS = {"full (dim 32, depth 2)": (32, 2), "demo (dim 16, depth 1)": (16, 1)}


def write_cubes(folder: Path, n_tiles: int, seed: int = 0) -> list[int]:
    """Write ``X``/``Y`` cubes and ``index.json`` for ``n_tiles`` tiles; return the tile ids."""
    rng = np.random.default_rng(seed)
    for year in YEARS:
        x = rng.normal(0.0, 1.0, (n_tiles, len(BANDS), TILE, TILE)).astype(np.float32)
        sparse = rng.random((n_tiles, 1, TILE, TILE)) < 0.3
        y = np.where(sparse, rng.lognormal(2.0, 1.5, (n_tiles, 1, TILE, TILE)), 0.0)
        np.save(folder / f"X_{year}.npy", x)
        np.save(folder / f"Y_{year}.npy", y.astype(np.float32))
    cols = int(np.ceil(np.sqrt(n_tiles)))
    index = {
        "version": 1,
        "grid": {
            "crs": "EPSG:3857",
            "transform": [100.0, 0.0, 0.0, 0.0, -100.0, 0.0],
            "height": TILE * int(np.ceil(n_tiles / cols)),
            "width": TILE * cols,
            "tile_size": TILE,
            "scale": SCALE,
        },
        "years": list(YEARS),
        "bands": list(BANDS),
        "tiles": [
            {"id": i, "row": (i // cols) * TILE, "col": (i % cols) * TILE, "valid_fraction": {}}
            for i in range(n_tiles)
        ],
    }
    (folder / "index.json").write_text(json.dumps(index))
    return list(range(n_tiles))


def loader_rate(data: CubeDataset, workers: int) -> float:
    """Tiles per second of one pass over ``data`` (after a warm-up pass)."""
    loader = DataLoader(
        data,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    for _ in loader:  # warm-up: page cache, worker start-up
        pass
    start = time.perf_counter()
    count = sum(len(batch["year"]) for batch in loader)
    return count / (time.perf_counter() - start)


def step_rate(
    data: CubeDataset, dim: int, depth: int, steps: int, device: torch.device
) -> tuple[float, int]:
    """Training tiles per second of the model (a batch already in memory); and its size."""
    torch.manual_seed(0)
    norm = data.norm
    model = DSTCarbonFormer(
        len(BANDS), SCALE, dim=dim, depth=depth, value_scale=norm.value_scale
    ).to(device)
    loss_fn = HybridLoss(SCALE, value_scale=norm.value_scale, high_threshold=norm.high_threshold)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp, dtype, _ = select_amp(device)
    batch = next(iter(DataLoader(data, batch_size=BATCH)))
    aux, coarse = batch["aux"].to(device), batch["coarse"].to(device)
    target, mask = batch["target"].to(device), batch["mask"].to(device)

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
    return steps * BATCH / (time.perf_counter() - start), count_parameters(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=48, help="tiles per year (default 48)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per model")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)

    with tempfile.TemporaryDirectory(prefix="carbongeo-bench-train-") as tmp:
        folder = Path(tmp)
        ids = write_cubes(folder, args.tiles)
        start = time.perf_counter()
        norm = compute_normalization(folder, ids, YEARS, high_quantile=0.9)
        stats_seconds = time.perf_counter() - start
        data = CubeDataset(folder, ids, list(YEARS), norm, augment=True)
        print(
            f"{len(data)} samples of {len(BANDS)} bands x 3 years x {TILE}x{TILE}, scale "
            f"{SCALE}, batch {BATCH}; torch threads {torch.get_num_threads()}, device {device}, "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        print(f"normalisation statistics: {len(ids) * len(YEARS) / stats_seconds:.0f} tiles/s")
        for workers in args.workers:
            print(f"DataLoader, {workers} workers: {loader_rate(data, workers):.1f} tiles/s")
        for name, (dim, depth) in MODELS.items():
            rate, params = step_rate(data, dim, depth, args.steps, device)
            print(f"training step, {name}, {params / 1e6:.2f} M parameters: {rate:.2f} tiles/s")


if __name__ == "__main__":
    main()
