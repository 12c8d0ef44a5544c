"""Tests of carbongeo.training.setup: model and loss from config, data, resuming, assembly."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import pytest
import torch
from _cubes import make_config, make_world

from carbongeo.config import PipelineConfig, parse_config
from carbongeo.errors import CarbongeoError, CheckpointError
from carbongeo.store.checkpoint import Checkpoint, TrainedSplit, load_checkpoint, save_checkpoint
from carbongeo.store.split import load_split
from carbongeo.store.tiles import load_index
from carbongeo.training.distributed import DistContext
from carbongeo.training.normalization import Normalization
from carbongeo.training.setup import (
    MIN_LR_FACTOR,
    TEMPORAL,
    build_datasets,
    build_loss,
    build_model,
    build_parts,
    check_tiles,
    load_resumable,
    lr_factor,
    model_from_checkpoint,
    model_kwargs,
    seed_everything,
    select_amp,
    training_years,
)

NORM = Normalization((1.0, 3.0), (1.0, 2.0), 12.0, 40.0, 90.0)


def _with(config: PipelineConfig, **tables: object) -> PipelineConfig:
    """``config`` (made by ``_cubes``) with some top-level tables of its pipeline replaced."""
    return parse_config({**config.raw, **tables}, config.workdir.parent)


def test_select_amp_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_amp("cpu") == (False, torch.float32, False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert select_amp("cpu") == (False, torch.float32, False)
    assert select_amp("cuda") == (True, torch.bfloat16, False)
    assert select_amp(torch.device("cuda", 0), enabled=False) == (False, torch.float32, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert select_amp("cuda") == (True, torch.float16, True)


def test_model_and_loss_follow_the_config(tmp_path: Path) -> None:
    config = _with(
        make_config(tmp_path),
        model={"dim": 12, "depth": 2, "fft_constraint": True, "mass_constraint": False},
        loss={"pixel": 0.5, "high_weight": 2.0},
    )
    kwargs = model_kwargs(config, 2, 4, NORM)
    assert (kwargs["aux_channels"], kwargs["scale"]) == (2, 4)
    assert (kwargs["dim"], kwargs["depth"], kwargs["temporal"]) == (12, 2, TEMPORAL)
    assert kwargs["fft_constraint"] and not kwargs["mass_constraint"]
    assert kwargs["value_scale"] == NORM.value_scale
    assert build_model(kwargs).config == kwargs
    loss = build_loss(config, 4, NORM)
    assert loss.weights["pixel"] == 0.5 and loss.high_weight == 2.0
    assert (loss.scale, loss.high_threshold) == (4, NORM.high_threshold)


def test_a_checkpoint_rebuilds_the_model_training_built(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    torch.manual_seed(0)
    trained = build_model(model_kwargs(config, 2, 4, NORM))
    save_checkpoint(tmp_path / "best.pt", Checkpoint.for_inference(trained, NORM, config))
    model = model_from_checkpoint(load_checkpoint(tmp_path / "best.pt"))
    assert not model.training and model.config == trained.config
    for (name, a), (_, b) in zip(
        model.state_dict().items(), trained.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_checkpoint_of_another_model_version_is_one_line(tmp_path: Path) -> None:
    checkpoint = Checkpoint.for_inference(
        build_model(model_kwargs(make_config(tmp_path), 2, 4, NORM)), NORM, make_config(tmp_path)
    )
    unknown = dataclasses.replace(checkpoint, model_config={**checkpoint.model_config, "x": 1})
    with pytest.raises(CheckpointError, match="does not fit this version.*carbongeo train"):
        model_from_checkpoint(unknown)
    wider = dataclasses.replace(checkpoint, model_config={**checkpoint.model_config, "dim": 12})
    with pytest.raises(CheckpointError, match="another version of the model") as info:
        model_from_checkpoint(wider)
    assert "\n" not in str(info.value)


def test_tiles_of_another_config_are_refused(tmp_path: Path) -> None:
    config = make_world(tmp_path)
    index = load_index(config.tiles_dir)
    check_tiles(index, config)
    renamed = [{**aux, "name": f"other{i}"} for i, aux in enumerate(config.raw["aux"])]
    with pytest.raises(CarbongeoError, match="aux bands .*rerun: carbongeo tile"):
        check_tiles(index, _with(config, aux=renamed))
    with pytest.raises(CarbongeoError, match="scale 4 .* config has 8"):
        check_tiles(index, _with(config, grid={"tile_size": 32, "scale": 8}))


def test_training_years_leave_out_the_holdout(tmp_path: Path) -> None:
    config = make_world(tmp_path, holdout_year=2020)
    split = load_split(config.tiles_dir)
    assert training_years(config, split) == [2018, 2019]
    with pytest.raises(CarbongeoError, match="no train tiles"):
        training_years(config, dataclasses.replace(split, train=[]))
    one_year = _with(config, years=[2020])
    with pytest.raises(CarbongeoError, match="no training year"):
        training_years(one_year, split)


def test_an_empty_validation_split_validates_on_the_train_tiles(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_world(tmp_path, n_tiles=4, n_val=0)
    split = load_split(config.tiles_dir)
    with caplog.at_level(logging.WARNING, logger="carbongeo.training.setup"):
        train_set, val_set = build_datasets(config, split, list(config.years), NORM)
    assert "no validation tiles" in caplog.text
    assert len(train_set) == len(val_set) == 4 * len(config.years)


def test_lr_warms_up_then_decays_to_the_floor() -> None:
    factor = lr_factor(steps_per_epoch=4, warmup_epochs=1, epochs=3)
    values = [factor(step) for step in range(12)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(values[4:], values[5:], strict=False))
    assert factor(12) == pytest.approx(MIN_LR_FACTOR) and factor(100) == pytest.approx(
        MIN_LR_FACTOR
    )
    assert lr_factor(4, 0, 3)(0) == 1.0  # no warm-up


def test_resumable_checkpoint_must_match_the_run(tmp_path: Path) -> None:
    config = make_world(tmp_path)
    index = load_index(config.tiles_dir)
    split = TrainedSplit.of(load_split(config.tiles_dir))
    path = tmp_path / "latest.pt"
    cpu = torch.device("cpu")
    assert load_resumable(path, config, index, split, cpu) is None
    model = build_model(model_kwargs(config, 2, 4, NORM))
    save_checkpoint(path, Checkpoint.for_inference(model, NORM, config))
    with pytest.raises(CheckpointError, match="no training state.*--no-resume"):
        load_resumable(path, config, index, split, cpu)


def test_parts_are_reproducible_from_the_seed(tmp_path: Path) -> None:
    config = make_world(tmp_path, batch_size=4)
    index = load_index(config.tiles_dir)
    split = load_split(config.tiles_dir)
    datasets = build_datasets(config, split, list(config.years), NORM)
    built = []
    for cap in (None, 2):
        seed_everything(config.train.seed)
        built.append(
            build_parts(
                config,
                index,
                NORM,
                datasets,
                ctx=DistContext(),
                device=torch.device("cpu"),
                total_epochs=3,
                max_steps_per_epoch=cap,
            )
        )
    full, capped = built
    assert full.steps_per_epoch == math.ceil(6 * 3 / 4) and capped.steps_per_epoch == 2
    assert full.train_model is full.model and full.amp_dtype is None and full.scaler is None
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, capped.model.state_dict()[name]), name
    assert config.train.warmup_epochs == 0 and full.scheduler.get_last_lr() == [config.train.lr]
