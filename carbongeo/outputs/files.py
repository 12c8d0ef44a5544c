"""Where a run keeps the files that the outputs package reads and writes.

:func:`run_files` is the only place in :mod:`carbongeo.outputs` and ``carbongeo export`` that
knows a run's file names; every other function takes its paths from the :class:`RunFiles` it
returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from carbongeo.config import DEFAULT_CONFIG_NAME, PipelineConfig, load_config
from carbongeo.errors import InputDataError
from carbongeo.store.layout import CUBE_KINDS, RunLayout
from carbongeo.store.tiles import TileIndex, load_index


@dataclass(frozen=True)
class RunFiles:
    """The files of one run.

    Attributes:
        workdir: The run's folder.
        config: The pipeline, when the run was opened from one (``None`` for a bare workdir).
        index: The tile index (grid, years, bands, units).
        predictions_dir: Folder of the prediction COGs and of the STAC catalog.
        catalog: ``predictions/catalog.json``.
        exports_dir: Folder of the datacubes.
        tifs: ``Pred_<year>.tif`` of every year of the run (existing or not).
        npys: ``Pred_<year>.npy`` of every year of the run.
        items: ``Pred_<year>.json``, the STAC item of each year's COG.
        cubes: ``{kind: {year: path}}`` of the tile cubes ``X``, ``Y`` and ``C``.
    """

    workdir: Path
    config: PipelineConfig | None
    index: TileIndex
    predictions_dir: Path
    catalog: Path
    exports_dir: Path
    tifs: dict[int, Path]
    npys: dict[int, Path]
    items: dict[int, Path]
    cubes: dict[str, dict[int, Path]]

    @property
    def years(self) -> list[int]:
        """Every year of the run: the config's years, or the tiled years of a bare workdir."""
        return sorted(self.tifs)


def run_files(config_or_workdir: PipelineConfig | str | Path) -> RunFiles:
    """Name every file of a run.

    Args:
        config_or_workdir: A :class:`~carbongeo.config.PipelineConfig`, a pipeline file, a folder
            holding ``carbongeo.toml``, or a run's workdir (the folder with ``tiles/``).

    Raises:
        CarbongeoError: The path is none of these, or the run has not been tiled.
    """
    config: PipelineConfig | None
    if isinstance(config_or_workdir, PipelineConfig):
        config = config_or_workdir
    else:
        path = Path(config_or_workdir)
        if path.is_file():
            config = load_config(path)
        elif (path / DEFAULT_CONFIG_NAME).is_file():
            config = load_config(path / DEFAULT_CONFIG_NAME)
        elif (path / "tiles").is_dir():
            config = None
        else:
            raise InputDataError(
                f"{path} is neither a pipeline file nor a run's workdir (a folder with tiles/)"
            )
    layout = config.layout if config is not None else RunLayout(Path(config_or_workdir))
    index = load_index(layout.tiles_dir)
    years = list(config.years) if config is not None else sorted(index.years)
    tifs = {year: layout.prediction_tif(year) for year in years}
    npys = {year: layout.prediction_npy(year) for year in years}
    cubes = {kind: {y: layout.tiles.cube(kind, y) for y in years} for kind in CUBE_KINDS}
    return RunFiles(
        workdir=layout.workdir,
        config=config,
        index=index,
        predictions_dir=layout.predictions_dir,
        catalog=layout.stac_catalog,
        exports_dir=layout.exports_dir,
        tifs=tifs,
        npys=npys,
        items={year: layout.stac_item(year) for year in years},
        cubes=cubes,
    )
