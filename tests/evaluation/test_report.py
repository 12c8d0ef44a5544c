"""Tests of carbongeo.evaluation.report: ranking, verdict, Markdown and JSON of the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

from carbongeo.evaluation.metrics import REPORT_METRICS
from carbongeo.evaluation.report import HEADERS, MODEL, EvaluationReport, SectionResult


def _section(metrics: dict[str, dict[str, float]]) -> SectionResult:
    return SectionResult(
        name="test",
        split="test",
        years=(2020, 2021),
        n_tiles=3,
        n_pixels=1200,
        metrics=metrics,
        data_range=10.0,
        coarse_total=100.0,
        unplaced_mass=5.0,
    )


def _report(section: SectionResult) -> EvaluationReport:
    return EvaluationReport(
        sections=(section,),
        units="t CO2",
        scale=4,
        holdout_year=None,
        markdown_path=Path("reports/evaluation.md"),
        json_path=Path("reports/evaluation.json"),
    )


def test_every_report_metric_has_a_header() -> None:
    assert tuple(HEADERS) == REPORT_METRICS


def test_ranking_by_mae_with_nan_last_and_the_verdict() -> None:
    section = _section(
        {
            "uniform": {"mae": 4.0},
            MODEL: {"mae": 3.0},
            "broken": {"mae": math.nan},
            "bicubic": {"mae": 5.0},
        }
    )
    assert section.ranking() == [MODEL, "uniform", "bicubic", "broken"]
    assert section.best_baseline == "uniform"
    expected = "model MAE 3.000 vs best baseline uniform 4.000 t: 25.0% lower (better)"
    assert section.verdict("t") == expected


def test_an_exact_baseline_and_a_missing_model_have_their_own_verdicts() -> None:
    exact = _section({MODEL: {"mae": 2.0}, "dasymetric:truth": {"mae": 0.0}})
    assert "is exact" in exact.verdict("t")
    assert _section({"uniform": {"mae": 1.0}}).verdict("t") == "no model prediction to compare"


def test_json_is_strict_and_markdown_lists_only_present_metrics() -> None:
    metrics = {
        MODEL: {"mae": 3.0, "r2": math.nan, "psnr": math.inf, "pred_nodata_pixels": 7.0},
        "uniform": {"mae": 4.0, "r2": 0.5, "psnr": 20.0, "pred_nodata_pixels": 0.0},
    }
    report = _report(_section(metrics))
    data = report.to_dict()
    json.dumps(data, allow_nan=False)  # NaN and inf became null
    assert data["metrics"] == list(REPORT_METRICS)
    assert data["sections"][0]["methods"][MODEL]["r2"] is None
    markdown = report.to_markdown()
    assert "| method | MAE (t CO2) | R² | PSNR dB |" in markdown
    assert "| **model** | 3.000 | - | inf |" in markdown
    assert "| uniform (best baseline) | 4.000 | 0.500 | 20.00 |" in markdown
    assert "without a prediction (counted as 0): model 7." in markdown
    assert "(5.00%)" in markdown  # the unplaced share of the coarse mass
