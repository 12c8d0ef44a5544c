"""The names of every file and folder a run makes under its ``workdir``.

::

    <workdir>/
        tiles/          X_<year>.npy (aux), Y_<year>.npy (target), C_<year>.npy (coarse product),
                        index.json, split.json (and the lock .index.lock)
        checkpoints/    latest.pt, best.pt, train_log.csv
        predictions/    Pred_<year>.tif (COG) and Pred_<year>.npy, written as a pair
        reports/        evaluation.md, evaluation.json, preview_<year>.png, scene_<year>.png
        exports/        datacubes of all years

:class:`RunLayout` names the paths of a run; :class:`TilesLayout` those inside a tiles folder
(readers such as the training dataset are given a tiles folder, not a workdir). Both are small
frozen dataclasses that only build paths (no I/O), so they pickle into dask tasks.
:func:`missing_input` is the one error for a run file that is not there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from carbongeo.errors import CarbongeoError, MissingRunFileError

__all__ = ["CUBE_KINDS", "CubeKind", "RunLayout", "TilesLayout", "missing_input"]

CubeKind = Literal["X", "Y", "C"]
"""A year cube: ``X`` the aux bands, ``Y`` the target, ``C`` the coarse product."""

CUBE_KINDS: tuple[CubeKind, ...] = ("X", "Y", "C")


def missing_input(
    path: Path, command: str, error: type[CarbongeoError] = MissingRunFileError
) -> CarbongeoError:
    """The error for a run file that is not there: its path and the command that makes it.

    Args:
        path: The missing file.
        command: The command line that writes it, e.g. ``carbongeo tile --year 2015``.
        error: The error class (a checkpoint is a :class:`~carbongeo.errors.CheckpointError`).

    Returns:
        The error, to be raised by the caller.
    """
    return error(f"{path} not found; run '{command}' first")


@dataclass(frozen=True)
class TilesLayout:
    """The files of a tiles folder: the year cubes, ``index.json`` and ``split.json``.

    Attributes:
        root: The tiles folder.
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def cube(self, kind: CubeKind, year: int) -> Path:
        """``X_<year>.npy`` (aux), ``Y_<year>.npy`` (target) or ``C_<year>.npy`` (coarse)."""
        if kind not in CUBE_KINDS:
            raise ValueError(f"cube kind must be X, Y or C, got {kind!r}")
        return self.root / f"{kind}_{year}.npy"

    @property
    def index(self) -> Path:
        """``index.json``: the grid, years, bands and tiles of the cubes."""
        return self.root / "index.json"

    @property
    def index_lock(self) -> Path:
        """``.index.lock``: serialises updates of ``index.json`` between processes."""
        return self.root / ".index.lock"

    @property
    def split(self) -> Path:
        """``split.json``: the train/val/test tile ids."""
        return self.root / "split.json"


@dataclass(frozen=True)
class RunLayout:
    """Every path a run makes under its ``workdir``.

    Attributes:
        workdir: The run's folder (``workdir`` of the pipeline file).
    """

    workdir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "workdir", Path(self.workdir))

    # ----------------------------------------------------------------------- folders
    @property
    def tiles_dir(self) -> Path:
        """``<workdir>/tiles``."""
        return self.workdir / "tiles"

    @property
    def checkpoints_dir(self) -> Path:
        """``<workdir>/checkpoints``."""
        return self.workdir / "checkpoints"

    @property
    def predictions_dir(self) -> Path:
        """``<workdir>/predictions``."""
        return self.workdir / "predictions"

    @property
    def reports_dir(self) -> Path:
        """``<workdir>/reports``."""
        return self.workdir / "reports"

    @property
    def exports_dir(self) -> Path:
        """``<workdir>/exports``: datacubes of all years."""
        return self.workdir / "exports"

    @property
    def tiles(self) -> TilesLayout:
        """The files inside ``tiles/`` (cubes, index, split)."""
        return TilesLayout(self.tiles_dir)

    # ----------------------------------------------------------------------- checkpoints
    @property
    def latest_checkpoint(self) -> Path:
        """``checkpoints/latest.pt``: the state after the last epoch, for resuming."""
        return self.checkpoints_dir / "latest.pt"

    @property
    def best_checkpoint(self) -> Path:
        """``checkpoints/best.pt``: the weights with the best validation score."""
        return self.checkpoints_dir / "best.pt"

    @property
    def train_log(self) -> Path:
        """``checkpoints/train_log.csv``: one row per epoch."""
        return self.checkpoints_dir / "train_log.csv"

    # ----------------------------------------------------------------------- predictions
    def prediction_tif(self, year: int) -> Path:
        """``predictions/Pred_<year>.tif``: the year's prediction as a COG."""
        return self.predictions_dir / f"Pred_{year}.tif"

    def prediction_npy(self, year: int) -> Path:
        """``predictions/Pred_<year>.npy``: the same band as a float32 ``[height, width]`` array."""
        return self.predictions_dir / f"Pred_{year}.npy"

    # ----------------------------------------------------------------------- reports
    @property
    def stac_catalog(self) -> Path:
        """``predictions/catalog.json``: the STAC catalog of the prediction COGs."""
        return self.predictions_dir / "catalog.json"

    def stac_item(self, year: int) -> Path:
        """``predictions/Pred_<year>.json``: the STAC item of one year's COG."""
        return self.prediction_tif(year).with_suffix(".json")

    @property
    def evaluation_md(self) -> Path:
        """``reports/evaluation.md``."""
        return self.reports_dir / "evaluation.md"

    @property
    def evaluation_json(self) -> Path:
        """``reports/evaluation.json``."""
        return self.reports_dir / "evaluation.json"

    def preview_png(self, year: int, folder: Path | None = None) -> Path:
        """``reports/preview_<year>.png`` (or the same name in ``folder``)."""
        return (self.reports_dir if folder is None else Path(folder)) / f"preview_{year}.png"

    def scene_png(self, year: int, folder: Path | None = None) -> Path:
        """``reports/scene_<year>.png`` (or the same name in ``folder``)."""
        return (self.reports_dir if folder is None else Path(folder)) / f"scene_{year}.png"
