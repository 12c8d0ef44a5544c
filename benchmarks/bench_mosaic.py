"""Benchmark of ``carbongeo mosaic``: throughput and peak memory against the scene size.

For each scene side (e.g. 2048 and 8192 pixels) the script writes synthetic tile cubes straight to
disk (9 aux bands, one year, ``tile_size`` 128, ``scale`` 8; 2.4 GB of ``X`` at 8192 x 8192), a
tiny untrained checkpoint (``dim`` 8) and a pipeline file, then runs :func:`mosaic_years` in a
fresh process. Peak resident memory is read with ``getrusage(RUSAGE_CHILDREN)`` by an intermediate
process whose only child is that run, so it is the run's own peak. A streaming mosaic keeps it
flat: it must not grow with the scene area.

``--predictor fast`` replaces the network by a cheap numpy function (the coarse field spread
evenly), which measures the streaming machinery alone (reading, blending, mass re-projection,
writing the COG and the ``.npy``) at sizes where the CPU model would take too long.

Usage::

    python benchmarks/bench_mosaic.py --sizes 2048 4096 --root /tmp/carbongeo-bench
    python benchmarks/bench_mosaic.py --sizes 2048 8192 --predictor fast

This is an on-demand script, not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BANDS = ("ntl", "pop", "road", "ndvi", "built", "lst", "elev", "water", "lights2")
YEAR = 2020
TILE = 128
SCALE = 8


# --------------------------------------------------------------------------- building a scene
def build_scene(folder: Path, size: int, seed: int = 0) -> Path:
    """Write cubes, index, checkpoint and pipeline file for a ``size x size`` scene.

    Returns:
        The pipeline file.
    """
    import torch
    from affine import Affine
    from rasterio.crs import CRS

    from carbongeo.checkpoint import FORMAT, VERSION, plain, save_checkpoint
    from carbongeo.config import load_config
    from carbongeo.grid import Grid
    from carbongeo.models.network import DSTCarbonFormer
    from carbongeo.normalization import Normalization
    from carbongeo.tiling import TileIndex, TileRecord, cube_path, index_path

    config_path = folder / "carbongeo.toml"
    aux_tables = "\n".join(
        f'[[aux]]\nname = "{name}"\npath = "data/{name}_{{year}}.tif"\n' for name in BANDS
    )
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(
        f'workdir = "run"\nyears = [{YEAR}]\n\n[grid]\ntile_size = {TILE}\nscale = {SCALE}\n\n'
        '[target]\npath = "data/co2_{year}.tif"\nunits = "t CO2 / cell / yr"\n\n'
        f"{aux_tables}\n[model]\ndim = 8\ndepth = 1\n\n[mosaic]\noverlap = 32\nbatch_size = 8\n",
        encoding="utf-8",
    )
    config = load_config(config_path)
    grid = Grid(
        CRS.from_epsg(32650).to_wkt(),
        Affine(100.0, 0.0, 300000.0, 0.0, -100.0, 2600000.0),
        size,
        size,
        tile_size=TILE,
        scale=SCALE,
    )
    tiles_dir = config.tiles_dir
    tiles_dir.mkdir(parents=True, exist_ok=True)
    n = grid.tile_rows * grid.tile_cols
    x = np.lib.format.open_memmap(
        cube_path(tiles_dir, "X", YEAR), "w+", np.float32, (n, len(BANDS), TILE, TILE)
    )
    y = np.lib.format.open_memmap(
        cube_path(tiles_dir, "Y", YEAR), "w+", np.float32, (n, 1, TILE, TILE)
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
    index = TileIndex(
        grid=grid,
        years=[YEAR],
        bands=list(BANDS),
        aux=[{"name": b, "kind": "intensive", "transform": "log1p", "units": ""} for b in BANDS],
        target={"units": "t CO2 / cell / yr", "kind": "extensive"},
        has_coarse=False,
        tiles=[TileRecord(t.id, t.row, t.col, {}) for t in grid.iter_tiles()],
    )
    index_path(tiles_dir).write_text(json.dumps(index.to_dict()), encoding="utf-8")
    torch.manual_seed(seed)
    model = DSTCarbonFormer(len(BANDS), SCALE, dim=8, depth=1, value_scale=10.0)
    norm = Normalization(
        aux_mean=(3.0,) * len(BANDS),
        aux_std=(1.0,) * len(BANDS),
        value_scale=10.0,
        high_threshold=20.0,
        hotspot_threshold=40.0,
    )
    save_checkpoint(
        config.checkpoints_dir / "best.pt",
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
    return config_path


# --------------------------------------------------------------------------- the measured run
def fast_predictor(model: Any, device: Any = "cpu") -> Any:
    """A stand-in for the network: each coarse cell spread evenly over its pixels."""

    def predict(aux: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        centre = coarse[:, 0, coarse.shape[2] // 2]
        spread = np.repeat(np.repeat(centre, SCALE, axis=1), SCALE, axis=2)
        return spread / (SCALE * SCALE)

    return predict


def run(config_path: Path, predictor: str) -> dict[str, Any]:
    """Mosaic the scene once and return the result with this process's peak RSS."""
    import carbongeo.mosaic as mosaic
    from carbongeo.config import load_config

    if predictor == "fast":
        mosaic.torch_predictor = fast_predictor  # type: ignore[assignment]
    config = load_config(config_path)
    start = time.perf_counter()
    (result,) = mosaic.mosaic_years(config, [YEAR], device="cpu", overwrite=True, progress=False)
    data = result.to_dict()
    data["wall_s"] = time.perf_counter() - start
    data["self_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return data


def measure(config_path: Path, predictor: str) -> dict[str, Any]:
    """Run :func:`run` in a child process; its peak RSS comes from ``RUSAGE_CHILDREN``."""
    cmd = [sys.executable, __file__, "_run", str(config_path), "--predictor", predictor]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    data = json.loads(done.stdout.strip().splitlines()[-1])
    data["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return data


# --------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "_measure", "_run"])
    parser.add_argument("config", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--root", type=Path, default=Path("/tmp/carbongeo-bench"))
    parser.add_argument("--predictor", choices=["model", "fast"], default="model")
    args = parser.parse_args(argv)

    if args.mode == "_run":
        print(json.dumps(run(args.config, args.predictor)))
        return
    if args.mode == "_measure":
        print(json.dumps(measure(args.config, args.predictor)))
        return

    print(f"predictor: {args.predictor}", flush=True)
    header = f"{'size':>6} {'Mpx':>7} {'windows':>8} {'seconds':>8} {'Mpx/s':>7} "
    print(header + f"{'peak RSS MB':>12} {'worst cell err':>15}", flush=True)
    for size in args.sizes:
        folder = args.root / f"scene_{size}"
        config_path = folder / "carbongeo.toml"
        if not (folder / "run" / "tiles" / "index.json").is_file():
            build_scene(folder, size)
        # A fresh intermediate process per size, so RUSAGE_CHILDREN holds only this run's peak.
        cmd = [sys.executable, __file__, "_measure", str(config_path)]
        cmd += ["--predictor", args.predictor]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        data = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{size:>6} {size * size / 1e6:>7.1f} {data['windows']:>8} {data['seconds']:>8.1f} "
            f"{data['megapixels_per_s']:>7.3f} {data['peak_rss_mb']:>12.0f} "
            f"{data['worst_cell_rel_error']:>15.2e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
