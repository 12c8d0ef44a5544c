"""``tiles/split.json``: the train/val/test tile ids of a run, read and written.

:class:`TileSplit` is the file's schema (the split stage computes one; training, evaluation and
the figures read it), so it lives here next to the tile index rather than in the stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carbongeo.errors import InputDataError, ParameterError
from carbongeo.io.atomic import write_json_atomic
from carbongeo.store.layout import TilesLayout, missing_input

__all__ = ["SPLIT_VERSION", "TileSplit", "load_split", "write_split"]

SPLIT_VERSION = 1
SUBSETS = ("train", "val", "test")


@dataclass(frozen=True)
class TileSplit:
    """Tile ids per subset, plus why the others were left out."""

    train: list[int]
    val: list[int]
    test: list[int]
    holdout_year: int | None = None
    excluded: dict[str, int] = field(default_factory=dict)
    block_tiles: int = 1
    buffer_tiles: int = 1
    seed: int = 0
    inputs_hash: str = ""

    def ids(self, subset: str) -> list[int]:
        """The tile ids of ``train``, ``val`` or ``test``."""
        if subset not in SUBSETS:
            raise ParameterError(f"{subset!r} is not one of train, val, test", param="subset")
        return list(getattr(self, subset))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the content of ``tiles/split.json``)."""
        return {
            "version": SPLIT_VERSION,
            "train": self.train,
            "val": self.val,
            "test": self.test,
            "holdout_year": self.holdout_year,
            "excluded": self.excluded,
            "block_tiles": self.block_tiles,
            "buffer_tiles": self.buffer_tiles,
            "seed": self.seed,
            "inputs_hash": self.inputs_hash,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TileSplit:
        """Inverse of :meth:`to_dict`."""
        return cls(
            train=[int(i) for i in data["train"]],
            val=[int(i) for i in data["val"]],
            test=[int(i) for i in data["test"]],
            holdout_year=data.get("holdout_year"),
            excluded={str(k): int(v) for k, v in data.get("excluded", {}).items()},
            block_tiles=int(data.get("block_tiles", 1)),
            buffer_tiles=int(data.get("buffer_tiles", 1)),
            seed=int(data.get("seed", 0)),
            inputs_hash=str(data.get("inputs_hash", "")),
        )


def load_split(tiles_dir: str | Path) -> TileSplit:
    """Read ``<tiles_dir>/split.json``.

    Raises:
        InputDataError: The file is missing (naming ``carbongeo split``) or damaged.
    """
    path = TilesLayout(Path(tiles_dir)).split
    if not path.is_file():
        raise missing_input(path, "carbongeo split")
    try:
        return TileSplit.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as err:
        raise InputDataError(
            f"{path} is not a valid split file ({err}); rerun 'carbongeo split'"
        ) from err


def write_split(tiles_dir: str | Path, split: TileSplit) -> Path:
    """Write ``<tiles_dir>/split.json`` atomically; returns its path.

    Raises:
        OutputError: The file cannot be written.
    """
    path = TilesLayout(Path(tiles_dir)).split
    write_json_atomic(path, split.to_dict())
    return path
