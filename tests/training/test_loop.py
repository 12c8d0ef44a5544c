"""Tests of carbongeo.training.loop: steps, validation, early stopping, checkpoints and log."""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _cubes import YEARS, make_world

import carbongeo.training.loop as loop_module
from carbongeo.evaluation.metrics import VALIDATION_METRICS
from carbongeo.models.losses import HybridLoss
from carbongeo.models.network import DSTCarbonFormer
from carbongeo.stages.train import train
from carbongeo.store.checkpoint import load_checkpoint
from carbongeo.store.split import load_split
from carbongeo.training.data import CubeDataset
from carbongeo.training.interrupt import DeferredInterrupt, InterruptGuard
from carbongeo.training.loop import LOG_COLUMNS, validate, write_log
from carbongeo.training.normalization import Normalization

NORM = Normalization((0.0, 3.0), (1.0, 2.0), 10.0, 30.0, 80.0)


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _scripted_validation(monkeypatch: pytest.MonkeyPatch, maes: list[float]) -> None:
    """Make each epoch's validation return the next MAE of ``maes`` (other metrics 0)."""
    remaining = iter(maes)

    def fake_validate(*args: Any, **kwargs: Any) -> dict[str, float]:
        return {**dict.fromkeys(VALIDATION_METRICS, 0.0), "mae": next(remaining)}

    monkeypatch.setattr(loop_module, "validate", fake_validate)


def test_log_columns_and_number_format(tmp_path: Path) -> None:
    path = tmp_path / "train_log.csv"
    write_log(path, [{"epoch": 1, "lr": 0.00123456789, "train_loss": None, "other": "x"}])
    with path.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == LOG_COLUMNS
        (row,) = list(reader)
    assert (row["epoch"], row["lr"], row["train_loss"], row["seconds"]) == (
        "1",
        "0.00123457",
        "",
        "",
    )


def test_validation_stops_at_a_batch_boundary_on_ctrl_c(tmp_path: Path) -> None:
    config = make_world(tmp_path)
    data = CubeDataset(config.tiles_dir, load_split(config.tiles_dir).val, list(YEARS), NORM)
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    model = DSTCarbonFormer(2, 4, dim=8, depth=1, value_scale=NORM.value_scale)
    guard = InterruptGuard()
    assert math.isfinite(
        validate(model, loader, torch.device("cpu"), NORM, 4, interrupt=guard)["mae"]
    )
    guard.requested = True
    with pytest.raises(DeferredInterrupt):
        validate(model, loader, torch.device("cpu"), NORM, 4, interrupt=guard)


def test_early_stopping_after_patience_epochs_without_improvement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_world(tmp_path, epochs=5, patience=2)
    _scripted_validation(monkeypatch, [5.0, 4.0, 6.0, 4.5, 1.0])
    result = train(config, progress=False, max_steps_per_epoch=1)
    assert result.epochs_run == 4 and result.best_val_mae == 4.0
    latest = load_checkpoint(result.latest_path).training
    best = load_checkpoint(result.best_path).training
    assert latest is not None and best is not None
    assert (latest.epoch, latest.stopped, latest.bad_epochs) == (4, True, 2)
    assert (best.epoch, best.best_metric) == (2, 4.0)
    with result.log_path.open() as f:
        assert [float(r["val_mae"]) for r in csv.DictReader(f)] == [5.0, 4.0, 6.0, 4.5]
    assert train(config, progress=False).epochs_run == 0  # stopped runs stay stopped


def test_a_never_finite_validation_keeps_the_last_epoch_as_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_world(tmp_path, epochs=2)
    _scripted_validation(monkeypatch, [math.nan, math.nan])
    with caplog.at_level(logging.WARNING, logger="carbongeo.training.loop"):
        result = train(config, progress=False, max_steps_per_epoch=1)
    assert "never finite" in caplog.text
    best = load_checkpoint(result.best_path).training
    assert best is not None and best.epoch == 2 and best.best_metric == math.inf


def test_non_finite_loss_skips_the_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_world(tmp_path, epochs=1)
    real_forward = HybridLoss.forward
    calls = {"n": 0}

    def forward(self: HybridLoss, *args: Any) -> Any:
        total, terms = real_forward(self, *args)
        calls["n"] += 1
        return (total * math.nan if calls["n"] == 1 else total), terms

    monkeypatch.setattr(HybridLoss, "forward", forward)
    result = train(config, progress=False)
    with result.log_path.open() as f:
        row = next(csv.DictReader(f))
    assert int(row["skipped_batches"]) == 1
    assert math.isfinite(float(row["train_loss"]))
    weights = load_checkpoint(result.latest_path).weights
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_log_seconds_are_not_counted_twice(tmp_path: Path) -> None:
    config = make_world(tmp_path, epochs=2)
    started = time.perf_counter()
    result = train(config, progress=False)
    elapsed = time.perf_counter() - started
    with result.log_path.open() as f:
        total = sum(float(row["seconds"]) for row in csv.DictReader(f))
    assert 0 < total <= elapsed
