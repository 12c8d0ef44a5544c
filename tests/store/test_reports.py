"""Tests of carbongeo.store.reports: the evaluation files and the figures."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from carbongeo.errors import OutputError
from carbongeo.store.layout import RunLayout
from carbongeo.store.reports import read_evaluation, write_evaluation, write_figure


def test_evaluation_files_round_trip(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "run")
    assert read_evaluation(layout) is None
    data = {"sections": [{"best_baseline": "uniform"}], "units": "t"}
    write_evaluation(layout, "# report\n", data)
    assert layout.evaluation_md.read_text() == "# report\n"
    assert json.loads(layout.evaluation_json.read_text()) == data
    assert read_evaluation(layout) == data
    layout.evaluation_json.write_text("[1, 2]")
    assert read_evaluation(layout) is None  # not a report
    layout.evaluation_json.write_text("{broken")
    assert read_evaluation(layout) is None


def test_write_figure_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = RunLayout(tmp_path)
    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1], [1, 0])
    path = write_figure(fig, layout.scene_png(2020), dpi=50)
    assert path.read_bytes().startswith(b"\x89PNG")

    def savefig(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> None:
        Path(fname).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fname))

    monkeypatch.setattr(Figure, "savefig", savefig)
    with pytest.raises(OutputError, match="preview_2020.png.*No space left"):
        write_figure(fig, layout.preview_png(2020), dpi=50)
    assert sorted(p.name for p in layout.reports_dir.iterdir()) == ["scene_2020.png"]
