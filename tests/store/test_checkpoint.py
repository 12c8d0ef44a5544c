"""Tests of carbongeo.store.checkpoint: safe loading, atomic saving, compatibility, RNG states."""

from __future__ import annotations

import datetime
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from carbongeo.errors import CheckpointError
from carbongeo.models.network import DSTCarbonFormer
from carbongeo.store.checkpoint import (
    FORMAT,
    VERSION,
    check_compatible,
    load_checkpoint,
    model_from_checkpoint,
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


def _state() -> dict[str, Any]:
    torch.manual_seed(0)
    model = DSTCarbonFormer(2, 4, dim=8, depth=1, value_scale=NORM.value_scale)
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_config": dict(model.config),
        # as saved from a compiled, DDP-wrapped model
        "model": {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()},
        "norm": NORM.to_dict(),
        "config": plain({"years": "2018-2020", "when": datetime.date(2020, 1, 1)}),
        "bands": ["b0", "b1"],
        "scale": 4,
        "tile_size": 32,
        "rng": rng_state(),
        "history": [{"epoch": 1, "val_mae": float("nan")}],
        "best_metric": float("inf"),
    }


def test_round_trip_rebuilds_model_and_norm(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "sub" / "best.pt"
    save_checkpoint(path, state)
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]  # no temporary left
    loaded = load_checkpoint(path)
    assert loaded["config"]["when"] == "2020-01-01"
    model, norm = model_from_checkpoint(loaded)
    assert norm == NORM
    assert not model.training
    expected = DSTCarbonFormer(**state["model_config"])
    expected.load_state_dict(strip_prefixes(state["model"]))
    for (name, a), (_, b) in zip(
        model.state_dict().items(), expected.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_pickled_object_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = _state()
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
        save_checkpoint(path, _state())
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
    state = _state()
    state["version"] = VERSION + 1
    save_checkpoint(tmp_path / "new.pt", state)
    with pytest.raises(CheckpointError, match="upgrade"):
        load_checkpoint(tmp_path / "new.pt")


def test_other_configuration_is_refused() -> None:
    state = _state()
    check_compatible(state, ["b0", "b1"], 4, 32)
    with pytest.raises(CheckpointError, match="2 bands .* this config has 3 bands"):
        check_compatible(state, ["b0", "b1", "b2"], 4, 32)
    with pytest.raises(CheckpointError, match="scale 4"):
        check_compatible(state, ["b0", "b1"], 8, 32)
    with pytest.raises(CheckpointError):
        check_compatible(state, ["b1", "b0"], 4, 32)


def test_weights_that_do_not_fit_are_refused() -> None:
    state = _state()
    state["model_config"]["dim"] = 12
    with pytest.raises(CheckpointError, match="retrain"):
        model_from_checkpoint(state)


def test_rng_state_round_trip(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "rng.pt", {"format": FORMAT, "version": VERSION, "rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    np.testing.assert_array_equal(expected[1], again[1])
    assert expected[2] == again[2]
