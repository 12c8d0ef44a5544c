"""Cities and point sources: what they are and where they are placed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from carbongeo.synth.grids import TARGET_RES, TARGET_X0, TARGET_Y0, WORK_RES, WorldGrids
from carbongeo.synth.sizes import SynthSize
from carbongeo.synth.timeline import REFERENCE_YEAR


@dataclass(frozen=True)
class City:
    """One city of the synthetic world.

    Attributes:
        x: Centre easting in the target CRS (m).
        y: Centre northing in the target CRS (m).
        population: Population in the reference year (2014).
        growth: Annual population growth rate (negative for shrinking cities).
        scale_km: Population decay length of the core in the reference year (km).
        axis_ratio: Minor/major axis ratio of the elliptical core.
        angle: Orientation of the major axis (radians).
        per_capita: Urban emissions per person (t CO2 per year).
        light: Night-light brightness factor (richer cities shine more).
        subcenters: (dx km, dy km, population share) of secondary centres.
        parks: (dx km, dy km, sigma km, emission share) of industrial parks.
    """

    x: float
    y: float
    population: float
    growth: float
    scale_km: float
    axis_ratio: float
    angle: float
    per_capita: float
    light: float
    subcenters: tuple[tuple[float, float, float], ...]
    parks: tuple[tuple[float, float, float, float], ...]

    def population_in(self, year: int) -> float:
        """Return the city's population in `year`."""
        return self.population * (1.0 + self.growth) ** (year - REFERENCE_YEAR)

    @property
    def reach_km(self) -> float:
        """Distance from the centre beyond which the city adds nothing noticeable (km)."""
        extra = [math.hypot(dx, dy) for dx, dy, _ in self.subcenters]
        extra += [math.hypot(dx, dy) + 4.0 * sigma for dx, dy, sigma, _ in self.parks]
        return 10.0 * self.scale_km + max(extra, default=0.0)


@dataclass(frozen=True)
class PointSource:
    """A strong point source (power plant or heavy industry) that emits no night light.

    Attributes:
        x: Easting in the target CRS (m), the centre of a 250 m working cell.
        y: Northing in the target CRS (m).
        base_emission: Emission at full capacity (t CO2 per year).
        first_year: First operating year.
        last_year: Last operating year.
        phase: Phase of the year-to-year capacity-factor cycle (radians).
    """

    x: float
    y: float
    base_emission: float
    first_year: int
    last_year: int
    phase: float

    def emission(self, year: int) -> float:
        """Return the emission in `year` (t CO2), zero when not operating."""
        if not self.first_year <= year <= self.last_year:
            return 0.0
        t = year - REFERENCE_YEAR
        return self.base_emission * (0.88 + 0.12 * math.sin(self.phase + 1.3 * t))


@dataclass(frozen=True)
class WorldLayout:
    """The discrete features of a synthetic world, largest first.

    Attributes:
        cities: Cities, by decreasing reference-year population.
        point_sources: Point sources, by decreasing base emission.
    """

    cities: tuple[City, ...]
    point_sources: tuple[PointSource, ...]


def place_cities(
    rng: np.random.Generator,
    spec: SynthSize,
    grids: WorldGrids,
    water_distance_km: np.ndarray,
    elevation_km: np.ndarray,
) -> list[City]:
    """Zipf-sized cities on low dry land, largest first, kept apart from each other."""
    ranks = np.arange(1, spec.n_cities + 1)
    populations = np.sort(spec.largest_city * ranks**-1.05 * rng.lognormal(0.0, 0.15, ranks.size))
    left, bottom, right, top = grids.target.bounds
    work_left, work_bottom, work_right, work_top = grids.work.bounds
    # Cities may lie a little outside the target: their light and people spill into it.
    margin = 8000.0
    x_lo, x_hi = max(left - margin, work_left + 1000.0), min(right + margin, work_right - 1000.0)
    y_lo, y_hi = max(bottom - margin, work_bottom + 1000.0), min(top + margin, work_top - 1000.0)
    km_left = grids.work.transform.c
    km_top = grids.work.transform.f
    cities: list[City] = []
    for population in populations[::-1]:
        scale_km = 2.4 * (population / 1e6) ** 0.35
        for _ in range(400):
            x = rng.uniform(x_lo, x_hi)
            y = rng.uniform(y_lo, y_hi)
            r = int((km_top - y) // TARGET_RES)
            c = int((x - km_left) // TARGET_RES)
            if water_distance_km[r, c] < 1.5:
                continue
            if rng.random() > math.exp(-float(elevation_km[r, c]) / 300.0):
                continue
            if any(
                math.hypot(x - o.x, y - o.y) < 1000.0 * (2.5 * (scale_km + o.scale_km) + 4.0)
                for o in cities
            ):
                continue
            cities.append(_new_city(rng, float(x), float(y), float(population), scale_km))
            break
    return cities


def _new_city(
    rng: np.random.Generator, x: float, y: float, population: float, scale_km: float
) -> City:
    n_sub = int(rng.integers(0, 4 if population > 3e5 else 2))
    subcenters = []
    for _ in range(n_sub):
        distance = rng.uniform(1.5, 3.5) * scale_km
        bearing = rng.uniform(0.0, 2.0 * math.pi)
        share = rng.uniform(0.05, 0.15)
        subcenters.append((distance * math.cos(bearing), distance * math.sin(bearing), share))
    parks = []
    if population > 2e5:
        for _ in range(int(rng.integers(1, 4))):
            distance = rng.uniform(2.5, 4.5) * scale_km
            bearing = rng.uniform(0.0, 2.0 * math.pi)
            sigma = rng.uniform(0.4, 1.0)
            share = rng.uniform(0.05, 0.15)
            parks.append((distance * math.cos(bearing), distance * math.sin(bearing), sigma, share))
    return City(
        x=x,
        y=y,
        population=population,
        growth=float(np.clip(rng.normal(0.02, 0.025), -0.03, 0.07)),
        scale_km=scale_km,
        axis_ratio=rng.uniform(0.55, 1.0),
        angle=rng.uniform(0.0, math.pi),
        per_capita=float(rng.lognormal(math.log(1.0), 0.35)),
        light=float(rng.lognormal(math.log(7.0), 0.3)),
        subcenters=tuple(subcenters),
        parks=tuple(parks),
    )


def place_point_sources(
    rng: np.random.Generator,
    spec: SynthSize,
    grids: WorldGrids,
    cities: list[City],
    water_distance_km: np.ndarray,
) -> list[PointSource]:
    """Plants away from cities, often near water (cooling), inside the target's valid area."""
    emissions = np.sort(np.exp(rng.uniform(math.log(2.5e4), math.log(1.5e5), spec.n_point_sources)))
    left, bottom, right, top = grids.target.bounds
    margin = 5000.0
    km_left = grids.work.transform.c
    km_top = grids.work.transform.f
    cell_x0 = math.ceil((left + margin - km_left) / WORK_RES)
    cell_x1 = math.floor((right - margin - km_left) / WORK_RES)
    cell_y0 = math.ceil((km_top - (top - margin)) / WORK_RES)
    cell_y1 = math.floor((km_top - (bottom + margin)) / WORK_RES)
    points: list[PointSource] = []
    for index, base in enumerate(emissions[::-1]):
        for _ in range(2000):
            # A working-cell centre, so the source sits in exactly one cell.
            x = km_left + (rng.integers(cell_x0, cell_x1) + 0.5) * WORK_RES
            y = km_top - (rng.integers(cell_y0, cell_y1) + 0.5) * WORK_RES
            target_row = int((TARGET_Y0 - y) // TARGET_RES)
            target_col = int((x - TARGET_X0) // TARGET_RES)
            # Keep one coarse cell clear of the target's missing corner.
            if target_row // spec.scale + target_col // spec.scale <= spec.nodata_blocks:
                continue
            distance_water = float(
                water_distance_km[int((km_top - y) // TARGET_RES), int((x - km_left) // TARGET_RES)]
            )
            if distance_water < 1.0:
                continue
            if rng.random() > (0.9 if distance_water < 8.0 else 0.3):
                continue
            if any(
                math.hypot(x - c.x, y - c.y) < 1000.0 * (c.reach_km * 0.7 + 6.0) for c in cities
            ):
                continue
            if any(math.hypot(x - p.x, y - p.y) < 10_000.0 for p in points):
                continue
            first_year, last_year = 1990, 2100
            if index > 0:
                draw = rng.random()
                if draw < 0.25:
                    first_year = int(rng.integers(2015, 2022))
                elif draw < 0.5:
                    last_year = int(rng.integers(2015, 2023))
            points.append(
                PointSource(
                    x=x,
                    y=y,
                    base_emission=float(base),
                    first_year=first_year,
                    last_year=last_year,
                    phase=float(rng.uniform(0.0, 2.0 * math.pi)),
                )
            )
            break
    return points
