"""Emission units: read the user's units string and convert between per cell, per km2 and flux.

An emission unit says four things: a mass (``t``, ``kg``, ``Gg``, ...), a species (CO2, or C for
carbon), what the mass is spread over (the pixel itself, i.e. a total per cell, or an area such as
km2 or m2) and a time (the map's calendar year, or a rate per second, hour or day).
:func:`parse_units` reads them from strings such as ``"t CO2 / cell / yr"``, ``"tCO2 per cell
per year"``, ``"kg CO2 m-2 s-1"`` or ``"g C m-2 day-1"``. What a string leaves out comes from the
default, t CO2 per cell per year (a prediction is one year of totals per pixel): ``"t"`` reads as
``t CO2 / cell / yr``. Anything else (an unknown word, no mass, two times) is refused with one
line.

The three output choices (:data:`UNIT_CHOICES`):

* ``per_cell``: the total per pixel and calendar year, in the target's own mass unit and species
  (so a target in ``t CO2 / cell / yr`` is left exactly as it is);
* ``per_km2``: ``t CO2 / km2 / yr``, the year's total divided by the pixel's true area;
* ``flux``: ``kg CO2 m-2 s-1``, the mean over the calendar year (365 or 366 days).

Converting between two units multiplies by a factor (which depends on the year's length when
exactly one side is a rate) and by the pixel's true area to the power -1, 0 or 1 (see
:mod:`carbongeo.outputs.geodesy`). C converts to CO2 by the ratio of molar masses.

Pure computation, except :class:`RowConverter`, which asks :mod:`~carbongeo.outputs.geodesy` for
the areas of the rows it converts.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

import numpy as np

from carbongeo.errors import UnitsError
from carbongeo.grid import Grid, Window

UNIT_CHOICES: tuple[str, ...] = ("per_cell", "per_km2", "flux")
DEFAULT_UNITS = "t CO2 / cell / yr"
CO2_PER_C = 44.0095 / 12.0107
"""kg of CO2 per kg of carbon: the molar mass of CO2 over that of C (IUPAC atomic weights)."""

# kg per unit of mass. "t" is the metric tonne; "ton" is refused (short, long or metric?).
_MASS: dict[str, float] = {
    "g": 1e-3,
    "kg": 1.0,
    "Mg": 1e3,
    "t": 1e3,
    "tonne": 1e3,
    "tonnes": 1e3,
    "kt": 1e6,
    "Gg": 1e6,
    "Mt": 1e9,
    "Tg": 1e9,
    "Gt": 1e12,
    "Pg": 1e12,
}
# The udunits spelling of each mass by its size in kg ("kt" means knot to udunits).
_CF_MASS: dict[float, str] = {1e-3: "g", 1.0: "kg", 1e3: "t", 1e6: "Gg", 1e9: "Tg", 1e12: "Pg"}
_SPECIES: dict[str, str] = {"co2": "CO2", "c": "C", "carbon": "C"}
_PER_CELL_WORDS = {"cell", "cells", "pixel", "pixels", "px", "gridcell"}
# m2 per unit of area, with the udunits spelling of the unit.
_AREA: dict[str, tuple[float, str]] = {"m": (1.0, "m"), "km": (1e6, "km"), "ha": (1e4, "hm")}
_AREA_WORDS = {"m2": "m", "km2": "km", "ha": "ha", "hectare": "ha", "hectares": "ha"}
_YEAR_WORDS = {"yr", "year", "years", "a", "annum"}
# seconds per unit of time, with the udunits spelling of the unit.
_TIME: dict[str, tuple[float, str]] = {"s": (1.0, "s"), "h": (3600.0, "h"), "day": (86400.0, "day")}
_TIME_WORDS = {
    "s": "s",
    "sec": "s",
    "second": "s",
    "seconds": "s",
    "h": "h",
    "hr": "h",
    "hour": "h",
    "hours": "h",
    "d": "day",
    "day": "day",
    "days": "day",
}
_SUPERSCRIPTS = str.maketrans({"⁻": "-", "¹": "1", "²": "2", "₂": "2"})
_EXPONENT = re.compile(r"^(?P<base>[A-Za-z]+)(?P<exp>-?\d)$")
_FLUX_STANDARD_NAME = "tendency_of_atmosphere_mass_content_of_carbon_dioxide_due_to_emission"


def year_seconds(year: int) -> float:
    """Seconds in calendar year ``year`` (365 or 366 days)."""
    return float((dt.date(year + 1, 1, 1) - dt.date(year, 1, 1)).days * 86400)


@dataclass(frozen=True)
class EmissionUnits:
    """A parsed emission unit.

    Attributes:
        mass: Mass unit, a key of the mass table (``t``, ``kg``, ``Gg``, ...).
        species: ``CO2`` or ``C``.
        area: ``None`` for a total per cell (pixel); else ``m``, ``km`` or ``ha`` (per m2, per
            km2, per hectare).
        time: ``None`` for the calendar year of the map; else ``s``, ``h`` or ``day`` (a rate).
        text: The string it was read from, or its canonical spelling.
    """

    mass: str
    species: str
    area: str | None
    time: str | None
    text: str = field(default="", compare=False)

    @property
    def mass_kg(self) -> float:
        """kg in one unit of the mass."""
        return _MASS[self.mass]

    @property
    def species_kg_co2(self) -> float:
        """kg of CO2 in one kg of the species."""
        return CO2_PER_C if self.species == "C" else 1.0

    @property
    def area_m2(self) -> float | None:
        """m2 in one unit of the area, ``None`` per cell."""
        return None if self.area is None else _AREA[self.area][0]

    @property
    def time_s(self) -> float | None:
        """Seconds in one unit of the time, ``None`` per calendar year."""
        return None if self.time is None else _TIME[self.time][0]

    @property
    def label(self) -> str:
        """Human-readable units: as given by the user, else canonical (``t CO2 / km2 / yr``)."""
        return self.text or format_units(self)

    @property
    def cf_units(self) -> str:
        """The udunits string of a CF ``units`` attribute (the species is in ``long_name``)."""
        parts = [_CF_MASS[self.mass_kg]]
        if self.area is not None:
            parts.append(f"{_AREA[self.area][1]}-2")
        if self.time is not None:
            parts.append(f"{_TIME[self.time][1]}-1")
        return " ".join(parts)

    @property
    def cell_methods(self) -> str:
        """CF ``cell_methods``: sums over the cell and year for totals, means for densities."""
        area = "sum" if self.area is None else "mean"
        time = "sum" if self.time is None else "mean"
        return f"area: {area} time: {time}"

    @property
    def long_name(self) -> str:
        """A CF ``long_name``."""
        what = "CO2 emissions" if self.species == "CO2" else "carbon emissions (mass of C)"
        where = "per grid cell" if self.area is None else "per unit area"
        when = "per calendar year" if self.time is None else "mean rate over the calendar year"
        return f"{what} {where}, {when}"

    @property
    def standard_name(self) -> str | None:
        """The CF standard name of a CO2 mass flux (kg m-2 s-1 compatible), else ``None``."""
        if self.species == "CO2" and self.area is not None and self.time is not None:
            return _FLUX_STANDARD_NAME
        return None


def format_units(units: EmissionUnits) -> str:
    """Canonical spelling: ``t CO2 / cell / yr``, ``t CO2 / km2 / yr``, ``kg CO2 m-2 s-1``."""
    head = f"{units.mass} {units.species}"
    if units.time is not None and units.area is not None:
        return f"{head} {units.area}-2 {units.time}-1"
    area = "cell" if units.area is None else f"{units.area}2"
    return f"{head} / {area} / {units.time or 'yr'}"


def parse_units(text: str, key: str = "units") -> EmissionUnits:
    """Read an emission unit; empty means ``t CO2 / cell / yr``.

    Args:
        text: The units string, e.g. ``"t CO2 / cell / yr"`` or ``"kg CO2 m-2 s-1"``.
        key: The parameter or config key the string came from, for the error message.

    Raises:
        UnitsError: The string is not an emission unit this module can convert.
    """
    if not text.strip():
        return parse_units(DEFAULT_UNITS, key)

    def refuse(why: str) -> UnitsError:
        return UnitsError(
            f"{key}: cannot convert {text!r} ({why}); write e.g. 't CO2 / cell / yr', "
            "'t CO2 / km2 / yr' or 'kg CO2 m-2 s-1'"
        )

    clean = text.translate(_SUPERSCRIPTS).replace("^", "")
    clean = re.sub(r"[()*·]", " ", clean)
    clean = re.sub(r"\bgrid[\s-]*cells?\b", "cell", clean, flags=re.IGNORECASE)
    clean = re.sub(r"\bper\b", "/", clean, flags=re.IGNORECASE)
    numerator, *denominators = clean.split("/")
    found: dict[str, str | None] = {}

    def put(kind: str, value: str | None, word: str) -> None:
        if kind in found:
            raise refuse(f"two {kind} units ({word!r})")
        found[kind] = value

    def denominator(word: str) -> None:
        lower = word.lower()
        if lower in _PER_CELL_WORDS:
            put("area", None, word)
        elif lower in _AREA_WORDS:
            put("area", _AREA_WORDS[lower], word)
        elif lower in _YEAR_WORDS:
            put("time", None, word)
        elif lower in _TIME_WORDS:
            put("time", _TIME_WORDS[lower], word)
        else:
            raise refuse(f"unknown area or time {word!r}")

    for word in numerator.split():
        if (mass_species := _numerator_mass(word)) is not None:
            put("mass", mass_species[0], word)
            if mass_species[1] is not None:
                put("species", mass_species[1], word)
        elif word.lower() in _SPECIES:
            put("species", _SPECIES[word.lower()], word)
        elif (match := _EXPONENT.match(word)) and match["exp"] in ("-1", "-2"):
            base, power = match["base"], match["exp"]
            if power == "-2" and base.lower() in ("m", "km"):
                put("area", base.lower(), word)
            elif power == "-1" and base.lower() in _PER_CELL_WORDS | _YEAR_WORDS | set(_TIME_WORDS):
                denominator(base)
            else:
                raise refuse(f"unknown unit {word!r}")
        else:
            raise refuse(f"unknown word {word!r}")
    for part in denominators:
        words = part.split()
        if not words:
            raise refuse("empty denominator")
        for word in words:
            denominator(word)
    if "mass" not in found:
        raise refuse("no mass unit such as t or kg")
    return EmissionUnits(
        mass=str(found["mass"]),
        species=str(found.get("species") or "CO2"),
        area=found.get("area"),
        time=found.get("time"),
        text=text.strip(),
    )


def _numerator_mass(word: str) -> tuple[str, str | None] | None:
    """``"t"`` -> ``("t", None)``, ``"tCO2"`` -> ``("t", "CO2")``, anything else -> ``None``."""
    if word in _MASS:
        return word, None
    for mass in sorted(_MASS, key=len, reverse=True):
        rest = word[len(mass) :]
        if word.startswith(mass) and rest.lower() in _SPECIES and rest.lower() != "carbon":
            return mass, _SPECIES[rest.lower()]
    return None


def choice_units(choice: str, target: EmissionUnits) -> EmissionUnits:
    """The units of an output choice for a target in ``target`` units.

    Args:
        choice: One of :data:`UNIT_CHOICES`.
        target: The units of the target (what the model predicts).

    Raises:
        UnitsError: ``choice`` is not one of :data:`UNIT_CHOICES`.
    """
    if choice == "per_cell":
        if target.area is None and target.time is None:
            return target
        return EmissionUnits(target.mass, target.species, None, None)
    if choice == "per_km2":
        return EmissionUnits("t", "CO2", "km", None)
    if choice == "flux":
        return EmissionUnits("kg", "CO2", "m", "s")
    raise UnitsError(f"units: {choice!r} is not one of {', '.join(UNIT_CHOICES)}")


@dataclass(frozen=True)
class Conversion:
    """``dst = src * factor(year) * area ** area_power``, with ``area`` the pixel's true m2.

    Attributes:
        src: Units of the values given.
        dst: Units of the values returned.
    """

    src: EmissionUnits
    dst: EmissionUnits

    @property
    def area_power(self) -> int:
        """-1 (total -> density), 0 or 1 (density -> total)."""
        return (self.src.area is not None) - (self.dst.area is not None)

    @property
    def identity(self) -> bool:
        """True when the values do not change (same units up to spelling)."""
        return self.src == self.dst

    def factor(self, year: int) -> float:
        """The scalar part of the conversion for calendar year ``year``."""
        factor = (self.src.mass_kg * self.src.species_kg_co2) / (
            self.dst.mass_kg * self.dst.species_kg_co2
        )
        for units, sign in ((self.src, 1), (self.dst, -1)):
            if units.area_m2 is not None:
                factor /= units.area_m2**sign
            if units.time_s is not None:  # a rate: times the seconds of the year gives the total
                factor *= (year_seconds(year) / units.time_s) ** sign
        return factor

    def apply(self, values: np.ndarray, year: int, area: np.ndarray | None) -> np.ndarray:
        """Convert ``values`` (NaN stays NaN) to float32.

        Args:
            values: Emissions in ``src`` units.
            year: The calendar year of the values.
            area: The true pixel areas (m2) of ``values``, needed when ``area_power != 0``.
        """
        if self.identity:
            return np.asarray(values, dtype=np.float32)
        out = np.asarray(values, dtype=np.float64) * self.factor(year)
        if self.area_power:
            if area is None:
                raise ValueError("this conversion needs the pixel areas")
            out = out * area if self.area_power > 0 else out / area
        return out.astype(np.float32)


def conversion(src: EmissionUnits, dst: EmissionUnits) -> Conversion:
    """The conversion from ``src`` to ``dst`` units."""
    return Conversion(src, dst)


class RowConverter:
    """Converts the rows of one year's scene as they stream past, top to bottom.

    Args:
        convert: The conversion; ``None`` leaves the rows as they are.
        grid: The grid of the scene (for the pixel areas).
        year: The calendar year of the scene.
    """

    def __init__(self, convert: Conversion | None, grid: Grid, year: int) -> None:
        self.convert = convert
        self.grid = grid
        self.year = year
        self.row = 0

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Convert the next ``[n, width]`` rows."""
        top = self.row
        self.row += rows.shape[0]
        if self.convert is None or self.convert.identity:
            return rows
        area = None
        if self.convert.area_power:
            from carbongeo.outputs.geodesy import pixel_areas

            area = pixel_areas(self.grid, Window(top, 0, rows.shape[0], rows.shape[1]))
        return self.convert.apply(rows, self.year, area)


@dataclass(frozen=True)
class CogUnits:
    """How ``carbongeo mosaic`` writes one year's COG in the chosen units.

    Attributes:
        label: The COG's units (band unit, description and ``units`` tag).
        tags: Tags that record the choice: ``units``, ``units_choice``, ``target_units``.
        convert: Applied to every block of rows before it goes into the COG (the ``.npy`` keeps
            the target's units).
    """

    label: str
    tags: dict[str, str]
    convert: RowConverter


def cog_units(target_units: str, choice: str, grid: Grid, year: int) -> CogUnits:
    """The units of a prediction COG for ``choice`` (``per_cell``: the target's own units).

    ``per_cell`` on a target whose units cannot be read leaves the values and the label as they
    are, as every COG was written before units could be chosen.

    Raises:
        UnitsError: ``choice`` is unknown, or it asks to convert units that cannot be read.
    """
    if choice not in UNIT_CHOICES:
        raise UnitsError(f"units: {choice!r} is not one of {', '.join(UNIT_CHOICES)}")
    try:
        target: EmissionUnits | None = parse_units(target_units, "target.units")
    except UnitsError:
        if choice != "per_cell":
            raise
        target = None
    if target is None:
        label, convert = target_units, None
    else:
        dst = choice_units(choice, target)
        label, convert = dst.label, conversion(target, dst)
    tags = {"units": label, "units_choice": choice, "target_units": target_units}
    return CogUnits(label, tags, RowConverter(convert, grid, year))
