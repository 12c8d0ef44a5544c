"""Stale inputs: each stage checks that what it reads was made from the current pipeline file.

Every output records the hash of the sections it was made from: ``tiles/index.json`` the tile
sections (``[grid]``, ``[target]``, ``[coarse]``, ``[aux]``), ``tiles/split.json`` those and
``[split]``, a checkpoint those and ``[model]`` (its ``data_hash``), and each ``Pred_<year>.tif``
the same as the checkpoint (its ``config_hash`` tag). After an edit of the pipeline file (say,
two aux paths swapped) a later stage compares and names the command to rerun, instead of
silently using the old cubes and tagging its outputs with the new hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from carbongeo.errors import StaleInputError

if TYPE_CHECKING:
    from carbongeo.config import PipelineConfig
    from carbongeo.store.checkpoint import Checkpoint
    from carbongeo.store.split import TileSplit
    from carbongeo.store.tiles import TileIndex

_TILES = "[grid], [target], [coarse] or [aux]"


def check_tiles(config: PipelineConfig, index: TileIndex) -> None:
    """Refuse tiles cut from other tile sections than the pipeline file now has.

    An index written before the tiles hash existed holds the data hash, which is accepted too.

    Raises:
        StaleInputError: Naming ``carbongeo tile``.
    """
    if index.config_hash in ("", config.tiles_hash(), config.data_hash()):
        return
    raise StaleInputError(
        f"{config.tiles_dir}: the tiles were cut with other {_TILES} settings than "
        f"{config.path.name} has now; rerun: carbongeo tile (then split, train and mosaic)"
    )


def check_split(config: PipelineConfig, split: TileSplit) -> None:
    """Refuse a split made from other tiles or other ``[split]`` settings.

    Raises:
        StaleInputError: Naming ``carbongeo split``.
    """
    if split.inputs_hash in ("", config.split_hash()):
        return
    raise StaleInputError(
        f"{config.tiles_dir / 'split.json'} was made from other tiles or [split] settings than "
        f"{config.path.name} has now; rerun: carbongeo split (then train)"
    )


def check_checkpoint(
    config: PipelineConfig, state: Checkpoint | dict[str, Any], path: Path
) -> None:
    """Refuse the workdir's own checkpoint when it was trained on other data or model settings.

    Only for the checkpoint a stage picks by default: one passed explicitly may come from
    another region (its bands and scale are checked elsewhere).

    Raises:
        StaleInputError: Naming ``carbongeo train``.
    """
    made_with = state.get("data_hash") if isinstance(state, dict) else state.data_hash
    if made_with in (None, "", config.data_hash()):
        return
    raise StaleInputError(
        f"{path} was trained with other {_TILES} or [model] settings than {config.path.name} "
        "has now; rerun: carbongeo train (or pass a checkpoint explicitly)"
    )


def check_prediction(config: PipelineConfig, tif_path: Path, year: int) -> None:
    """Refuse a prediction made with other settings than the pipeline file now has.

    Reads the ``config_hash`` tag of ``Pred_<year>.tif``; a missing file or tag is not checked.

    Raises:
        StaleInputError: Naming ``carbongeo mosaic``.
    """
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(tif_path) as src:
            made_with = src.tags().get("config_hash")
    except (RasterioError, OSError):
        return
    if made_with in (None, "", config.data_hash()):
        return
    raise StaleInputError(
        f"{tif_path} was predicted with other {_TILES} or [model] settings than "
        f"{config.path.name} has now; rerun: carbongeo mosaic --years {year} --overwrite"
    )
