"""Tests of carbongeo.store.checkpoint: the typed schema, safe loading, atomic saving, RNG."""

from __future__ import annotations

import dataclasses
import datetime
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from carbongeo.config import PipelineConfig, parse_config
from carbongeo.errors import CheckpointError
from carbongeo.models.network import DSTCarbonFormer
from carbongeo.store.checkpoint import (
    FORMAT,
    VERSION,
    Checkpoint,
    EpochProgress,
    TrainedSplit,
    TrainingState,
    load_checkpoint,
    plain,
    rng_state,
    save_checkpoint,
    set_rng_state,
    strip_prefixes,
)
from carbongeo.training.normalization import Normalization

NORM = Normalization((0.5, 1.0), (2.0, 3.0), 10.0, 30.0, 80.0)


class Payload:
    """A custom class: pickling it into a checkpoint must make the file unloadable."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


def _config(tmp_path: Path) -> PipelineConfig:
    return parse_config(
        {
            "workdir": "run",
            "years": [2019, 2020],
            "grid": {"tile_size": 32, "scale": 4},
            "target": {"path": "co2_{year}.tif", "units": "t"},
            "aux": [{"name": name, "path": f"{name}_{{year}}.tif"} for name in ("b0", "b1")],
            "model": {"dim": 8, "depth": 1},
            "mosaic": {"overlap": 8},
        },
        tmp_path,
    )


def _model() -> DSTCarbonFormer:
    torch.manual_seed(0)
    return DSTCarbonFormer(2, 4, dim=8, depth=1, value_scale=NORM.value_scale)


def _training(model: DSTCarbonFormer, partial: EpochProgress | None = None) -> TrainingState:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return TrainingState(
        epoch=3,
        best_metric=math.inf,
        bad_epochs=1,
        stopped=False,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        scaler=None,
        split=TrainedSplit((1, 2, 5), (7,), 2020),
        rng=rng_state(),
        history=[{"epoch": 1, "val_mae": float("nan")}],
        partial=partial,
    )


def test_for_inference_round_trip_keeps_every_field(tmp_path: Path) -> None:
    config = _config(tmp_path)
    model = _model()
    checkpoint = Checkpoint.for_inference(model, NORM, config)
    assert checkpoint.bands == ("b0", "b1") and checkpoint.scale == 4
    assert checkpoint.tile_size == 32 and checkpoint.data_hash == config.data_hash()
    assert checkpoint.training is None
    path = tmp_path / "sub" / "best.pt"
    save_checkpoint(path, checkpoint)
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]  # no temporary left
    loaded = load_checkpoint(path)
    assert loaded.model_config == model.config and loaded.normalization == NORM
    assert (loaded.bands, loaded.scale, loaded.tile_size) == (("b0", "b1"), 4, 32)
    assert loaded.config == plain(config.raw) and loaded.data_hash == config.data_hash()
    assert loaded.training is None
    assert loaded.weights.keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.weights[name], value), name


def test_training_state_round_trip(tmp_path: Path) -> None:
    model = _model()
    partial = EpochProgress(4, step=2, loss_sums={"total": 1.5}, steps_done=2, samples=6)
    training = _training(model, partial)
    checkpoint = Checkpoint.for_inference(model, NORM, _config(tmp_path)).with_training(training)
    save_checkpoint(tmp_path / "latest.pt", checkpoint)
    loaded = load_checkpoint(tmp_path / "latest.pt").training
    assert loaded is not None
    assert (loaded.epoch, loaded.best_metric, loaded.bad_epochs, loaded.stopped) == (
        3,
        math.inf,
        1,
        False,
    )
    assert loaded.split == TrainedSplit((1, 2, 5), (7,), 2020)
    assert loaded.partial == partial
    assert loaded.scheduler == training.scheduler and loaded.scaler is None
    assert loaded.optimizer["param_groups"] == training.optimizer["param_groups"]
    assert loaded.history[0]["epoch"] == 1 and math.isnan(loaded.history[0]["val_mae"])


def test_plain_values_and_prefixes_on_disk(tmp_path: Path) -> None:
    model = _model()
    checkpoint = dataclasses.replace(
        Checkpoint.for_inference(model, NORM, _config(tmp_path)),
        # as taken from a compiled, DDP-wrapped model
        weights={f"module._orig_mod.{k}": v for k, v in model.state_dict().items()},
        config=plain({"years": "2018-2020", "when": datetime.date(2020, 1, 1)}),
    )
    save_checkpoint(tmp_path / "best.pt", checkpoint)
    raw = torch.load(tmp_path / "best.pt", weights_only=True)
    assert (raw["format"], raw["version"]) == (FORMAT, VERSION)
    assert raw["model"].keys() == strip_prefixes(model.state_dict()).keys()
    assert "optimizer" not in raw
    assert load_checkpoint(tmp_path / "best.pt").config["when"] == "2020-01-01"


def test_for_inference_refuses_bands_the_model_does_not_have(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="2 aux channels but 3 bands"):
        Checkpoint.for_inference(_model(), NORM, _config(tmp_path), bands=["a", "b", "c"])


def test_pickled_object_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = Checkpoint.for_inference(_model(), NORM, _config(tmp_path)).to_dict()
    state["extra"] = Payload()
    path = tmp_path / "evil.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="pickled Python objects") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    assert "must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["text", "truncated", "no_marker", "tensor", "missing"])
def test_non_checkpoints_are_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "file.pt"
    if kind == "text":
        path.write_text("not a checkpoint at all\n")
    elif kind == "truncated":
        save_checkpoint(path, Checkpoint.for_inference(_model(), NORM, _config(tmp_path)))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "no_marker":
        torch.save({"model": {}}, path)
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_newer_version_is_refused(tmp_path: Path) -> None:
    state = Checkpoint.for_inference(_model(), NORM, _config(tmp_path)).to_dict()
    state["version"] = VERSION + 1
    torch.save(state, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="upgrade"):
        load_checkpoint(tmp_path / "new.pt")


@pytest.mark.parametrize(
    ("training", "change", "message"),
    [
        (False, lambda s: s.pop("norm"), "incomplete carbongeo checkpoint \\(no 'norm'\\)"),
        (False, lambda s: s.pop("data_hash"), "no 'data_hash'"),
        (False, lambda s: s.update(scale="4"), "'scale' is str, expected int"),
        (False, lambda s: s.update(model={"w": [1.0]}), "not tensors"),
        (False, lambda s: s.update(norm={"aux_mean": [1.0]}), "malformed .*normalisation"),
        (False, lambda s: s.update(optimizer={}), "no 'epoch'"),
        (True, lambda s: s.update(epoch=True), "'epoch' is bool, expected int"),
        (True, lambda s: s.update(split={"train": [1]}), "no 'val'"),
    ],
    ids=["no-norm", "no-hash", "str-scale", "list-weights", "bad-norm", "half-training", "bool",
         "split"],
)  # fmt: skip
def test_an_older_or_foreign_layout_is_one_clear_error(
    tmp_path: Path, training: bool, change: Any, message: str
) -> None:
    model = _model()
    checkpoint = Checkpoint.for_inference(model, NORM, _config(tmp_path))
    if training:
        checkpoint = checkpoint.with_training(_training(model))
    state = checkpoint.to_dict()
    change(state)
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert "\n" not in text and str(path) in text and "carbongeo train" in text


def test_other_configuration_is_refused(tmp_path: Path) -> None:
    checkpoint = Checkpoint.for_inference(_model(), NORM, _config(tmp_path))
    checkpoint.check_compatible(["b0", "b1"], 4, 32)
    with pytest.raises(CheckpointError, match="aux: .*2 bands .* this config has 3"):
        checkpoint.check_compatible(["b0", "b1", "b2"], 4, 32)
    with pytest.raises(CheckpointError, match="grid.scale: 8 in this config .* trained with 4"):
        checkpoint.check_compatible(["b0", "b1"], 8, 32)
    with pytest.raises(CheckpointError, match="grid.tile_size: 64"):
        checkpoint.check_compatible(["b0", "b1"], 4, 64)
    with pytest.raises(CheckpointError, match="same order"):
        checkpoint.check_compatible(["b1", "b0"], 4, 32)
    recorded = {t["name"]: t for t in checkpoint.config["aux"]}
    same = [
        {"name": n, "kind": t.get("kind", "intensive"), "transform": t.get("transform", "none")}
        for n, t in recorded.items()
    ]
    checkpoint.check_compatible(["b0", "b1"], 4, 32, aux=same)
    other = [
        dict(same[0], transform="log1p" if same[0]["transform"] == "none" else "none"),
        same[1],
    ]
    with pytest.raises(CheckpointError, match="aux band 'b0': transform"):
        checkpoint.check_compatible(["b0", "b1"], 4, 32, aux=other)


def test_weights_that_do_not_fit_are_one_line(tmp_path: Path) -> None:
    checkpoint = Checkpoint.for_inference(_model(), NORM, _config(tmp_path))
    other = DSTCarbonFormer(2, 4, dim=12, depth=1)
    with pytest.raises(CheckpointError, match="another version of the model.*; do this") as err:
        checkpoint.load_weights(other, "do this")
    assert "\n" not in str(err.value)


def test_rng_state_round_trip(tmp_path: Path) -> None:
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    np.testing.assert_array_equal(expected[1], again[1])
    assert expected[2] == again[2]
