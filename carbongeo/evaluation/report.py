"""The evaluation report: sections of pooled metrics, as Markdown and as JSON.

A :class:`SectionResult` holds the metrics of every method (the model and the baselines) on one set
of tiles and years; :class:`EvaluationReport` holds the sections and renders
``reports/evaluation.md`` and the content of ``reports/evaluation.json``. The metrics themselves are
defined in :mod:`carbongeo.evaluation.metrics`. Pure formatting: nothing here reads or writes files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from carbongeo.evaluation.metrics import REPORT_METRICS

__all__ = ["HEADERS", "MODEL", "EvaluationReport", "SectionResult"]

MODEL = "model"
"""The method name of the model's prediction (every other method is a baseline)."""

#: The Markdown column header of every report metric (``{u}`` = target units), in report order.
HEADERS: dict[str, str] = {
    "mae": "MAE ({u})",
    "rmse": "RMSE ({u})",
    "r2": "R²",
    "mae_log1p": "MAE log1p",
    "r2_log1p": "R² log1p",
    "ssim": "SSIM",
    "ssim_log1p": "SSIM log1p",
    "psnr": "PSNR dB",
    "pbias": "total bias",
    "hotspot_recall": "top-1% recall",
    "hotspot_precision": "top-1% precision",
    "hotspot_mae": "top-1% MAE ({u})",
    "mass_err_max": "block mass err max",
    "mass_err_mean": "block mass err mean",
    "mass_on_zero_truth": "mass on zero truth",
    "mass_on_water": "mass on water",
}


@dataclass(frozen=True)
class SectionResult:
    """Metrics of every method on one set of tiles and years.

    Attributes:
        name: Section title (``test`` or ``holdout <year>``).
        split: The tile set (``train``, ``val``, ``test`` or ``all``).
        years: Evaluated years.
        n_tiles: Evaluated tiles (per year).
        n_pixels: Evaluated pixels, all years together.
        metrics: ``{method: {metric: value}}``.
        data_range: Truth max - min over the evaluated set (SSIM/PSNR).
        coarse_total: Total coarse input over the evaluated tiles.
        unplaced_mass: Coarse mass in blocks where no aux pixel is valid (no baseline can place it).
        mass_on_masked: Coarse mass in blocks whose valid pixels are all hard zero classes: every
            method keeps it spread over those pixels rather than dropping it.
        models: The methods that are trained models (the others are baselines).
        references: Methods that read the fine truth to show what is reachable (the oracle):
            neither models nor baselines.
        factor: 0 for a fine-level section (scored against the fine truth); ``k`` for a
            coarse-level (Wald) section: every method downscaled the coarse product aggregated
            by ``k`` and is scored against the real product on its cells.
    """

    name: str
    split: str
    years: tuple[int, ...]
    n_tiles: int
    n_pixels: int
    metrics: dict[str, dict[str, float]]
    data_range: float
    coarse_total: float
    unplaced_mass: float
    mass_on_masked: float = 0.0
    factor: int = 0
    models: tuple[str, ...] = (MODEL,)
    references: tuple[str, ...] = ()

    @property
    def level(self) -> str:
        """``fine`` or ``coarse``."""
        return "coarse" if self.factor else "fine"

    def ranking(self) -> list[str]:
        """Methods by increasing MAE (NaN last)."""
        return sorted(self.metrics, key=lambda m: _sort_key(self.metrics[m]["mae"]))

    @property
    def best_baseline(self) -> str | None:
        """The baseline with the lowest MAE."""
        baselines = [m for m in self.ranking() if m not in (*self.models, *self.references)]
        return baselines[0] if baselines else None

    def verdict(self, units: str) -> str:
        """One line: the model against the best baseline by MAE."""
        best = self.best_baseline
        if MODEL not in self.metrics or best is None:
            return "no model prediction to compare"
        model_mae = self.metrics[MODEL]["mae"]
        base_mae = self.metrics[best]["mae"]
        if not (math.isfinite(model_mae) and math.isfinite(base_mae)):
            return "MAE could not be computed (no evaluated pixels)"
        if base_mae <= 1e-9 * model_mae or base_mae == 0:
            # Rounding-level baseline error: the proxy is the truth itself.
            return (
                f"model MAE {_num(model_mae)} {units}; the best baseline ({best}) is exact "
                f"(MAE {base_mae:.1e})"
            )
        change = (base_mae - model_mae) / base_mae * 100.0
        word = "lower (better)" if change >= 0 else "higher (worse)"
        return (
            f"model MAE {_num(model_mae)} vs best baseline {best} {_num(base_mae)} {units}: "
            f"{abs(change):.1f}% {word}"
        )

    def to_dict(self, units: str) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "name": self.name,
            "split": self.split,
            "years": list(self.years),
            "tiles": self.n_tiles,
            "pixels": self.n_pixels,
            "data_range": self.data_range,
            "coarse_total": self.coarse_total,
            "unplaced_mass": self.unplaced_mass,
            "mass_on_masked": self.mass_on_masked,
            "level": self.level,
            "factor": self.factor,
            "ranking": self.ranking(),
            "best_baseline": self.best_baseline,
            "verdict": self.verdict(units),
            "methods": self.metrics,
        }


@dataclass(frozen=True)
class EvaluationReport:
    """The result of :func:`carbongeo.stages.evaluate.evaluate`.

    Attributes:
        sections: The main split section, then the held-out year (when there is one).
        units: Units of the target.
        scale: Fine pixels per coarse cell side.
        holdout_year: The held-out year of the split, if any.
        markdown_path: ``reports/evaluation.md``.
        json_path: ``reports/evaluation.json``.
        forests: What each fitted forest is and learned from: ``{method: {"describe",
            "data", "fit_seconds", "predict_seconds", "samples", "importances"}}``.
        model: What the model learnt from (its supervision), for the reader.
    """

    sections: tuple[SectionResult, ...]
    units: str
    scale: int
    holdout_year: int | None
    markdown_path: Path
    json_path: Path
    forests: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the content of ``evaluation.json``; NaN and inf become null)."""
        return _json_safe(
            {
                "units": self.units,
                "scale": self.scale,
                "holdout_year": self.holdout_year,
                "metrics": list(REPORT_METRICS),
                "sections": [s.to_dict(self.units) for s in self.sections],
                "forests": self.forests,
                "model": self.model,
                "markdown": str(self.markdown_path),
            }
        )

    def to_markdown(self) -> str:
        """The Markdown report."""
        lines = ["# carbongeo evaluation", ""]
        lines.append(
            f"Units: {self.units} (MAE, RMSE). Coarse scale {self.scale} x {self.scale}. "
            "Metrics pooled over every evaluated (truth-valid) pixel; see the definitions below."
        )
        if self.model:
            lines += ["", f"What the models learnt from: {self.model}."]
        for section in self.sections:
            lines += ["", *_section_markdown(section, self.units)]
        if self.forests:
            lines += ["", "## Forests", ""]
            for summary in self.forests.values():
                shares = ", ".join(f"{k} {v:.2f}" for k, v in summary["importances"].items())
                lines.append(
                    f"- {summary['describe']}; learned from {summary['data']}; predicting took "
                    f"{summary['predict_seconds']:.1f} s. Importances: {shares}."
                )
        lines += ["", "## Definitions", ""]
        lines += [
            "- R² = 1 - SSE/SST; log1p columns use log1p(max(x, 0)).",
            "- SSIM: 7x7 uniform window over truth-valid pixels, data range = truth max - min "
            "over the evaluated set; PSNR uses the same range.",
            "- top-1%: the truth's top 1 % cells against the prediction's top 1 % (zeros "
            "excluded); top-1% MAE is the MAE on the truth's top cells.",
            "- block mass err: |block sum - coarse| / coarse over coarse cells > 0 with a "
            "prediction; mass on zero truth: share of predicted mass on cells whose truth is 0.",
            "- total bias: (sum pred - sum truth) / sum truth.",
            "- learned-dasymetric: a random forest fitted on coarse cells only (cell-mean aux "
            "-> log mass per pixel), no fine truth; supervised-forest: a random forest fitted on "
            "the training tiles' fine truth (pixel aux + cell context). Both share each cell's "
            "mass exactly, like every baseline.",
            "- oracle (only with a real coarse product): the true within-cell shares times the "
            "product; it reads the fine truth and shows the best any method conserving the "
            "product's cells can do.",
        ]
        return "\n".join(lines) + "\n"


def _section_markdown(section: SectionResult, units: str) -> list[str]:
    years = ", ".join(str(y) for y in section.years)
    if section.factor:
        what = (
            f"Coarse level (Wald protocol, no fine truth used): every method downscaled the coarse "
            f"product aggregated by k = {section.factor}; its map summed to the product's cells "
            f"is scored against the real product. Values are per product cell"
        )
        unit = "evaluated product cells"
    else:
        what = "Fine level: every method is scored against the fine truth (the target)"
        unit = "evaluated pixels"
    lines = [
        f"## {section.name}",
        "",
        f"{what}. Tiles: {section.n_tiles} ({section.split}) x {len(section.years)} year(s) "
        f"({years}); {unit}: {section.n_pixels:,}.",
    ]
    if section.coarse_total > 0 and section.unplaced_mass > 0:
        share = section.unplaced_mass / section.coarse_total
        lines.append(
            f"Coarse mass in blocks without valid aux (unplaceable by the baselines): "
            f"{_num(section.unplaced_mass)} ({share:.2%})."
        )
    missing = {
        name: int(m.get("pred_nodata_pixels", 0))
        for name, m in section.metrics.items()
        if m.get("pred_nodata_pixels", 0) > 0
    }
    if section.mass_on_masked > 0:
        share = section.mass_on_masked / max(section.coarse_total, 1e-300)
        lines.append(
            f"Coarse mass in blocks made only of zero-class pixels (kept there by every method): "
            f"{_num(section.mass_on_masked)} ({share:.2%})."
        )
    if missing:
        listed = ", ".join(f"{name} {count:,}" for name, count in missing.items())
        lines.append(f"Truth-valid pixels without a prediction (counted as 0): {listed}.")
    lines.append("")
    columns = [k for k in REPORT_METRICS if any(k in m for m in section.metrics.values())]
    header = ["method", *(HEADERS[k].format(u=units) for k in columns)]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    best = section.best_baseline
    for name in section.ranking():
        label = name
        if name in section.models:
            label = f"**{name}**"
        elif name in section.references:
            label = f"_{name} (reads the fine truth)_"
        elif name == best:
            label = f"{name} (best baseline)"
        cells = [_cell(key, section.metrics[name].get(key, float("nan"))) for key in columns]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    lines += ["", f"Verdict: {section.verdict(units)}."]
    return lines


def _cell(key: str, value: float) -> str:
    if not math.isfinite(value):
        return "inf" if value == math.inf else "-"
    if key.startswith("mass_err"):
        return f"{value:.1e}"
    if key in ("pbias", "mass_on_zero_truth", "mass_on_water"):
        return f"{value:.2%}"
    if key in ("r2", "r2_log1p", "ssim", "ssim_log1p", "hotspot_recall", "hotspot_precision"):
        return f"{value:.3f}"
    if key == "psnr":
        return f"{value:.2f}"
    return _num(value)


def _num(value: float) -> str:
    """A readable number: 4 significant digits, thousands separators for large values."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:#.4g}"


def _sort_key(value: float) -> tuple[int, float]:
    return (0, value) if math.isfinite(value) else (1, 0.0)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
