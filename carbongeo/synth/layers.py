"""The layers of a synthetic world: file name, units, nodata, description, kind of each raster.

One entry per file kind, used both to write the rasters and to describe them in the pipeline
file. ``{year}`` in a path or description stands for the year of a yearly layer.
"""

from __future__ import annotations

from dataclasses import dataclass

TARGET_NODATA = -9999.0
FLOAT_NODATA = -9999.0
NDVI_NODATA = -3.0
ELEVATION_NODATA = -32768
CLASS_NODATA = 255
EMISSION_UNITS = "t CO2 / cell / yr"

LANDCOVER_URBAN = 1
LANDCOVER_CROPLAND = 2
LANDCOVER_FOREST = 3
LANDCOVER_WATER = 4
LANDCOVER_BARE = 5


@dataclass(frozen=True)
class Layer:
    """One raster of the world.

    Attributes:
        name: Band name in the pipeline file (aux layers) or the layer's role.
        path: Path relative to the world folder; yearly layers contain ``{year}``.
        units: Units tag of the band.
        description: Band description; yearly layers contain ``{year}``.
        nodata: The file's nodata value.
        kind: ``extensive``, ``intensive`` or ``categorical`` (the pipeline's source kind).
        transform: The aux band's value transform in the pipeline file.
        zero_classes: Classes of a categorical band on which the world has no emissions.
    """

    name: str
    path: str
    units: str
    description: str
    nodata: float
    kind: str = "intensive"
    transform: str = "none"
    zero_classes: tuple[int, ...] = ()

    def path_for(self, year: int | None = None) -> str:
        """The relative path of the layer's file for `year` (None for a static layer)."""
        return self.path if year is None else self.path.format(year=year)

    def description_for(self, year: int | None = None) -> str:
        """The band description for `year` (None for a static layer)."""
        return self.description if year is None else self.description.format(year=year)


TARGET = Layer(
    "target",
    "emissions/co2_{year}.tif",
    EMISSION_UNITS,
    "CO2 emissions {year}",
    TARGET_NODATA,
    kind="extensive",
)
COARSE = Layer(
    "coarse",
    "coarse/edgar_like_{year}.tif",
    EMISSION_UNITS,
    "coarse CO2 emission inventory {year}",
    FLOAT_NODATA,
    kind="extensive",
)
NTL = Layer(
    "ntl",
    "aux/ntl_{year}.tif",
    "nW/cm2/sr",
    "night-time light radiance {year}",
    FLOAT_NODATA,
    transform="log1p",
)
ROADS = Layer("roads", "aux/roads.tif", "km/km2", "road density", FLOAT_NODATA, transform="log1p")
WATER = Layer(
    "water",
    "aux/water.tif",
    "class",
    "water mask (1 water, 0 land)",
    CLASS_NODATA,
    kind="categorical",
    zero_classes=(1,),
)
NDVI = Layer("ndvi", "aux/ndvi_{year}.tif", "1", "annual NDVI {year}", NDVI_NODATA)
POPULATION = Layer(
    "population",
    "aux/population_{year}.tif",
    "persons/cell",
    "population count {year}",
    FLOAT_NODATA,
    kind="extensive",
    transform="log1p",
)
BUILTUP = Layer("builtup", "aux/builtup.tif", "fraction", "built-up share", FLOAT_NODATA)
ELEVATION = Layer(
    "elevation", "aux/elevation.tif", "m", "elevation above sea level", ELEVATION_NODATA
)
LANDCOVER = Layer(
    "landcover",
    "aux/landcover.tif",
    "class",
    f"land cover ({LANDCOVER_URBAN} urban, {LANDCOVER_CROPLAND} cropland, "
    f"{LANDCOVER_FOREST} forest, {LANDCOVER_WATER} water, {LANDCOVER_BARE} bare)",
    CLASS_NODATA,
    kind="categorical",
)
DIST_ROADS = Layer(
    "dist_roads",
    "aux/dist_roads.tif",
    "km",
    "distance to the nearest road",
    FLOAT_NODATA,
    transform="log1p",
)

# In the channel order of the pipeline file.
AUX_LAYERS: tuple[Layer, ...] = (
    NTL,
    ROADS,
    WATER,
    NDVI,
    POPULATION,
    BUILTUP,
    ELEVATION,
    LANDCOVER,
    DIST_ROADS,
)
