"""Data checks on the aligned cubes: per-band statistics, totals and warnings.

Statistics stream over tiles (the cubes are memory-mapped), so a check never loads a whole cube.
Percentiles come from a bounded, seeded random sample of valid pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from carbongeo.config import PipelineConfig
from carbongeo.stages.freshness import check_tiles
from carbongeo.store.tiles import TileIndex, load_index, open_aux_target
from carbongeo.training.normalization import RunningMoments

PERCENTILES = (1, 50, 99)
SAMPLE_PER_TILE = 512
LOW_CORRELATION = 0.05
HIGH_NODATA = 0.25
"""Share of the target's valid pixels where an aux band is nodata above which ``check`` warns."""
TOTAL_TOLERANCE = 1e-4


@dataclass
class BandStats:
    """Streaming statistics of one band in one year."""

    count: int = 0
    nan_count: int = 0
    zero_count: int = 0
    total: float = 0.0
    moments: RunningMoments = field(default_factory=lambda: RunningMoments(1))
    minimum: float = float("inf")
    maximum: float = float("-inf")
    sample: list[np.ndarray] = field(default_factory=list)

    def add(self, values: np.ndarray, rng: np.random.Generator) -> None:
        """Add the pixels of one tile (NaN = nodata)."""
        finite = np.isfinite(values)
        self.nan_count += int(values.size - finite.sum())
        valid = values[finite].astype(np.float64)
        if valid.size == 0:
            return
        self.count += valid.size
        self.zero_count += int((valid == 0).sum())
        self.total += float(valid.sum())
        self.moments.update(valid[None])
        self.minimum = min(self.minimum, float(valid.min()))
        self.maximum = max(self.maximum, float(valid.max()))
        take = min(SAMPLE_PER_TILE, valid.size)
        self.sample.append(rng.choice(valid, size=take, replace=False))

    def summary(self, padded_pixels: int) -> dict[str, Any]:
        """The figures reported for this band."""
        if self.count == 0:
            return {"valid_fraction": 0.0, "nan_count": self.nan_count, "count": 0}
        mean = self.total / self.count
        std = float(np.sqrt(self.moments.m2[0] / self.count))
        sample = np.concatenate(self.sample)
        out: dict[str, Any] = {
            "valid_fraction": self.count / padded_pixels,
            "count": self.count,
            "nan_count": self.nan_count,
            "zero_fraction": self.zero_count / self.count,
            "min": self.minimum,
            "mean": mean,
            "std": std,
            "max": self.maximum,
            "sum": self.total,
        }
        for q, value in zip(PERCENTILES, np.percentile(sample, PERCENTILES), strict=True):
            out[f"p{q}"] = float(value)
        return out


@dataclass
class CheckReport:
    """Statistics per year and band, totals, and warnings."""

    years: dict[int, dict[str, dict[str, Any]]]
    totals: dict[str, Any]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "years": {str(y): bands for y, bands in self.years.items()},
            "totals": self.totals,
            "warnings": self.warnings,
        }

    def to_text(self) -> str:
        """A readable report for people."""
        lines = []
        for year, bands in self.years.items():
            lines.append(f"year {year}")
            lines.append(
                f"  {'band':<14}{'valid':>7}{'zero':>7}{'min':>11}{'mean':>11}{'p99':>11}"
                f"{'max':>11}{'corr':>7}"
            )
            for name, s in bands.items():
                if s["count"] == 0:
                    lines.append(f"  {name:<14}{0:>7.2f}  (all nodata)")
                    continue
                corr = s.get("corr_with_target")
                corr_text = f"{corr:>7.2f}" if corr is not None else f"{'':>7}"
                lines.append(
                    f"  {name:<14}{s['valid_fraction']:>7.2f}{s['zero_fraction']:>7.2f}"
                    f"{s['min']:>11.4g}{s['mean']:>11.4g}{s['p99']:>11.4g}{s['max']:>11.4g}"
                    f"{corr_text}"
                )
        for year, t in self.totals.items():
            diff = t.get("relative_difference")
            diff_text = f"{diff:.2e}" if diff is not None else "n/a"
            lines.append(
                f"target total {year}: source {t.get('target_source')}, aligned "
                f"{t.get('target_aligned')}, relative difference {diff_text}"
            )
        lines.extend(f"warning: {w}" for w in self.warnings)
        if not self.warnings:
            lines.append("no warnings")
        return "\n".join(lines)


def check_data(
    config: PipelineConfig, years: list[int] | None = None, seed: int = 0
) -> CheckReport:
    """Compute per-band statistics and warnings for the tiled years.

    Args:
        config: The pipeline.
        years: Years to check; default every year in ``tiles/index.json`` that has a target
            (the statistics compare each aux band with the target).
        seed: Seed of the percentile sample.

    Returns:
        The report; nothing is written.
    """
    tiles_dir = config.tiles_dir
    index = load_index(tiles_dir)
    check_tiles(config, index)
    chosen = years if years is not None else [y for y in index.years if index.has_target(y)]
    warnings: list[str] = []
    per_year: dict[int, dict[str, dict[str, Any]]] = {}
    for year in chosen:
        per_year[year] = _year_stats(tiles_dir, index, year, seed)
        for name, stats in per_year[year].items():
            warnings.extend(_band_warnings(year, name, stats))

    totals: dict[str, Any] = {}
    for year, t in index.totals.items():
        if year not in chosen:
            continue
        entry = dict(t)
        source, aligned = t.get("target_source"), t.get("target_aligned")
        if source and aligned is not None:
            entry["relative_difference"] = abs(aligned - source) / abs(source)
            if entry["relative_difference"] > TOTAL_TOLERANCE:
                warnings.append(
                    f"{year}: target total changed by {entry['relative_difference']:.2e} in "
                    "alignment (part of the source may lie outside the grid)"
                )
        totals[str(year)] = entry
    return CheckReport(per_year, totals, warnings)


def _year_stats(tiles_dir: Path, index: TileIndex, year: int, seed: int) -> dict[str, dict]:
    x, y = open_aux_target(tiles_dir, index, year)
    bands = list(index.bands)
    rng = np.random.default_rng(seed)
    stats = {name: BandStats() for name in ["target", *bands]}
    # Running sums for the correlation of each aux band with log1p(target) on shared valid
    # pixels: emissions are heavy-tailed, and on raw values a few point sources decide r.
    co = np.zeros((len(bands), 5))  # n, sum_x, sum_y, sum_xx... kept as n, sx, sy, sxy, sxx
    syy = np.zeros(len(bands))
    target_valid = 0
    for i in range(x.shape[0]):
        target = np.asarray(y[i, 0], dtype=np.float64)
        target_valid += int(np.isfinite(target).sum())
        stats["target"].add(target, rng)
        for b, name in enumerate(bands):
            band = np.asarray(x[i, b], dtype=np.float64)
            stats[name].add(band, rng)
            both = np.isfinite(band) & np.isfinite(target)
            bv, tv = band[both], np.log1p(np.maximum(target[both], 0.0))
            co[b] += (bv.size, bv.sum(), tv.sum(), (bv * tv).sum(), (bv * bv).sum())
            syy[b] += (tv * tv).sum()
    padded_pixels = int(np.prod(y.shape[:1] + y.shape[2:]))
    out = {name: s.summary(padded_pixels) for name, s in stats.items()}
    for b, name in enumerate(bands):
        n, sx, sy, sxy, sxx = co[b]
        if target_valid:
            out[name]["nodata_share"] = 1.0 - n / target_valid
        if n < 2:
            continue
        cov = sxy / n - sx / n * sy / n
        var_x = sxx / n - (sx / n) ** 2
        var_y = syy[b] / n - (sy / n) ** 2
        if var_x > 0 and var_y > 0:
            out[name]["corr_with_target"] = float(cov / np.sqrt(var_x * var_y))
    return out


def _band_warnings(year: int, name: str, stats: dict[str, Any]) -> list[str]:
    if stats["count"] == 0:
        return [f"{year} {name}: all nodata (check the file, its nodata value and the grid)"]
    found = []
    share = stats.get("nodata_share", 0.0)
    if share > HIGH_NODATA:
        found.append(
            f"{year} {name}: nodata on {100 * share:.0f}% of the pixels where the target has data "
            "(check the file's extent, CRS and nodata value)"
        )
    if stats["max"] == stats["min"]:
        found.append(f"{year} {name}: constant value {stats['min']:.4g} (carries no information)")
    corr = stats.get("corr_with_target")
    if corr is not None and abs(corr) < LOW_CORRELATION:
        found.append(
            f"{year} {name}: correlation with log1p(target) is {corr:.3f}; "
            "the band may be misaligned (check its CRS and transform)"
        )
    return found
