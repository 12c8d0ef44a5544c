"""The embedded synthetic world: a reproducible stand-in for real emission and auxiliary data.

`generate_world` writes a complete, self-consistent data set for the pipeline: a "true" fine
CO2 emission raster per year (the training target), a coarse inventory-like product derived from
it with a few percent of error, nine auxiliary rasters in different CRSs and resolutions, and the
pipeline file that ties them together.

The world is built on a 250 m working grid in the target's UTM CRS that covers every output, and
each output is derived from it: the target by block sums, other grids by `rasterio.warp.reproject`.
The relations between the layers are realistic and deliberately imperfect: night light blooms and
saturates and does not see power plants, population and emissions follow different profiles,
per-capita emissions and lighting differ between cities, and every source carries its own noise.

The modules, in the order the world is made: `sizes` (the size table), `grids` (working and
output grids), `streams` (independent random streams), `timeline` (reference year and trends),
`terrain` (coast, elevation, rivers, lakes), `cities` (cities and point sources),
`city_fields` (their people, emissions and light), `roads` (network and traffic), `surface`
(rural people, built-up land, land cover), `world` (the static world), `emissions` (target and
coarse inventory), `auxiliary` (the aux rasters), `layers` (file names, units, nodata),
`rasters` (GeoTIFF writing), `pipeline_file` (the pipeline file) and `generate`.
"""

from carbongeo.synth.cities import City, PointSource, WorldLayout
from carbongeo.synth.generate import CONFIG_NAME, generate_world, world_layout
from carbongeo.synth.grids import TARGET_CRS
from carbongeo.synth.layers import TARGET_NODATA
from carbongeo.synth.pipeline_file import world_config_text
from carbongeo.synth.sizes import SIZES, SynthSize

__all__ = [
    "CONFIG_NAME",
    "City",
    "PointSource",
    "SIZES",
    "SynthSize",
    "TARGET_CRS",
    "TARGET_NODATA",
    "WorldLayout",
    "generate_world",
    "world_config_text",
    "world_layout",
]
