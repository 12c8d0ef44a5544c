"""The world's time line: the reference year, the year of the static layers and the trends."""

from __future__ import annotations

# Populations and sizes of the cities are given for this year.
REFERENCE_YEAR = 2014
# Static layers (built-up share, land cover, road density) describe this year.
STATIC_YEAR = 2018


def emission_trend(year: int) -> float:
    """National emission trend: growth that levels off, with a dip in 2020."""
    t = year - REFERENCE_YEAR
    factor = max(0.4, 1.0 + 0.03 * t - 0.0022 * t * t)
    return factor * (0.94 if year == 2020 else 1.0)


def rural_decline(year: int) -> float:
    """Rural population of `year` relative to the reference year (1 % fewer people a year)."""
    return 0.99 ** (year - REFERENCE_YEAR)
