"""The report files of a run: ``reports/evaluation.md`` / ``.json`` and the figures.

Only the I/O lives here; what a report says is built by the evaluation and the preview stage.
Every file is written atomically, and an ``OSError`` becomes an
:class:`~carbongeo.errors.OutputError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carbongeo.io.atomic import atomic_path, output_error, write_json_atomic, write_text_atomic
from carbongeo.store.layout import RunLayout

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["read_evaluation", "write_evaluation", "write_figure"]


def write_evaluation(layout: RunLayout, markdown: str, data: dict[str, Any]) -> None:
    """Write ``reports/evaluation.md`` and ``reports/evaluation.json``.

    Args:
        layout: The run.
        markdown: The Markdown report.
        data: The JSON report (already JSON-safe: no NaN).

    Raises:
        OutputError: A file cannot be written.
    """
    folder = layout.evaluation_md.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(folder, err) from err
    write_text_atomic(layout.evaluation_md, markdown)
    write_json_atomic(layout.evaluation_json, data)


def read_evaluation(layout: RunLayout) -> dict[str, Any] | None:
    """The content of ``reports/evaluation.json``, or None when it is missing or not a report."""
    path = layout.evaluation_json
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def write_figure(figure: Figure, path: Path, *, dpi: int) -> Path:
    """Save a figure as a PNG at ``path`` atomically; returns ``path``.

    Raises:
        OutputError: The folder cannot be made or the file cannot be written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=dpi)
    except OSError as err:  # a file in the way of the folder, no permission, disk full
        raise output_error(path, err) from err
    return path
