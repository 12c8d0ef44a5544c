"""Coarse supervision uses no fine truth: with or without a [target], the same model and maps.

The same tiny world is written twice, once with a ``[target]`` for every year and once without
one; both pipeline files say ``supervision = "coarse"`` and land on the same grid (the target's
grid is the coarse product's refined by ``scale``). Tiling, splitting, training and mosaicking
both must give the same checkpoint (every key but the wall-clock columns of the history) and
byte-identical ``Pred_<year>.npy``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _scenario import assert_error, invoke

from carbongeo.config import PipelineConfig, load_config
from carbongeo.stages.mosaic import mosaic_years
from carbongeo.stages.split import split_tiles
from carbongeo.stages.tile import tile_years
from carbongeo.store.tiles import load_index
from carbongeo.synth import generate_world

pytestmark = pytest.mark.usefixtures("single_thread")

YEARS = (2014, 2015, 2016)
_CLOCK = ("tiles_per_s", "data_tiles_per_s", "seconds")


def _coarse_world(folder: Path, target_years: tuple[int, ...]) -> PipelineConfig:
    path = generate_world(folder, seed=0, size="tiny", target_years=target_years)
    text = path.read_text().replace("[train]\n", '[train]\nsupervision = "coarse"\n')
    path.write_text(text)
    return load_config(path)


def _run(config: PipelineConfig) -> None:
    tile_years(config, config.years, progress=False, scheduler="synchronous")
    split_tiles(config)
    run = invoke("train", "-c", str(config.path), "--epochs", "2", "--device", "cpu")
    assert run.exit_code == 0, run.stderr
    assert run.stdout.startswith("supervision: coarse, because train.supervision is 'coarse'\n")
    assert "best coarse-level validation MAE" in run.stdout
    mosaic_years(config, [2015], progress=False)


def _without_clock(checkpoint: dict[str, Any]) -> bytes:
    """The checkpoint's bytes once the wall-clock columns of its history are blanked."""
    rows = checkpoint["history"]
    history = [{k: (0.0 if k in _CLOCK else v) for k, v in row.items()} for row in rows]
    buffer = io.BytesIO()
    torch.save({**checkpoint, "history": history}, buffer)
    return buffer.getvalue()


def test_coarse_supervision_is_the_same_with_and_without_a_target(tmp_path: Path) -> None:
    with_target = _coarse_world(tmp_path / "with", YEARS)
    without = _coarse_world(tmp_path / "without", ())
    assert with_target.target is not None and without.target is None
    for config in (with_target, without):
        _run(config)
    assert load_index(with_target.tiles_dir).target_years == list(YEARS)
    assert load_index(without.tiles_dir).target_years == []
    assert not any(without.tiles_dir.glob("Y_*.npy"))

    for name in ("best", "latest"):
        a = torch.load(with_target.checkpoints_dir / f"{name}.pt", weights_only=True)
        b = torch.load(without.checkpoints_dir / f"{name}.pt", weights_only=True)
        assert a["supervision"] == "coarse" and a["coarse_factors"] == [2, 4]
        assert "target" not in a["config"]
        assert _without_clock(a) == _without_clock(b), f"{name}.pt differs"
    pred_a = with_target.layout.prediction_npy(2015).read_bytes()
    assert pred_a == without.layout.prediction_npy(2015).read_bytes()
    # Not a degenerate map: the prediction is not the coarse product spread uniformly.
    pred = np.load(with_target.layout.prediction_npy(2015))
    cells = pred[:64, :64].reshape(8, 8, 8, 8)
    assert np.nanstd(cells, axis=(1, 3)).max() > 0


def test_neither_a_target_nor_a_coarse_product_is_one_line(tmp_path: Path) -> None:
    path = generate_world(tmp_path, seed=0, size="tiny", target_years=())
    text = path.read_text()
    start = text.index("[coarse]")
    path.write_text(text[:start] + text[text.index("[[aux]]", start) :])
    assert_error(invoke("tile", "-c", str(path)), "coarse: missing", "[target]")
    path.write_text(text.replace("[train]\n", '[train]\nsupervision = "fine"\n'))
    assert_error(invoke("train", "-c", str(path)), "train.supervision: 'fine' needs a target")
