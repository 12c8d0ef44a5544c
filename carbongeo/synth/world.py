"""The static world: every field and feature that does not change from year to year.

`build_world` assembles the terrain, the cities and point sources, the roads and the land surface
on the working grid; `year_fields` gives the people of one year.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carbongeo.synth import streams
from carbongeo.synth.cities import WorldLayout, place_cities, place_point_sources
from carbongeo.synth.city_fields import CityFields, city_fields
from carbongeo.synth.grids import CELL_KM2, WorldGrids, cells, make_grids
from carbongeo.synth.roads import RoadNetwork, build_roads
from carbongeo.synth.sizes import SynthSize
from carbongeo.synth.surface import (
    land_background,
    landcover,
    rural,
    site_builtup,
    static_builtup,
    vegetation,
)
from carbongeo.synth.terrain import build_terrain
from carbongeo.synth.timeline import STATIC_YEAR, rural_decline


@dataclass(frozen=True)
class World:
    """The static synthetic world on its working grid.

    Attributes:
        seed: The seed it was made from.
        spec: Its size.
        grids: The working grid and every output grid.
        layout: Its cities and point sources.
        xs: Working-cell centre eastings (m).
        ys: Working-cell centre northings (m).
        water: Water mask (bool).
        elevation: Elevation (m).
        rural_density: Persons per km2 in the reference year outside the cities.
        land_background: t CO2 per working cell per year, not tied to people.
        allocation_noise: Static multiplicative error of the emission allocation.
        roads: The road network.
        road_length: Km of road per working cell.
        site_builtup: Built-up share of industrial parks and plant sites.
        builtup: Static built-up share.
        landcover: Land-cover classes (uint8).
        vegetation: NDVI of the vegetated surface.
        point_cells: Flat working-cell index of each point source.
    """

    seed: int
    spec: SynthSize
    grids: WorldGrids
    layout: WorldLayout
    xs: np.ndarray
    ys: np.ndarray
    water: np.ndarray
    elevation: np.ndarray
    rural_density: np.ndarray
    land_background: np.ndarray
    allocation_noise: np.ndarray
    roads: RoadNetwork
    road_length: np.ndarray
    site_builtup: np.ndarray
    builtup: np.ndarray
    landcover: np.ndarray
    vegetation: np.ndarray
    point_cells: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the working grid."""
        return self.water.shape


def build_world(seed: int, spec: SynthSize) -> World:
    """The static world made from `seed` at size `spec` (arguments already checked)."""
    grids = make_grids(spec)
    work = grids.work
    shape = (work.height, work.width)
    xs, ys = grids.cell_centres()
    terrain = build_terrain(seed, spec, grids, xs, ys)

    cities = place_cities(
        streams.rng(seed, streams.CITIES),
        spec,
        grids,
        terrain.water_distance_km,
        terrain.elevation_km,
    )
    points = place_point_sources(
        streams.rng(seed, streams.POINTS), spec, grids, cities, terrain.water_distance_km
    )
    layout = WorldLayout(cities=tuple(cities), point_sources=tuple(points))
    roads = build_roads(streams.rng(seed, streams.ROADS), grids, cities, points)
    road_length = roads.length_km(shape)
    people = rural(seed, terrain)

    point_cells = np.array(
        [cells(work, np.array([p.x]), np.array([p.y]))[0][0] for p in points], dtype=np.int64
    )
    sites = site_builtup(layout, point_cells, xs, ys, shape)
    static_people = city_fields(cities, STATIC_YEAR, xs, ys, shape).population
    density = (static_people / CELL_KM2) + people.density * rural_decline(STATIC_YEAR)
    builtup = static_builtup(seed, density, sites, road_length, terrain.water)
    classes = landcover(terrain, builtup)

    return World(
        seed=seed,
        spec=spec,
        grids=grids,
        layout=layout,
        xs=xs,
        ys=ys,
        water=terrain.water,
        elevation=terrain.elevation,
        rural_density=people.density,
        land_background=land_background(classes),
        allocation_noise=people.allocation_noise,
        roads=roads,
        road_length=road_length,
        site_builtup=sites,
        builtup=builtup,
        landcover=classes,
        vegetation=vegetation(classes, terrain.texture),
        point_cells=point_cells,
    )


def year_fields(world: World, year: int) -> tuple[CityFields, np.ndarray]:
    """City fields and rural population (persons per working cell) of `year`."""
    cities = city_fields(world.layout.cities, year, world.xs, world.ys, world.shape)
    rural_people = world.rural_density * np.float32(CELL_KM2 * rural_decline(year))
    return cities, rural_people
