"""Shared CLI options: parameter types, decorators, -q/-v placement and flag names in errors.

A toy group built from the same classes and decorators as ``carbongeo`` keeps most tests
in-process and instant; the last ones check the real commands.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from carbongeo.cli.app import CarbongeoGroup, main
from carbongeo.cli.options import (
    SCENE_SIZES,
    YEAR_RANGE,
    dask_options,
    device_option,
    verbosity,
    year_or_years_options,
)
from carbongeo.errors import ConfigError, ParameterError


@click.group(cls=CarbongeoGroup)
def toy() -> None:
    """A group shaped like carbongeo's."""


@toy.command()
@click.pass_context
def show(ctx: click.Context) -> None:
    click.echo(str(verbosity(ctx)))


@toy.command()
@year_or_years_options("do")
@click.option("--batch-size", type=int, default=8)
@device_option("auto", "Where")
@dask_options("Default: here.")
def run(
    years: tuple[int, ...] | None,
    batch_size: int,
    device: str,
    scheduler: str | None,
    workers: int | None,
) -> None:
    if batch_size < 1:
        raise ParameterError(f"must be >= 1, got {batch_size}", param="batch_size")
    if years is not None and 1999 in years:
        raise ParameterError("1999 is not in the config's years", param="years")
    if device == "cuda":
        raise ConfigError("no GPU here", param="train.device")
    click.echo(f"{years} {workers}")


def invoke(group: click.Group, *args: str) -> Result:
    return CliRunner().invoke(group, list(args))


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("carbongeo: error: "), result.stderr
    return lines[0].removeprefix("carbongeo: error: ")


# --------------------------------------------------------------------------- types
@pytest.mark.parametrize(
    ("text", "years"),
    [("2014-2016", (2014, 2015, 2016)), ("2015", (2015,)), (" 2014 - 2015 ", (2014, 2015))],
)
def test_year_range_parses(text: str, years: tuple[int, ...]) -> None:
    assert YEAR_RANGE.convert(text, None, None) == years
    assert YEAR_RANGE.convert(years, None, None) == years  # already converted: unchanged


@pytest.mark.parametrize(
    ("text", "fragment"), [("20x4", "not a year range"), ("2016-2014", "ends before it starts")]
)
def test_year_range_rejects(text: str, fragment: str) -> None:
    with pytest.raises(click.BadParameter, match=fragment) as info:
        YEAR_RANGE.convert(text, None, None)
    assert not info.value.message.startswith("years:")  # click adds the flag, not the key


def test_scene_sizes() -> None:
    assert SCENE_SIZES.convert("2048, 8192", None, None) == (2048, 8192)
    for bad in ("x", "0", ""):
        with pytest.raises(click.BadParameter):
            SCENE_SIZES.convert(bad, None, None)


# --------------------------------------------------------------------------- -q and -v
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], 0),
        (["-q"], -1),
        (["-q", "show"], -1),
        (["show", "-q"], -1),
        (["show", "--quiet"], -1),
        (["-v", "show"], 1),
        (["show", "-v"], 1),
        (["-v", "show", "-v"], 2),
        (["show", "-vv"], 2),
        (["-v", "show", "-q"], -1),  # quiet wins wherever it is
    ],
)
def test_quiet_and_verbose_before_or_after_the_command(args: list[str], expected: int) -> None:
    if args in ([], ["-q"]):
        args = [*args, "show"]
    result = invoke(toy, *args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(expected)


def test_every_carbongeo_command_takes_quiet_and_verbose() -> None:
    for name, command in main.commands.items():
        flags = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert {"-q", "--quiet", "-v", "--verbose"} <= flags, name


# --------------------------------------------------------------------------- decorators
@pytest.mark.parametrize(
    ("args", "printed"),
    [
        ([], "None None"),
        (["--year", "2015"], "(2015,) None"),
        (["--years", "2014-2015"], "(2014, 2015) None"),
        (["--workers", "0"], "None 0"),
    ],
)
def test_year_or_years_hands_one_tuple(args: list[str], printed: str) -> None:
    result = invoke(toy, "run", *args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == printed


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--year", "2014", "--years", "2014-2015"], "--year and --years: give one of them"),
        (["--years", "20x4"], "--years: '20x4' is not a year range"),
        (["--device", "gpu"], "--device: 'gpu' is not one of 'auto', 'cpu', 'cuda'"),
        (["--workers", "-1"], "--workers: -1 is not in the range x>=0"),
        (["--bogus"], "No such option '--bogus'"),
    ],
)
def test_bad_values_and_usage_are_one_line(args: list[str], line: str) -> None:
    assert one_line_error(invoke(toy, "run", *args)).startswith(line)


def test_workers_help_is_one_rule_in_tile_and_mosaic() -> None:
    helps = {
        name: next(p.help for p in main.commands[name].params if p.name == "workers")
        for name in ("tile", "mosaic")
    }
    assert helps["tile"] == helps["mosaic"]
    assert "0: one per CPU" in helps["tile"]
    for name in ("tile", "mosaic"):
        assert "0: one per CPU" in " ".join(invoke(main, name, "--help").stdout.split())


def test_device_choice_is_the_same_everywhere() -> None:
    choices = {
        name: tuple(p.type.choices)
        for name, command in main.commands.items()
        for p in command.params
        if p.name == "device"
    }
    assert set(choices) == {"train", "mosaic", "demo", "bench"}
    assert set(choices.values()) == {("auto", "cpu", "cuda")}


# --------------------------------------------------------------------------- flags in errors
def test_errors_name_the_flag_the_user_typed() -> None:
    assert one_line_error(invoke(toy, "run", "--batch-size", "0")) == (
        "--batch-size: must be >= 1, got 0"
    )
    # --year reaches the library as `years`: the message names the flag that was typed.
    assert one_line_error(invoke(toy, "run", "--year", "1999")).startswith("--year: 1999")
    assert one_line_error(invoke(toy, "run", "--years", "1999")).startswith("--years: 1999")


def test_errors_about_config_keys_keep_the_key() -> None:
    assert one_line_error(invoke(toy, "run", "--device", "cuda")) == "train.device: no GPU here"


def test_quiet_after_the_command_silences_a_real_run(tmp_path: Path) -> None:
    from carbongeo.synth import generate_world

    config = str(generate_world(tmp_path / "w", seed=0, size="tiny"))
    after = invoke(main, "tile", "-q", "-c", config, "--year", "2014")
    assert after.exit_code == 0, after.output
    assert after.stderr == ""
    assert after.stdout.startswith("tiled 1 year(s)")


def test_missing_config_says_how_to_pass_one(tmp_path: Path) -> None:
    line = one_line_error(invoke(main, "split", "-c", str(tmp_path / "nope.toml")))
    assert line.startswith(f"config file not found: {tmp_path / 'nope.toml'}")
    assert "--config PATH" in line and "carbongeo synth --out DIR" in line
