"""Tests of emission units: parsing, conversions between per cell, per km2 and flux, COG units."""

from __future__ import annotations

import numpy as np
import pytest
from _predictions import UTM_TRANSFORM, UTM_WKT

from carbongeo.errors import CarbongeoError, UnitsError
from carbongeo.grid import Grid
from carbongeo.outputs.geodesy import pixel_areas
from carbongeo.outputs.units import (
    CO2_PER_C,
    UNIT_CHOICES,
    EmissionUnits,
    RowConverter,
    choice_units,
    cog_units,
    conversion,
    format_units,
    parse_units,
    year_seconds,
)

GRID = Grid(UTM_WKT, UTM_TRANSFORM, 24, 20, tile_size=8, scale=4)


@pytest.mark.parametrize(
    ("text", "mass", "species", "area", "time"),
    [
        ("t CO2 / cell / yr", "t", "CO2", None, None),
        ("tCO2 per cell per year", "t", "CO2", None, None),
        ("t", "t", "CO2", None, None),
        ("", "t", "CO2", None, None),
        ("Mt CO2 / yr", "Mt", "CO2", None, None),
        ("kg CO2 / grid cell / s", "kg", "CO2", None, "s"),
        ("kg CO2 m-2 s-1", "kg", "CO2", "m", "s"),
        ("kg/(m2 s)", "kg", "CO2", "m", "s"),
        ("kg m⁻² s⁻¹", "kg", "CO2", "m", "s"),
        ("g C m-2 day-1", "g", "C", "m", "day"),
        ("t/km2/yr", "t", "CO2", "km", None),
        ("t C km^-2 yr-1", "t", "C", "km", None),
        ("Gg carbon / ha / year", "Gg", "C", "ha", None),
    ],
)
def test_parse_units_reads_the_common_spellings(
    text: str, mass: str, species: str, area: str | None, time: str | None
) -> None:
    units = parse_units(text)
    assert (units.mass, units.species, units.area, units.time) == (mass, species, area, time)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("nW/cm2/sr", "unknown word 'nW'"),
        ("persons / cell", "unknown word 'persons'"),
        ("t CO2 / month", "unknown area or time 'month'"),
        ("CO2 / cell / yr", "no mass unit"),
        ("t kg / cell", "two mass units"),
        ("t CO2 / yr / s", "two time units"),
        ("kg CO2eq / cell / yr", "unknown word 'CO2eq'"),
        ("t CO2 //", "empty denominator"),
    ],
)
def test_parse_units_refuses_what_it_cannot_convert_in_one_line(text: str, why: str) -> None:
    with pytest.raises(UnitsError, match="target.units: cannot convert") as err:
        parse_units(text, "target.units")
    assert why in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, CarbongeoError)


def test_choices_have_their_documented_units() -> None:
    target = parse_units("kg CO2 / cell / yr")
    assert choice_units("per_cell", target) is target  # the target's own units, untouched
    assert format_units(choice_units("per_km2", target)) == "t CO2 / km2 / yr"
    assert format_units(choice_units("flux", target)) == "kg CO2 m-2 s-1"
    density = parse_units("g C m-2 day-1")
    assert format_units(choice_units("per_cell", density)) == "g C / cell / yr"
    with pytest.raises(UnitsError, match="units: 'per_m2' is not one of per_cell, per_km2, flux"):
        choice_units("per_m2", target)


def test_flux_of_one_tonne_per_cell_in_a_leap_year() -> None:
    convert = conversion(parse_units("t CO2 / cell / yr"), parse_units("kg CO2 m-2 s-1"))
    assert convert.area_power == -1
    assert year_seconds(2020) == 366 * 86400 and year_seconds(2019) == 365 * 86400
    out = convert.apply(np.array([1.0, np.nan]), 2020, np.array([1e6, 1e6]))
    np.testing.assert_allclose(out[0], 1000.0 / (366 * 86400) / 1e6, rtol=1e-7)
    assert np.isnan(out[1]) and out.dtype == np.float32


def test_carbon_converts_to_co2_by_the_molar_masses() -> None:
    convert = conversion(parse_units("t C / cell / yr"), parse_units("t CO2 / cell / yr"))
    assert convert.area_power == 0
    assert convert.factor(2021) == pytest.approx(CO2_PER_C)
    assert pytest.approx(3.664, rel=1e-3) == CO2_PER_C


@pytest.mark.parametrize("year", [2019, 2020])
@pytest.mark.parametrize(
    "units", ["t CO2 / cell / yr", "kg CO2 m-2 s-1", "t CO2 / km2 / yr", "g C m-2 day-1"]
)
def test_every_conversion_goes_back_to_the_values(year: int, units: str) -> None:
    rng = np.random.default_rng(year)
    values = rng.gamma(2.0, 100.0, 50)
    area = rng.uniform(0.5e6, 1.5e6, 50)
    start, other = parse_units("t CO2 / cell / yr"), parse_units(units)
    there = conversion(start, other).apply(values, year, area)
    back = conversion(other, start).apply(there, year, area)
    np.testing.assert_allclose(back, values, rtol=3e-7)


def test_cf_spelling_is_udunits_and_methods_follow_the_kind() -> None:
    per_cell = parse_units("kt CO2 / cell / yr")
    assert per_cell.cf_units == "Gg"  # udunits reads "kt" as a knot
    assert per_cell.cell_methods == "area: sum time: sum" and per_cell.standard_name is None
    flux = parse_units("kg CO2 m-2 s-1")
    assert flux.cf_units == "kg m-2 s-1" and flux.cell_methods == "area: mean time: mean"
    assert flux.standard_name == (
        "tendency_of_atmosphere_mass_content_of_carbon_dioxide_due_to_emission"
    )
    assert parse_units("t/km2/yr").cell_methods == "area: mean time: sum"
    cf_units = pytest.importorskip("cf_units", reason="cf_units checks the udunits spelling")
    for text in ("t", "kt CO2/cell/yr", "t/km2/yr", "kg m-2 s-1", "g C / ha / day", "Mt / h"):
        units = parse_units(text)
        base = "kg" + (" m-2" if units.area else "") + (" s-1" if units.time else "")
        one = cf_units.Unit(units.cf_units).convert(1.0, cf_units.Unit(base))
        assert one == pytest.approx(units.mass_kg / (units.area_m2 or 1) / (units.time_s or 1))


def test_equal_units_are_the_identity_whatever_the_spelling() -> None:
    same = conversion(parse_units("t CO2 / cell / yr"), parse_units("tCO2 per cell per year"))
    assert same.identity
    values = np.array([1.5, np.nan], np.float32)
    assert same.apply(values, 2020, None).tobytes() == values.tobytes()


def test_row_converter_streams_like_one_whole_conversion() -> None:
    convert = conversion(parse_units(""), parse_units("kg CO2 m-2 s-1"))
    values = np.random.default_rng(0).gamma(2.0, 10.0, (GRID.height, GRID.width)).astype("f4")
    whole = convert.apply(values, 2020, pixel_areas(GRID))
    rows = RowConverter(convert, GRID, 2020)
    pieces = [rows(values[a:b]) for a, b in ((0, 8), (8, 9), (9, 24))]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)


def test_cog_units_default_keeps_the_target_and_records_the_choice() -> None:
    cog = cog_units("t CO2 / cell / yr", "per_cell", GRID, 2020)
    assert cog.label == "t CO2 / cell / yr"
    assert cog.tags == {
        "units": "t CO2 / cell / yr",
        "units_choice": "per_cell",
        "target_units": "t CO2 / cell / yr",
    }
    rows = np.ones((4, GRID.width), np.float32)
    assert cog.convert(rows) is rows  # the default COG is bit-identical to the .npy
    flux = cog_units("t", "flux", GRID, 2020)
    assert flux.label == "kg CO2 m-2 s-1" and flux.tags["target_units"] == "t"


def test_cog_units_per_cell_leaves_unreadable_units_alone_but_never_converts_them() -> None:
    cog = cog_units("arbitrary units", "per_cell", GRID, 2020)
    assert cog.label == "arbitrary units" and cog.convert.convert is None
    with pytest.raises(UnitsError, match="target.units: cannot convert 'arbitrary units'"):
        cog_units("arbitrary units", "flux", GRID, 2020)
    with pytest.raises(UnitsError, match="units: 'furlongs' is not one of"):
        cog_units("t", "furlongs", GRID, 2020)


def test_unit_choices_are_those_of_the_command_line() -> None:
    from carbongeo.cli.app import export_command, mosaic_command

    for command in (export_command, mosaic_command):
        (option,) = [p for p in command.params if p.name == "units"]
        assert tuple(option.type.choices) == UNIT_CHOICES


def test_emission_units_label_is_what_the_user_wrote() -> None:
    assert parse_units("tCO2 per cell per year").label == "tCO2 per cell per year"
    assert EmissionUnits("t", "CO2", "km", None).label == "t CO2 / km2 / yr"
