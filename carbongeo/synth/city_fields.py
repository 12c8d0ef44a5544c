"""The fields a city spreads over the working grid in a year: people, emissions, light."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from carbongeo.synth.cities import City
from carbongeo.synth.fields import decay
from carbongeo.synth.grids import CELL_KM2, around
from carbongeo.synth.timeline import emission_trend


@dataclass(frozen=True)
class CityFields:
    """The cities' fields of one year on the working grid (float32).

    Attributes:
        population: Persons per working cell.
        emission: t CO2 per working cell per year.
        light: Night-light source radiance before blooming.
    """

    population: np.ndarray
    emission: np.ndarray
    light: np.ndarray


def city_fields(
    cities: Sequence[City], year: int, xs: np.ndarray, ys: np.ndarray, shape: tuple[int, int]
) -> CityFields:
    """Population, emission and light source of every city in `year` on the working grid.

    Population decays exponentially from the core; emissions are more concentrated (shorter
    decay) and partly sit in industrial parks where few people live but lights are on.

    Args:
        cities: The cities.
        year: The year.
        xs: Eastings of the working-cell columns.
        ys: Northings of the working-cell rows.
        shape: Shape of the working grid.
    """
    population = np.zeros(shape, dtype=np.float32)
    emission = np.zeros(shape, dtype=np.float32)
    light = np.zeros(shape, dtype=np.float32)
    trend = emission_trend(year)
    for city in cities:
        people = city.population_in(year)
        grow = (people / city.population) ** 0.35
        scale = city.scale_km * grow
        scale_e = 0.7 * scale
        total_emission = city.per_capita * people * trend
        win = around(xs, ys, city.x, city.y, city.reach_km * grow * 1000.0)
        if win is None:
            continue
        rows, cols, dx, dy = win
        cos_a, sin_a = math.cos(city.angle), math.sin(city.angle)
        along = dx * cos_a + dy * sin_a
        across = (-dx * sin_a + dy * cos_a) / city.axis_ratio
        radius = np.sqrt(along**2 + across**2)
        main_share = 1.0 - sum(share for _, _, share in city.subcenters)
        norm = 2.0 * math.pi * city.axis_ratio
        pop_kernel = main_share * decay(radius / scale) / (norm * scale**2)
        em_kernel = main_share * decay(radius / scale_e) / (norm * scale_e**2)
        for ox, oy, share in city.subcenters:
            sub_radius = np.hypot(dx - ox, dy - oy)
            sub_scale, sub_scale_e = 0.45 * scale, 0.45 * scale_e
            pop_kernel += share * decay(sub_radius / sub_scale) / (2 * math.pi * sub_scale**2)
            em_kernel += share * decay(sub_radius / sub_scale_e) / (2 * math.pi * sub_scale_e**2)
        park_total = sum(share for _, _, _, share in city.parks)
        em_kernel *= 1.0 - park_total
        park_light = np.zeros_like(radius)
        for ox, oy, sigma, share in city.parks:
            bump = decay(((dx - ox) ** 2 + (dy - oy) ** 2) / (2.0 * sigma**2))
            em_kernel += share * bump / (2.0 * math.pi * sigma**2)
            park_light += 8.0 * bump
        city_pop = people * pop_kernel * CELL_KM2
        population[rows, cols] += city_pop.astype(np.float32)
        emission[rows, cols] += (total_emission * em_kernel * CELL_KM2).astype(np.float32)
        density = city_pop / CELL_KM2
        light[rows, cols] += (city.light * (density / 1000.0) ** 0.75 + park_light).astype(
            np.float32
        )
    return CityFields(population=population, emission=emission, light=light)
