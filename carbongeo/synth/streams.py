"""Independent random streams of the synthetic world.

Every part of the world draws from its own generator, seeded by ``(seed, stream, *extra)``, so that
adding draws to one part leaves the others unchanged. Yearly layers use a sub-stream per year and
layer: ``rng(seed, YEAR, year, YEAR_NDVI)``.
"""

from __future__ import annotations

import numpy as np

TERRAIN = 1
WATER = 2
CITIES = 3
POINTS = 4
ROADS = 5
RURAL = 6
SURFACE = 7
YEAR = 100

# Sub-streams of SURFACE.
SURFACE_DEM_VOIDS = 1

# Sub-streams of (YEAR, year).
YEAR_TARGET = 1
YEAR_NIGHT_LIGHT = 2
YEAR_NDVI = 3
YEAR_INVENTORY = 4


def rng(seed: int, stream: int, *extra: int) -> np.random.Generator:
    """The generator of one stream of the world made from ``seed``.

    Args:
        seed: The world's seed.
        stream: One of the stream constants of this module.
        *extra: Sub-stream keys (a year, a layer).

    Returns:
        A fresh generator; the same arguments always give the same draws.
    """
    return np.random.default_rng([seed, stream, *extra])
