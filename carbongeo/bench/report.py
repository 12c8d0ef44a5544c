"""The results of `run_bench` for people (one table) and for machines (JSON)."""

from __future__ import annotations

import json
from typing import Any


def format_json(results: dict[str, Any]) -> str:
    """The results as indented JSON (what ``carbongeo bench --json`` prints)."""
    return json.dumps(results, indent=2)


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


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _head(results: dict[str, Any]) -> str:
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
    return head


def _tile_rows(tile: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for row in tile:
        scene = f"{row['size']} px scene"
        rows.append(
            [
                "tile",
                f"{scene}, {row['sources']} sources, {row['source_mb']:g} MB",
                f"{_num(row['tile_mb_per_s'])} MB/s",
                f"rasterio.warp.reproject {_num(row['reproject_mb_per_s'])} MB/s "
                f"({row['reproject_peak_rss_mb']:.0f} MB)",
                _ratio(row["tile_vs_reproject"]),
                f"{row['tile_s']:.1f}",
                f"{row['peak_rss_mb']:.0f}",
            ]
        )
        rows.append(
            [
                "tile",
                f"{scene}, I/O floor",
                "",
                f"raw rasterio read {_num(row['read_mb_per_s'])} MB/s "
                f"({row['read_peak_rss_mb']:.0f} MB)",
                _ratio(row["tile_vs_read"]),
                "",
                "",
            ]
        )
    return rows


def _loader_reference(loaders: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The loader the training default uses (2 workers) when measured, else the fastest."""
    for loader in loaders:
        if loader["workers"] == 2:
            return loader
    return max(loaders, key=lambda loader: loader["tiles_per_s"], default=None)


def _train_rows(train: dict[str, Any]) -> list[list[str]]:
    rows = []
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
                f"{loader['peak_rss_mb']:.0f}",
            ]
        )
    best = _loader_reference(train["loader"])
    for model in train["models"]:
        reference, ratio = "", ""
        if best is not None:
            reference = (
                f"DataLoader ({best['workers']} workers) {_num(best['tiles_per_s'])} tiles/s"
            )
            ratio = f"{best['tiles_per_s'] / model['tiles_per_s']:.1f}"
        rows.append(
            [
                "train",
                f"step, {model['name']} model dim {model['dim']} depth {model['depth']} "
                f"({model['parameters'] / 1e6:.2f} M)",
                f"{_num(model['tiles_per_s'])} tiles/s",
                reference,
                ratio,
                f"{model['seconds']:.1f}",
                f"{model['peak_rss_mb']:.0f}",
            ]
        )
    return rows


def _mosaic_rows(mosaic: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for row in mosaic:
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
                f"forward alone {_num(row['forward_megapixels_per_s'])} Mpx/s "
                f"({row['forward_peak_rss_mb']:.0f} MB)",
                _ratio(row["mosaic_vs_forward"]),
                f"{row['seconds']:.1f}",
                f"{row['peak_rss_mb']:.0f}",
            ]
        )
    return rows


def format_table(results: dict[str, Any]) -> str:
    """One text table of :func:`~carbongeo.bench.run_bench` results, the machine line on top.

    The ratios of tile and mosaic are the time of the reference over the time of the stage;
    that of a training step is the loader's rate over the step's. Notes below the table say so.
    """
    machine = results["machine"]
    rows = [["stage", "case", "throughput", "reference", "ratio", "seconds", "peak RSS MB"]]
    rows += _tile_rows(results.get("tile", []))
    train = results.get("train")
    if train:
        rows += _train_rows(train)
    rows += _mosaic_rows(results.get("mosaic", []))
    notes = []
    if results.get("tile") or results.get("mosaic"):
        notes.append("ratio of tile and mosaic: time of the reference / time of the stage")
    if results.get("tile"):
        notes.append(
            "  tile: one rasterio.warp.reproject per source onto the same grid, with tile's "
            "resampling per kind (> 1: tile is faster); I/O floor: a raw read of every source"
        )
    if results.get("mosaic"):
        notes.append(
            "  mosaic: the network alone over the same windows and batches, no reading, blending "
            "or writing (1: mosaic costs only the network)"
        )
    if train:
        notes.append("ratio of train: DataLoader rate / step rate (> 1: the loader keeps up)")
    notes.append(
        "peak RSS: ru_maxrss of the measured process (the reference's in brackets), each a fresh "
        f"process started by a parent of {machine.get('rss_floor_mb', 0):.0f} MB."
    )
    return "\n".join([_head(results), *_table(rows, right={2, 4, 5, 6}), *notes])
