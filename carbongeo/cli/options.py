"""The options several commands share, each defined once: click parameter types and decorators.

The pattern is rio-cogeo's: a :class:`click.ParamType` parses and checks a value (a year range,
a list of scene sizes), and a decorator adds an option with its help text to a command. Every
command also takes ``-v``/``-q`` after its name (:func:`verbosity_params`), so ``carbongeo -q
tile`` and ``carbongeo tile -q`` mean the same. This module imports nothing heavy: ``--help``
must stay fast.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from carbongeo.cli.quiet import quiet_libraries
from carbongeo.config import DEFAULT_CONFIG_NAME, DEVICES, parse_years
from carbongeo.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

OPTION_PARAMS: dict[str, str] = {"year": "years", "sizes": "mosaic_sizes"}
"""Options whose value reaches the library under another parameter name (option -> parameter).

Every other option has its parameter's name (``--batch-size`` sets ``batch_size``).
"""


# --------------------------------------------------------------------------- types
class YearRange(click.ParamType):
    """``2014-2023`` or a single year ``2014`` -> the tuple of years."""

    name = "A-B"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return parse_years(str(value))
        except ConfigError as err:
            self.fail(err.message, param, ctx)


class SceneSizes(click.ParamType):
    """``2048,8192`` -> ``(2048, 8192)``: benchmark scene sides in pixels."""

    name = "N,N,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        from carbongeo.bench import parse_sizes

        try:
            return parse_sizes(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


YEAR_RANGE = YearRange()
SCENE_SIZES = SceneSizes()
DEVICE = click.Choice(DEVICES)
WORKERS = click.IntRange(min=0)
POSITIVE = click.IntRange(min=1)
WORLD_SIZE = click.Choice(["tiny", "small", "medium"])
"""Sizes of the synthetic world (``synth``, ``demo``)."""


# --------------------------------------------------------------------------- decorators
def config_option(func: F) -> F:
    """``--config/-c``: the pipeline file of every pipeline command."""
    return click.option(
        "--config",
        "-c",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=Path(DEFAULT_CONFIG_NAME),
        show_default=True,
        help="Pipeline file (TOML). Default: carbongeo.toml in the working folder.",
    )(func)


def year_option(what: str, *, required: bool = False) -> Callable[[F], F]:
    """``--year Y``: one year to ``what``."""
    return click.option(
        "--year", type=int, required=required, metavar="YEAR", help=f"One year to {what}."
    )


def years_option(what: str) -> Callable[[F], F]:
    """``--years A-B``: the years to ``what``; the command gets a tuple, or None for all."""
    return click.option(
        "--years",
        type=YEAR_RANGE,
        default=None,
        help=f'Years to {what}, a range like "2014-2023" (default: every year of the config).',
    )


def year_or_years_options(what: str) -> Callable[[F], F]:
    """``--year Y`` or ``--years A-B``, handed to the command as one ``years`` tuple (None: all).

    Giving both is a usage error.
    """

    def decorator(func: F) -> F:
        @functools.wraps(func)
        def command(*args: Any, year: int | None, years: tuple[int, ...] | None, **kwargs: Any):
            if year is not None and years is not None:
                raise click.BadParameter(
                    "give one of them, not both", param_hint="--year and --years"
                )
            return func(*args, years=(year,) if year is not None else years, **kwargs)

        return year_option(what)(years_option(what)(command))  # type: ignore[return-value]

    return decorator


def device_option(default: str | None, what: str) -> Callable[[F], F]:
    """``--device auto|cpu|cuda``: where ``what`` runs; ``auto`` is CUDA when there is a GPU."""
    return click.option(
        "--device",
        type=DEVICE,
        default=default,
        show_default=default is not None,
        help=f"{what} (auto: CUDA when PyTorch sees a GPU, else CPU).",
    )


def dask_options(default: str) -> Callable[[F], F]:
    """``--scheduler`` and ``--workers``: where the command's dask tasks run.

    Args:
        default: What the command does with neither option, for the help text.
    """

    def decorator(func: F) -> F:
        func = click.option(
            "--workers",
            type=WORKERS,
            default=None,
            metavar="N",
            help="Worker processes of a local dask cluster; 0: one per CPU. Alone, starts the "
            "cluster; with a local --scheduler, its threads or processes.",
        )(func)
        return click.option(
            "--scheduler",
            default=None,
            metavar="ADDRESS",
            help="Run on dask: a scheduler address (tcp://HOST:8786; its workers must see the "
            "same files), 'distributed' (a local cluster), or a local scheduler (threads, "
            f"synchronous, processes). {default}",
        )(func)

    return decorator


def units_option(what: str) -> Callable[[F], F]:
    """``--units``: the units of the emissions a command writes (mosaic, export)."""
    return click.option(
        "--units",
        type=click.Choice(["per_cell", "per_km2", "flux"]),
        default="per_cell",
        show_default=True,
        help=f"Units of the {what}: per_cell (the target's, e.g. t CO2 / cell / yr), per_km2 "
        "(t CO2 / km2 / yr) or flux (kg CO2 m-2 s-1, mean over the calendar year).",
    )


def checkpoint_option(help: str) -> Callable[[F], F]:  # noqa: A002
    """``--checkpoint``: a model checkpoint, e.g. one trained on another region."""
    return click.option(
        "--checkpoint",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=help,
    )


def json_option(help: str) -> Callable[[F], F]:  # noqa: A002
    """``--json``: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help=help)


# --------------------------------------------------------------------------- verbosity
def _remember_verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Fold ``-v``/``-q`` into the shared state, wherever on the command line they came."""
    state = ctx.ensure_object(dict)
    if param.name == "verbose":
        state["verbose"] = state.get("verbose", 0) + int(value)
    else:
        state["quiet"] = state.get("quiet", False) or bool(value)


def verbosity_params() -> list[click.Option]:
    """Fresh ``-v/--verbose`` and ``-q/--quiet`` options, for the group and every command."""
    return [
        click.Option(
            ["-v", "--verbose"],
            count=True,
            expose_value=False,
            callback=_remember_verbosity,
            help="More log output (-vv for debug).",
        ),
        click.Option(
            ["-q", "--quiet"],
            is_flag=True,
            expose_value=False,
            callback=_remember_verbosity,
            help="Only errors; no progress bars.",
        ),
    ]


def verbosity(ctx: click.Context) -> int:
    """-1 with ``-q`` anywhere, else the number of ``-v`` given before and after the command."""
    state = ctx.find_object(dict) or {}
    return -1 if state.get("quiet") else int(state.get("verbose", 0))


def configure_logging(level_of_detail: int) -> None:
    """Log at ERROR (-1), WARNING (0), INFO (1) or DEBUG (2+) on stderr."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(
        level_of_detail, logging.DEBUG
    )
    logging.basicConfig(level=level, format="carbongeo: %(levelname)s: %(message)s")
    quiet_libraries(level_of_detail)


# --------------------------------------------------------------------------- messages
def flag_for(ctx: click.Context, param: str) -> str | None:
    """The flag the user typed for the library parameter ``param`` in this command, if any.

    Errors name parameters (``batch_size``); on the command line the user should read the flag
    they typed (``--batch-size``). None when the value did not come from the command line (a
    default or the config), so the message keeps naming the parameter or config key.
    """
    for option in ctx.command.params:
        if not isinstance(option, click.Option) or option.name is None:
            continue
        if OPTION_PARAMS.get(option.name, option.name) != param:
            continue
        if ctx.get_parameter_source(option.name) is ParameterSource.COMMANDLINE:
            return option.opts[0]
    return None
