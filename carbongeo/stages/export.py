"""``carbongeo export``: every year's predictions in one CF-1.8 netCDF or Zarr datacube.

The datacube (:mod:`carbongeo.outputs.datacube`) is read lazily from the prediction COGs
(:func:`carbongeo.outputs.arrays.open_predictions`), converted to the chosen units
(``per_cell``, ``per_km2`` or ``flux``; :mod:`carbongeo.outputs.units`), and streamed chunk by
chunk into ``<workdir>/exports/emissions_<years>_<units>.nc`` (or ``.zarr``), written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from carbongeo.config import PipelineConfig
from carbongeo.errors import ParameterError
from carbongeo.io.atomic import remove_stale_temps
from carbongeo.io.sources import limit_gdal_cache
from carbongeo.outputs.arrays import CHUNK, open_predictions
from carbongeo.outputs.datacube import (
    FORMATS,
    SUFFIXES,
    Format,
    build_datacube,
    target_units,
    write_datacube,
)
from carbongeo.outputs.files import run_files
from carbongeo.outputs.units import UNIT_CHOICES


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
        path: The netCDF file or Zarr folder.
        format: ``netcdf`` or ``zarr``.
        years: The years in the datacube.
        units: The emission variable's units (``t CO2 / cell / yr``, ``kg CO2 m-2 s-1``, ...).
        seconds: Wall time of the export.
    """

    path: Path
    format: str
    years: list[int]
    units: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {**asdict(self), "path": str(self.path)}


def export(
    config: PipelineConfig,
    years: Sequence[int] | None = None,
    *,
    fmt: Format = "netcdf",
    units: str = "per_cell",
    out: Path | None = None,
    chunk: int = CHUNK,
    progress: bool = False,
) -> ExportResult:
    """Write the predictions of ``years`` as one CF-1.8 datacube.

    Args:
        config: The pipeline.
        years: Years to export; default every year of the run that has a prediction COG.
        fmt: ``netcdf`` (netCDF-4, zlib-compressed chunks) or ``zarr``.
        units: ``per_cell`` (the target's units: totals per pixel and year), ``per_km2``
            (t CO2 km-2 per year) or ``flux`` (kg CO2 m-2 s-1, the mean over the calendar year).
        out: Destination; default ``<workdir>/exports/emissions_<years>_<units>.nc`` or ``.zarr``.
        chunk: Side in pixels of the chunks computed and stored at a time.
        progress: Show a progress bar on stderr.

    Raises:
        CarbongeoError: No prediction exists (run ``carbongeo mosaic``), ``fmt`` or ``units`` is
            unknown, the units cannot be converted, or the output cannot be written.
    """
    from carbongeo import __version__

    if fmt not in FORMATS:
        raise ParameterError(f"{fmt!r} is not one of {', '.join(FORMATS)}", param="format")
    if units not in UNIT_CHOICES:
        raise ParameterError(f"{units!r} is not one of {', '.join(UNIT_CHOICES)}", param="units")
    if chunk < 1:
        raise ParameterError(f"must be >= 1, got {chunk}", param="chunk")
    start = time.perf_counter()
    files = run_files(config)
    predictions = open_predictions(config, years, chunks=chunk)
    chosen = [int(y) for y in predictions["year"].values]
    dst = target_units(units, predictions)
    span = str(chosen[0]) if len(chosen) == 1 else f"{chosen[0]}-{chosen[-1]}"
    name = f"emissions_{span}_{units}{SUFFIXES[fmt]}"
    path = Path(out) if out is not None else files.exports_dir / name
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    attrs = {
        "history": f"{now} carbongeo {__version__} export --format {fmt} --units {units}",
        "units_choice": units,
    }
    ds = build_datacube(predictions, files.index.grid, dst, chunk=chunk, attrs=attrs)
    remove_stale_temps(path.parent)
    # GDAL's block cache would otherwise grow to 5 % of RAM over the COG blocks, read once each.
    limit_gdal_cache()
    bar: Any = nullcontext()
    if progress:
        from dask.diagnostics import ProgressBar

        bar = ProgressBar(out=sys.stderr)
    with bar:
        write_datacube(ds, path, fmt, chunk=chunk)
    return ExportResult(path, fmt, chosen, dst.label, time.perf_counter() - start)
