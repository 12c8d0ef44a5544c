"""Diverged and damaged models through the command line: one line, never a uniform map.

The mass constraint shares each coarse cell by the model's weights and falls back to a uniform
split where they are unusable, NaN included; before these checks a diverged run (``train.lr =
1e6``) or a checkpoint with flipped bytes exited 0 and mosaicked flat cells. Decisions recorded:

* Training stops at the first step after which a weight is not finite, before anything of that
  epoch is saved, and when every batch of an epoch has a non-finite loss.
* A checkpoint holding NaN or inf is refused when loaded (mosaic, resume) and never written.
* The mosaic refuses NaN or inf from the network's raw log-ratio (before the constraint) and from
  any predictor's output on a valid pixel.
"""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _scenario import (
    assert_error,
    assert_ok,
    cli,
    config_of,
    copy_world,
    edit_config,
    files,
    invoke,
    temporaries,
)

from carbongeo.errors import DivergenceError
from carbongeo.grid import Grid, Window
from carbongeo.models.losses import HybridLoss
from carbongeo.stages.mosaic import WindowBatch, predict_scene
from carbongeo.store.checkpoint import Checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world tiled, split and trained for one epoch (read-only for tests)."""
    site = copy_world(world, tmp_path_factory.mktemp("divergence-trained"))
    for args in (["tile"], ["split"], ["train", "--epochs", "1"]):
        assert_ok(invoke(*args, "-c", config_of(site)))
    return site


def _no_checkpoint(site: Path) -> None:
    assert not list(site.rglob("*.pt")), list(site.rglob("*.pt"))
    assert temporaries(site) == []


def _no_prediction(site: Path) -> None:
    assert not list(site.rglob("Pred_*")), list(site.rglob("Pred_*"))
    assert temporaries(site) == []


# --------------------------------------------------------------------------- training
def test_train_at_lr_1e6_stops_with_one_line(trained: Path, world: Path, tmp_path: Path) -> None:
    site = copy_world(world, tmp_path / "site", "tiles", source=trained)
    edit_config(site, "lr = 2e-3", "lr = 1e6")
    proc = cli("train", "-c", config_of(site), "--epochs", "2")
    line = assert_error(proc, "train.lr", "diverged in epoch 1", "stopped being finite", "1e+06")
    assert "nothing of this epoch was saved" in line
    _no_checkpoint(site)


def test_every_loss_non_finite_stops_training(
    trained: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = copy_world(world, tmp_path / "site", "tiles", source=trained)
    real = HybridLoss.forward

    def nan_loss(self: HybridLoss, *args: Any, **kwargs: Any) -> Any:
        loss, terms = real(self, *args, **kwargs)
        return loss * float("nan"), terms

    monkeypatch.setattr(HybridLoss, "forward", nan_loss)
    result = invoke("train", "-c", config_of(site), "--epochs", "1")
    assert_error(result, "batches of epoch 1 had a non-finite loss", "nothing was learnt")
    _no_checkpoint(site)


# --------------------------------------------------------------------------- damaged checkpoints
def _with_model(src: Path, dest: Path, change: Any) -> Path:
    state = torch.load(src, weights_only=True)
    model = {k: v.clone() for k, v in state["model"].items()}
    change(model)
    state["model"] = model
    torch.save(state, dest)
    return dest


def _flip_to_nan(src: Path, dest: Path) -> Path:
    """Overwrite 4 bytes inside the stored weight tensors with a NaN: the zip has no checksum
    that torch verifies, so the file still loads."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        record = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    offset = record.header_offset
    name_length, extra_length = struct.unpack("<HH", data[offset + 26 : offset + 30])
    start = offset + 30 + name_length + extra_length
    data[start + 8 : start + 12] = struct.pack("<f", float("nan"))
    dest.write_bytes(bytes(data))
    return dest


def _nan_weight(model: dict[str, torch.Tensor]) -> None:
    model["stage0.0.conv1.weight"].view(-1)[3] = float("nan")


def _huge_head(model: dict[str, torch.Tensor]) -> None:
    """Finite but absurd weights: the log-ratio overflows to inf and NaN."""
    model["head.2.weight"].fill_(3e38)


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        ("nan-weight", ("hold NaN or inf", "stage0.0.conv1.weight", "carbongeo train")),
        ("flipped-bytes", ("hold NaN or inf", "damaged")),
        ("huge-weights", ("raw prediction (head output) is NaN or inf", "uniform split")),
    ],
)
def test_mosaic_refuses_a_damaged_checkpoint(
    damage: str, fragments: tuple[str, ...], trained: Path, world: Path, tmp_path: Path
) -> None:
    site = copy_world(world, tmp_path / "site", "tiles", source=trained)
    best = trained / "runs" / "checkpoints" / "best.pt"
    bad = tmp_path / "bad.pt"
    if damage == "flipped-bytes":
        _flip_to_nan(best, bad)
    else:
        _with_model(best, bad, _nan_weight if damage == "nan-weight" else _huge_head)
    result = invoke("mosaic", "-c", config_of(site), "--checkpoint", str(bad))
    assert_error(result, *fragments)
    _no_prediction(site)


def test_resume_refuses_a_non_finite_latest(trained: Path, world: Path, tmp_path: Path) -> None:
    site = copy_world(world, tmp_path / "site", "tiles", "checkpoints", source=trained)
    latest = site / "runs" / "checkpoints" / "latest.pt"
    _with_model(trained / "runs" / "checkpoints" / "latest.pt", latest, _nan_weight)
    before = files(site)
    result = invoke("train", "-c", config_of(site), "--epochs", "2")
    assert_error(result, str(latest), "hold NaN or inf")
    assert files(site) == before


def test_a_non_finite_checkpoint_is_never_written(trained: Path, tmp_path: Path) -> None:
    state = torch.load(trained / "runs" / "checkpoints" / "best.pt", weights_only=True)
    _nan_weight(state["model"])
    target = tmp_path / "checkpoints" / "best.pt"
    with pytest.raises(DivergenceError, match="not finite"):
        save_checkpoint(target, Checkpoint.from_dict(state, "best.pt"))
    assert not target.exists() and temporaries(tmp_path) == []
    shutil.rmtree(tmp_path / "checkpoints", ignore_errors=True)


# --------------------------------------------------------------------------- any predictor
def test_predict_scene_refuses_non_finite_predictions_on_valid_pixels() -> None:
    grid = Grid.from_bounds("EPSG:32650", 1.0, (0, 0, 32, 32), tile_size=16, scale=8)

    def read(windows: list[Window]) -> WindowBatch:
        n = len(windows)
        return WindowBatch(
            aux=np.zeros((n, 1, 3, 16, 16), np.float32),
            coarse=np.ones((n, 1, 3, 2, 2), np.float32),
            valid=np.ones((n, 16, 16), bool),
            mass=np.ones((n, 2, 2), np.float32),
        )

    def predict(aux: np.ndarray, coarse: np.ndarray, allowed: object = None) -> np.ndarray:
        out = np.ones((aux.shape[0], 16, 16), np.float32)
        out[:, 5, 5] = np.nan
        return out

    rows: list[np.ndarray] = []
    with pytest.raises(DivergenceError, match="predicted NaN or inf on"):
        predict_scene(predict, read, grid, rows.append, overlap=0)
    assert rows == []
