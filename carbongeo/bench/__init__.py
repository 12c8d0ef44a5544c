"""``carbongeo bench``: throughput and peak memory of tile, train and mosaic on this machine,
each next to what a user would do instead.

Everything runs on synthetic scenes written to a scratch folder (a temporary one, removed at the
end, unless ``out`` is given: then the scenes are kept there and reused by the next run):

* **tile**: a target in UTM (copied onto the grid), an intensive band in EPSG:4326 (warped), an
  extensive one at half the resolution (split by area) and a categorical one in EPSG:3857
  (nearest class), as tiled DEFLATE GeoTIFFs, per scene side.
  :func:`carbongeo.stages.tile.tile_years` for one year is compared with one hand-written
  ``rasterio.warp.reproject`` per source onto the same grid with the same resampling per kind;
  a raw rasterio read of every source is the I/O floor. Throughput is in MB/s of uncompressed
  source data.
* **train**: tile cubes (9 aux bands, ``tile_size`` 128, ``scale`` 8, three years); tiles per
  second of the :class:`~carbongeo.training.data.CubeDataset` DataLoader (after a warm-up pass)
  per number of workers, next to that of the training step (forward, loss, backward, clip,
  AdamW) on a batch already in memory, for the demo-size and the full-size model.
* **mosaic**: tile cubes, index and an untrained checkpoint per scene side;
  :func:`carbongeo.stages.mosaic.mosaic_years` in megapixels per second, next to the bare
  network forward over the same windows and batches (no reading, blending or writing).

Every measurement runs in a fresh process that reports its peak RSS (:mod:`.harness`); the
parent imports nothing heavy. Modules: :mod:`.settings` (what to measure), :mod:`.harness`
(fresh processes, peak memory), :mod:`.workers` (one typed worker per measurement),
:mod:`.scenes` (the scene factory), :mod:`.suite` (:func:`run_bench`), :mod:`.report` (table and
JSON). The scripts in ``benchmarks/`` are thin wrappers that expose more knobs.
"""

from carbongeo.bench.report import format_json, format_table
from carbongeo.bench.settings import QUICK, STAGES, BenchSettings, bench_settings, parse_sizes
from carbongeo.bench.suite import run_bench

__all__ = [
    "QUICK",
    "STAGES",
    "BenchSettings",
    "bench_settings",
    "format_json",
    "format_table",
    "parse_sizes",
    "run_bench",
]
