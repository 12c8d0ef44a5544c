"""Tests of carbongeo.store.split: ``split.json`` read and written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carbongeo.errors import CarbongeoError, InputDataError
from carbongeo.store.split import TileSplit, load_split, write_split


def test_split_round_trip(tmp_path: Path) -> None:
    split = TileSplit([1, 2], [3], [4], holdout_year=2016, excluded={"buffer": 2}, seed=5)
    path = write_split(tmp_path, split)
    assert path == tmp_path / "split.json"
    assert json.loads(path.read_text())["version"] == 1
    assert load_split(tmp_path) == split
    assert split.ids("val") == [3]
    with pytest.raises(CarbongeoError, match="subset: 'all' is not one of train, val, test"):
        split.ids("all")


def test_missing_or_damaged_split_names_the_split_command(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="split.json not found; run 'carbongeo split' first"):
        load_split(tmp_path)
    (tmp_path / "split.json").write_text('{"train": [1]}')
    with pytest.raises(InputDataError, match="not a valid split file.*'carbongeo split'"):
        load_split(tmp_path)
