"""Tests of carbongeo.stages.train on tiny synthetic cubes (CPU, a few seconds per run)."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _cubes import YEARS, make_world, write_split

import carbongeo.stages.train as train_module
import carbongeo.training.loop as loop_module
from carbongeo.config import PipelineConfig
from carbongeo.errors import CheckpointError, DeviceUnavailableError
from carbongeo.models.network import DSTCarbonFormer
from carbongeo.stages.train import train
from carbongeo.store.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from carbongeo.store.split import load_split
from carbongeo.training.data import CubeDataset
from carbongeo.training.loop import LOG_COLUMNS, validate
from carbongeo.training.prior import FOREST_TREES
from carbongeo.training.setup import model_from_checkpoint

# 4 train tiles x 3 years = 12 samples: 4 steps of 3 per epoch; 2 val tiles.
RESUME_SETTINGS: dict[str, Any] = {"epochs": 2, "batch_size": 3, "warmup_epochs": 1}


class Killed(Exception):
    """Stands for the process being killed."""


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread: tiny tensors gain nothing from more, and a busy machine loses a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def deterministic() -> Iterator[None]:
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    """The state after an uninterrupted 2-epoch run, the reference for the resume tests."""
    torch.use_deterministic_algorithms(True)
    try:
        config = make_world(tmp_path_factory.mktemp("straight"), n_tiles=6, **RESUME_SETTINGS)
        train(config, progress=False)
    finally:
        torch.use_deterministic_algorithms(False)
    return load_checkpoint(config.checkpoints_dir / "latest.pt")


def _assert_same_run(a: Checkpoint, b: Checkpoint) -> None:
    assert a.training is not None and b.training is not None
    assert a.training.epoch == b.training.epoch
    assert a.weights.keys() == b.weights.keys()
    for name, value in a.weights.items():
        assert torch.equal(value, b.weights[name]), name
    for key in ("val_mae", "train_loss", "lr"):
        assert [row[key] for row in a.training.history] == [row[key] for row in b.training.history]


def _val_loader(config: PipelineConfig, norm: Any) -> torch.utils.data.DataLoader[Any]:
    split = load_split(config.tiles_dir)
    data = CubeDataset(config.tiles_dir, split.val, list(YEARS), norm)
    return torch.utils.data.DataLoader(data, batch_size=4)


# --------------------------------------------------------------------------- devices
def test_cuda_without_gpu_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_module.resolve_device("auto") == torch.device("cpu")
    config = make_world(tmp_path)
    with pytest.raises(DeviceUnavailableError, match="use 'cpu' or 'auto'") as info:
        train(config, device="cuda", progress=False)
    assert info.value.param == "device"
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, device="cuda"))
    with pytest.raises(DeviceUnavailableError) as info:
        train(config, progress=False)
    assert info.value.param == "train.device"  # the value came from the config


# --------------------------------------------------------------------------- training
def test_training_lowers_validation_mae(tmp_path: Path) -> None:
    config = make_world(tmp_path, epochs=5, lr=2e-3)
    result = train(config, progress=False)
    assert result.epochs_run == 5
    with result.log_path.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == LOG_COLUMNS
        rows = list(reader)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert all(int(r["skipped_batches"]) == 0 for r in rows)
    assert all(float(r["val_mass_err_pooled"]) < 1e-4 for r in rows)  # the mass constraint holds

    best = load_checkpoint(result.best_path)
    assert best.bands == ("b0", "b1") and best.scale == 4 and best.tile_size == 32
    assert best.data_hash == config.data_hash() and best.training is not None
    assert best.training.best_metric == result.best_val_mae
    model, norm = model_from_checkpoint(best), best.normalization
    loader = _val_loader(config, norm)
    trained = validate(model, loader, torch.device("cpu"), norm, 4)["mae"]
    assert trained == pytest.approx(result.best_val_mae, rel=1e-6)  # other batch size
    torch.manual_seed(0)
    untrained = DSTCarbonFormer(**model.config)
    before = validate(untrained, loader, torch.device("cpu"), norm, 4)["mae"]
    assert result.best_val_mae < 0.95 * before


def test_each_prior_starts_training_as_asked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="carbongeo")
    result = train(make_world(tmp_path / "fitted", epochs=1, prior="fitted"), progress=False)
    assert "prior: log-linear allocation fitted on" in caplog.text
    assert load_checkpoint(result.best_path).model_config["forest"] is None
    caplog.clear()
    zero = make_world(tmp_path / "zero", epochs=1, prior="zero")
    result = train(zero, progress=False)
    assert "prior:" not in caplog.text
    assert load_checkpoint(result.best_path).model_config["forest"] is None
    caplog.clear()
    forest = make_world(tmp_path / "forest", epochs=1)  # fine supervision: auto is the forest
    assert forest.prior_kind == "forest"
    result = train(forest, progress=False)
    assert "prior: random forest of" in caplog.text
    model = model_from_checkpoint(load_checkpoint(result.best_path))
    assert model.forest is not None and model.forest.size["trees"] == FOREST_TREES


def test_resume_after_a_kill_matches_an_uninterrupted_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    deterministic: None,
    straight_run: Checkpoint,
) -> None:
    config = make_world(tmp_path, n_tiles=6, **RESUME_SETTINGS)
    real_save = loop_module.save_checkpoint

    def save_then_die(path: Path, checkpoint: Checkpoint) -> None:
        real_save(path, checkpoint)
        if Path(path).name == "latest.pt":
            raise Killed

    monkeypatch.setattr(loop_module, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(config, progress=False)
    monkeypatch.undo()
    saved = load_checkpoint(config.checkpoints_dir / "latest.pt").training
    assert saved is not None and saved.epoch == 1

    result = train(config, progress=False)
    assert result.epochs_run == 1
    _assert_same_run(straight_run, load_checkpoint(result.latest_path))
    assert train(config, progress=False).epochs_run == 0  # already complete


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    deterministic: None,
    straight_run: Checkpoint,
) -> None:
    config = make_world(tmp_path, n_tiles=6, **RESUME_SETTINGS)
    real_getitem = CubeDataset.__getitem__
    calls = {"n": 0}
    # Epoch 1 reads 12 train + 6 val items; the 22nd read is the first of epoch 2's 2nd batch.
    interrupt_at = 12 + 6 + 3 + 1

    def getitem(self: CubeDataset, key: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        return real_getitem(self, key)

    monkeypatch.setattr(CubeDataset, "__getitem__", getitem)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    monkeypatch.undo()
    state = load_checkpoint(config.checkpoints_dir / "latest.pt").training
    assert state is not None and state.epoch == 1
    assert state.partial is not None and (state.partial.epoch, state.partial.step) == (2, 1)

    result = train(config, progress=False)
    assert result.epochs_run == 1
    _assert_same_run(straight_run, load_checkpoint(result.latest_path))


def test_latest_from_another_configuration_is_refused(tmp_path: Path) -> None:
    config = make_world(tmp_path, epochs=1)
    train(config, progress=False, max_steps_per_epoch=1)
    raw = dict(config.raw)
    raw["model"] = {"dim": 12, "depth": 1}
    other = dataclasses.replace(config, raw=raw)
    with pytest.raises(CheckpointError, match="without resuming"):
        train(other, progress=False)
    split = load_split(config.tiles_dir)
    write_split(config.tiles_dir, split.train[1:], [*split.val, split.train[0]])
    with pytest.raises(CheckpointError, match="another split"):
        train(config, progress=False)
    assert train(config, progress=False, resume=False, max_steps_per_epoch=1).epochs_run == 1


def test_empty_validation_split_falls_back_to_train(tmp_path: Path) -> None:
    config = make_world(tmp_path, n_tiles=4, n_val=0, epochs=1, holdout_year=2020)
    result = train(config, progress=False, max_steps_per_epoch=1)
    assert result.best_path.is_file() and math.isfinite(result.best_val_mae)


def test_checkpoint_of_an_older_model_version_is_one_clear_error(tmp_path: Path) -> None:
    config = make_world(tmp_path, epochs=1)
    result = train(config, progress=False, max_steps_per_epoch=1)
    state = load_checkpoint(result.latest_path)
    weights = {k: v for k, v in state.weights.items() if k != "aux_prior.weight"}
    state = dataclasses.replace(state, weights=weights)
    save_checkpoint(result.latest_path, state)
    with pytest.raises(CheckpointError, match="aux_prior.weight.*without resuming") as info:
        train(config, epochs=2, progress=False)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="another version of the model") as info:
        model_from_checkpoint(state)
    assert "\n" not in str(info.value)
