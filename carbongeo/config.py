"""The pipeline file: TOML -> typed, validated objects.

Every mistake raises :class:`~carbongeo.errors.ConfigError` with one line that names the key and
says how to fix it. Relative paths resolve against the folder of the pipeline file; ``{year}`` in a
path expands per year, and a path without it is a static source used for every year. The full
format is documented in ``docs/pipeline-file.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from carbongeo.errors import ConfigError, ConfigNotFoundError, ParameterError
from carbongeo.store.layout import RunLayout

Kind = Literal["extensive", "intensive", "categorical"]
KINDS: tuple[str, ...] = ("extensive", "intensive", "categorical")
TRANSFORMS: tuple[str, ...] = ("none", "log1p")
FFT_FILTERS: tuple[str, ...] = ("ideal", "butterworth", "gaussian")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
SUPERVISIONS: tuple[str, ...] = ("auto", "fine", "coarse")
PRIORS: tuple[str, ...] = ("auto", "forest", "fitted", "zero")
"""``train.prior``: what the network starts from (see ``prior_kind``)."""
Supervision = Literal["fine", "coarse"]
"""A resolved ``train.supervision``: learn from the fine target, or from the coarse product."""
DEFAULT_CONFIG_NAME = "carbongeo.toml"
TILE_SECTIONS: tuple[str, ...] = ("grid", "target", "coarse", "aux")
"""The sections of the pipeline file that the year cubes depend on."""
MODEL_DIM_RANGE = (4, 1024)
"""Allowed ``model.dim``: the network needs a multiple of 4; beyond 1024 it cannot be allocated
on ordinary machines (the full model has 48)."""
MODEL_MAX_DEPTH = 64


@dataclass(frozen=True)
class SourceConfig:
    """One raster source: the target, the coarse product or an auxiliary band.

    Attributes:
        name: Band name (``target``, ``coarse`` or the aux ``name``).
        path: Absolute path template; ``{year}`` expands per year.
        kind: How values combine when resampled: ``extensive`` quantities (emissions, counts) are
            summed so totals are kept, ``intensive`` ones (NDVI, radiance) averaged,
            ``categorical`` ones (classes, masks) take the nearest value.
        transform: Value transform applied before normalisation (``none`` or ``log1p``).
        units: Physical units, carried into outputs.
        nodata: Nodata override; ``None`` uses the file's declared nodata (and NaN).
        band: 1-based band index in the file.
        zero_classes: ``categorical`` aux only: class values on which no emissions can be (e.g.
            water = 1). Every method leaves those pixels at 0 and gives a cell's mass to its
            other pixels.
    """

    name: str
    path: str
    kind: Kind = "intensive"
    transform: str = "none"
    units: str = ""
    nodata: float | None = None
    band: int = 1
    zero_classes: tuple[float, ...] = ()

    @property
    def is_static(self) -> bool:
        """True when the path has no ``{year}``: the same raster is used for every year."""
        return _YEAR_FIELD.search(self.path) is None

    def path_for(self, year: int) -> Path:
        """The file of ``year``: ``{year}`` becomes e.g. ``2014``, ``{year:05d}`` ``02014``."""
        return Path(_YEAR_FIELD.sub(lambda m: format(year, m.group(1) or ""), self.path))


@dataclass(frozen=True)
class GridConfig:
    """The ``[grid]`` table."""

    tile_size: int = 128
    scale: int = 8
    crs: str | None = None
    resolution: float | None = None
    bounds: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class SplitConfig:
    """The ``[split]`` table."""

    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    block_tiles: int = 2
    buffer_tiles: int = 1
    min_valid_fraction: float = 0.5
    seed: int = 0
    holdout_year: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The ``[model]`` table: DSTCarbonFormer's size and constraints."""

    dim: int = 32
    depth: int = 2
    fft_constraint: bool = False
    fft_filter: str = "ideal"
    mass_constraint: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """The ``[train]`` table."""

    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    patience: int = 8
    grad_clip: float = 1.0
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    compile: bool = False
    channels_last: bool = False
    supervision: str = "auto"
    coarse_factors: tuple[int, ...] = (2, 4)
    prior: str = "auto"


@dataclass(frozen=True)
class LossConfig:
    """The ``[loss]`` table: weights of the hybrid loss terms."""

    pixel: float = 1.0
    ssim: float = 0.2
    edge: float = 0.1
    consistency: float = 0.1
    tv: float = 0.01
    high_weight: float = 5.0
    high_quantile: float = 0.9


@dataclass(frozen=True)
class MosaicConfig:
    """The ``[mosaic]`` table."""

    overlap: int = 32
    batch_size: int = 8


@dataclass(frozen=True)
class EvaluateConfig:
    """The ``[evaluate]`` table.

    Attributes:
        dasymetric: Aux band names used as proxies for dasymetric baselines (coarse mass spread
            in proportion to the band). Empty: every ``extensive`` aux band plus one named ``ntl``.
        split: Which split of tiles is evaluated (``test``, ``val`` or ``train``).
        forest_pixels: Training pixels of the supervised forest baseline, drawn evenly from every
            training tile of every year with a target.
    """

    dasymetric: tuple[str, ...] = ()
    split: str = "test"
    forest_pixels: int = 100_000


@dataclass(frozen=True)
class PipelineConfig:
    """A whole validated pipeline file.

    Attributes:
        target: The fine emission map, or None when the pipeline has no ``[target]``.
        target_years: The years that have a target (``target.years``, default every year;
            empty without a target). Outside them no target is read.
    """

    path: Path
    workdir: Path
    years: tuple[int, ...]
    grid: GridConfig
    target: SourceConfig | None
    aux: tuple[SourceConfig, ...]
    coarse: SourceConfig | None = None
    target_years: tuple[int, ...] = ()
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mosaic: MosaicConfig = field(default_factory=MosaicConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def layout(self) -> RunLayout:
        """The names of every file the run makes under ``workdir``."""
        return RunLayout(self.workdir)

    @property
    def tiles_dir(self) -> Path:
        """``<workdir>/tiles``."""
        return self.layout.tiles_dir

    @property
    def checkpoints_dir(self) -> Path:
        """``<workdir>/checkpoints``."""
        return self.layout.checkpoints_dir

    @property
    def predictions_dir(self) -> Path:
        """``<workdir>/predictions``."""
        return self.layout.predictions_dir

    @property
    def reports_dir(self) -> Path:
        """``<workdir>/reports``."""
        return self.layout.reports_dir

    @property
    def aux_names(self) -> list[str]:
        """Aux band names in channel order."""
        return [a.name for a in self.aux]

    def zero_classes(self) -> dict[str, tuple[float, ...]]:
        """The aux bands that declare ``zero_classes``, with their classes."""
        return {a.name: a.zero_classes for a in self.aux if a.zero_classes}

    def dasymetric_bands(self) -> list[str]:
        """Aux bands used as dasymetric proxies by the baselines."""
        if self.evaluate.dasymetric:
            return list(self.evaluate.dasymetric)
        return [a.name for a in self.aux if a.kind == "extensive" or a.name == "ntl"]

    def sources(self) -> list[SourceConfig]:
        """Every source: target (if any), coarse (if any) and aux bands."""
        target = [self.target] if self.target is not None else []
        return [*target, *([self.coarse] if self.coarse else []), *self.aux]

    def has_target(self, year: int) -> bool:
        """True when ``year`` has a fine target (one of :attr:`target_years`)."""
        return self.target is not None and year in self.target_years

    def sources_for(self, year: int) -> list[SourceConfig]:
        """The sources read for ``year``: the target only in a target year."""
        return [s for s in self.sources() if s is not self.target or self.has_target(year)]

    @property
    def emission_units(self) -> str:
        """Units of the emissions (``target.units``, or ``coarse.units`` without a target)."""
        if self.target is not None:
            return self.target.units
        return self.coarse.units if self.coarse is not None else ""

    def training_years(self) -> tuple[int, ...]:
        """The years trained on: every year but ``split.holdout_year``."""
        return tuple(y for y in self.years if y != self.split.holdout_year)

    def supervision_choice(self) -> tuple[Supervision, str]:
        """The supervision ``train.supervision`` resolves to, and why (one phrase).

        ``auto`` is ``fine`` when one of the training years has a target, else ``coarse``.

        Raises:
            ConfigError: ``fine`` without a target in the training years, or ``coarse``
                without a ``[coarse]`` product (naming ``train.supervision``).
        """
        years = self.training_years()
        with_target = [y for y in years if self.has_target(y)]
        choice = self.train.supervision
        if choice == "fine" and not with_target:
            raise ConfigError(
                "'fine' needs a target in a training year, but none of the training years "
                f"{_span(years)} has one; set target.years or use 'coarse'",
                param="train.supervision",
            )
        if choice == "coarse" and self.coarse is None:
            raise ConfigError(
                "'coarse' learns from the coarse product; add a [coarse] table with its path",
                param="train.supervision",
            )
        if choice == "fine":
            return "fine", "train.supervision is 'fine'"
        if choice == "coarse":
            return "coarse", "train.supervision is 'coarse'"
        if with_target:
            return "fine", f"the training years {_span(with_target)} have a target"
        return "coarse", f"no training year ({_span(years)}) has a target"

    @property
    def supervision(self) -> Supervision:
        """The resolved supervision (:meth:`supervision_choice` without the reason)."""
        return self.supervision_choice()[0]

    @property
    def prior_kind(self) -> str:
        """What the network starts from (:mod:`carbongeo.training.prior`), ``train.prior``
        resolved: ``forest`` (a random forest fitted on the training tiles' fine truth, held in
        the model) or ``fitted`` (the per-pixel log-linear path fitted on the run's loss) or
        ``zero`` (neither). ``auto`` is ``forest`` under fine supervision and ``fitted`` under
        coarse supervision, where each was measured to help.

        Raises:
            ConfigError: ``forest`` is asked for under coarse supervision (there is no fine truth
                to fit it on).
        """
        if self.train.prior == "auto":
            return "forest" if self.supervision == "fine" else "fitted"
        if self.train.prior == "forest" and self.supervision == "coarse":
            raise ConfigError(
                "train.prior: forest is fitted on the fine truth; under coarse supervision use "
                "fitted or zero",
                param="train.prior",
            )
        return self.train.prior

    def data_hash(self) -> str:
        """A short hash of what determines the data and model (not paths or training knobs).

        Under coarse supervision the model depends on no target, so ``[target]`` is left out:
        the same pipeline with or without a target trains and predicts the same.
        """
        if self.supervision == "coarse":
            return self._hash(("grid", "coarse", "aux", "model", _COARSE_MODE))
        return self._hash(("grid", "target", "coarse", "aux", "model"))

    def tiles_hash(self) -> str:
        """A short hash of the sections the year cubes are made from (``tiles/index.json``)."""
        return self._hash(TILE_SECTIONS, cubes_only=True)

    def split_hash(self) -> str:
        """A short hash of what ``tiles/split.json`` is made from: the tiles and ``[split]``.

        A coarse-supervised split is made from the coarse product's validity, never the target.
        """
        if self.supervision == "coarse":
            return self._hash(("grid", "coarse", "aux", "split", _COARSE_MODE), cubes_only=True)
        return self._hash((*TILE_SECTIONS, "split"), cubes_only=True)

    def recorded_raw(self) -> dict[str, Any]:
        """The pipeline file as a checkpoint records it: without ``[target]`` under coarse
        supervision, whose model never saw one."""
        if self.supervision == "coarse":
            return {k: v for k, v in self.raw.items() if k != "target"}
        return dict(self.raw)

    def _hash(self, keys: Sequence[str], *, cubes_only: bool = False) -> str:
        values = {k: self.raw.get(k) for k in keys if k != _COARSE_MODE}
        if cubes_only and isinstance(values.get("aux"), list):
            # zero_classes act on allocation, not on the cubes: declaring them keeps the tiles.
            values["aux"] = [
                {k: v for k, v in t.items() if k != "zero_classes"} if isinstance(t, dict) else t
                for t in values["aux"]
            ]
        if _COARSE_MODE in keys:
            values[_COARSE_MODE] = list(self.train.coarse_factors)
        text = repr(values)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def source_key(self, src: SourceConfig) -> str:
        """The config key of a source's path, the label of every message about the source.

        ``target.path``, ``coarse.path``, or ``aux[<i>].path (<name>)`` for the i-th aux band.
        """
        if self.target is not None and src is self.target:
            return "target.path"
        if src is self.coarse:
            return "coarse.path"
        return f"aux[{self.aux.index(src)}].path ({src.name})"

    def check_files(self, years: Sequence[int] | None = None) -> None:
        """Raise ConfigError naming the first source file missing for one of ``years``."""
        for year in years if years is not None else self.years:
            for src in self.sources_for(year):
                path = src.path_for(year)
                if not path.exists():
                    raise ConfigError(
                        f"file for year {year} not found: {path} (fix the path or the years range)",
                        param=self.source_key(src),
                    )


_COARSE_MODE = "coarse supervision"
"""A pseudo-key of the hashes: coarse supervision and its ``train.coarse_factors``."""


def _span(years: Sequence[int]) -> str:
    if not years:
        return "(none)"
    return f"{years[0]}-{years[-1]}" if len(years) > 1 else str(years[0])


# --------------------------------------------------------------------------- parsing helpers
_YEAR_RANGE = re.compile(r"^\s*(\d{4})\s*(?:-\s*(\d{4})\s*)?$")


def parse_years(value: object, key: str = "years") -> tuple[int, ...]:
    """Parse ``"2014-2023"``, ``"2014"``, ``2014`` or a list of years into a sorted tuple.

    Raises:
        ConfigError: ``value`` is none of these; the message is about ``key``.
    """
    expected = 'expected a year range like "2014-2023" or a list of years'
    if isinstance(value, bool):
        raise ConfigError(expected, param=key)
    if isinstance(value, int):
        return (value,)
    if isinstance(value, str):
        match = _YEAR_RANGE.match(value)
        if not match:
            raise ConfigError(f'{value!r} is not a year range; write e.g. "2014-2023"', param=key)
        start = int(match.group(1))
        end = int(match.group(2) or start)
        if end < start:
            raise ConfigError(f"range {value!r} ends before it starts", param=key)
        return tuple(range(start, end + 1))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return tuple(sorted(set(value)))
    raise ConfigError(expected, param=key)


def _check_keys(table: dict[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}{key}: unknown key; allowed keys here: {', '.join(allowed)}")


def _typed(table: dict[str, Any], key: str, expected: type | tuple[type, ...], where: str) -> Any:
    value = table[key]
    ok = isinstance(value, expected) and not (isinstance(value, bool) and expected in (int, float))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        names = (
            expected.__name__
            if isinstance(expected, type)
            else " or ".join(t.__name__ for t in expected)
        )
        raise ConfigError(f"{where}{key}: expected {names}, got {value!r}")
    return value


def _build(cls: type, table: object, where: str) -> Any:
    """Build a flat dataclass from a TOML table, checking keys and types."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where.rstrip('.')}: expected a table [{where.rstrip('.')}]")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(table, list(fields), where)
    values: dict[str, Any] = {}
    for key in table:
        default = getattr(cls(), key)
        if isinstance(default, bool):
            values[key] = _typed(table, key, bool, where)
        elif isinstance(default, int):
            values[key] = _typed(table, key, int, where)
        elif isinstance(default, float):
            values[key] = _finite(_typed(table, key, float, where), f"{where}{key}")
        elif isinstance(default, str):
            values[key] = _typed(table, key, str, where)
        else:
            values[key] = table[key]
    return cls(**values)


def _finite(value: float, key: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    return value


def _positive(value: float, key: str) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")


def _non_negative(value: float, key: str) -> None:
    if value < 0:
        raise ConfigError(f"{key}: must be >= 0, got {value}")


def _resolve_path(raw: object, base: Path, key: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{key}: expected a file path (string), got {raw!r}")
    path = Path(raw).expanduser()
    # normpath folds "pipelines/../data" so errors and outputs show the path a user expects.
    return os.path.normpath(path if path.is_absolute() else (base / path))


_SOURCE_KEYS = ("path", "kind", "transform", "units", "nodata", "band")
_AUX_KEYS = ("name", *_SOURCE_KEYS, "zero_classes")
# {year}, optionally with a format spec for integers ({year:04d}, {year:>6}); any other {name}
# in a path is refused as a typo.
_YEAR_FIELD = re.compile(r"\{year(?::([^{}]*))?\}")
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^{}]*)?\}")


def _check_year_fields(path: str, key: str) -> None:
    """Refuse placeholders other than ``{year}`` and year formats that do not apply to an int."""
    for match in _FIELD.finditer(path):
        if match.group(1) != "year":
            raise ConfigError(
                f"{key}: unknown placeholder {match.group(0)!r}; only {{year}} is expanded "
                "(optionally with a format such as {year:04d})"
            )
    for match in _YEAR_FIELD.finditer(path):
        try:
            format(2014, match.group(1) or "")
        except ValueError as err:
            raise ConfigError(
                f"{key}: {match.group(0)!r} is not a year format ({err}); write {{year}} or e.g. "
                "{year:04d}"
            ) from None


def _source(table: object, base: Path, where: str, *, name: str | None) -> SourceConfig:
    key = where.rstrip(".")
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: expected a table")
    allowed = _AUX_KEYS if name is None else _SOURCE_KEYS
    _check_keys(table, allowed, where)
    if "path" not in table:
        raise ConfigError(f"{where}path: missing; give the raster file (use {{year}} per year)")
    if name is None:
        if "name" not in table:
            raise ConfigError(f"{where}name: missing; give each [[aux]] band a name")
        name = _typed(table, "name", str, where)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"{where}name: {name!r} must be letters, digits, '_', '-' or '.'")
    kind = table.get("kind", "extensive" if name in ("target", "coarse") else "intensive")
    if kind not in KINDS:
        raise ConfigError(f"{where}kind: {kind!r} is not one of {', '.join(KINDS)}")
    transform = table.get("transform", "none")
    if transform not in TRANSFORMS:
        raise ConfigError(f"{where}transform: {transform!r} is not one of {', '.join(TRANSFORMS)}")
    nodata = table.get("nodata")
    if nodata is not None:
        nodata = _typed(table, "nodata", float, where)
    band = _typed(table, "band", int, where) if "band" in table else 1
    if band < 1:
        raise ConfigError(f"{where}band: bands are numbered from 1, got {band}")
    units = _typed(table, "units", str, where) if "units" in table else ""
    _check_year_fields(str(table["path"]), f"{where}path")
    zero_classes = _zero_classes(table, kind, where)
    if zero_classes and transform != "none":
        raise ConfigError(f'{where}transform: a band with zero_classes must keep transform "none"')
    return SourceConfig(
        name=name,
        path=_resolve_path(table["path"], base, f"{where}path"),
        kind=kind,
        transform=transform,
        units=units,
        nodata=nodata,
        band=band,
        zero_classes=zero_classes,
    )


def _zero_classes(table: dict[str, Any], kind: str, where: str) -> tuple[float, ...]:
    if "zero_classes" not in table:
        return ()
    raw = table["zero_classes"]
    if kind != "categorical":
        raise ConfigError(
            f"{where}zero_classes: only a categorical band has classes (this one is {kind})"
        )
    if not (
        isinstance(raw, list)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)
        and all(math.isfinite(v) for v in raw)
    ):
        raise ConfigError(f"{where}zero_classes: expected a list of class values, e.g. [1]")
    return tuple(float(v) for v in raw)


_TOP_KEYS = (
    "workdir",
    "years",
    "grid",
    "target",
    "coarse",
    "aux",
    "split",
    "model",
    "train",
    "loss",
    "mosaic",
    "evaluate",
)


def load_config(path: str | Path, *, check_files: bool = False) -> PipelineConfig:
    """Load and validate a pipeline file.

    Args:
        path: The TOML file.
        check_files: Also check that every source file exists for every year.

    Returns:
        The validated configuration with absolute paths.

    Raises:
        ConfigError: One line naming the offending key and the fix
            (:class:`~carbongeo.errors.ConfigNotFoundError`: there is no such file).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigNotFoundError(
            f"config file not found: {path} (run 'carbongeo synth --out DIR' for a ready example)",
            path=path,
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark is fine
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err
    return parse_config(raw, path.resolve().parent, path=path.resolve(), check_files=check_files)


def parse_config(
    raw: dict[str, Any], base: Path, *, path: Path | None = None, check_files: bool = False
) -> PipelineConfig:
    """Validate an already parsed TOML document; relative paths resolve against ``base``."""
    _check_keys(raw, _TOP_KEYS, "")
    for required in ("years", "aux"):
        if required not in raw:
            raise ConfigError(
                f"{required}: missing from the pipeline file (see docs/pipeline-file.md)"
            )
    years = parse_years(raw["years"])
    workdir = Path(_resolve_path(raw.get("workdir", "runs"), base, "workdir"))

    grid = _build(GridConfig, raw.get("grid", {}), "grid.")
    _positive(grid.tile_size, "grid.tile_size")
    _positive(grid.scale, "grid.scale")
    if grid.tile_size % grid.scale:
        raise ConfigError(
            f"grid.scale: {grid.scale} does not divide grid.tile_size {grid.tile_size}; "
            "pick a divisor (e.g. 4, 8 or 16 for tile_size 128)"
        )
    if grid.bounds is not None:
        b = grid.bounds
        if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, int | float) for v in b)):
            raise ConfigError("grid.bounds: expected [xmin, ymin, xmax, ymax] numbers")
        if not all(math.isfinite(v) for v in b):
            raise ConfigError(f"grid.bounds: expected four finite numbers, got {b!r}")
        grid = dataclasses.replace(grid, bounds=tuple(float(v) for v in b))
    if grid.crs is not None and not isinstance(grid.crs, str):
        raise ConfigError(f'grid.crs: expected a CRS string like "EPSG:32650", got {grid.crs!r}')
    if grid.resolution is not None:
        if isinstance(grid.resolution, bool) or not isinstance(grid.resolution, int | float):
            raise ConfigError(f"grid.resolution: expected a number, got {grid.resolution!r}")
        grid = dataclasses.replace(
            grid, resolution=_finite(float(grid.resolution), "grid.resolution")
        )
    overrides = [grid.crs is not None, grid.resolution is not None, grid.bounds is not None]
    if any(overrides) and not all(overrides):
        raise ConfigError("grid: give crs, resolution and bounds together (or none of them)")
    if grid.resolution is not None:
        _positive(grid.resolution, "grid.resolution")
    if grid.resolution is not None and grid.bounds is not None:
        xmin, ymin, xmax, ymax = grid.bounds
        side = max(xmax - xmin, ymax - ymin) / grid.resolution
        from carbongeo.grid import MAX_SIDE  # grid imports numpy: not at import time

        if not side <= MAX_SIDE:  # also catches inf from a denormal resolution
            raise ConfigError(
                f"grid.resolution: {grid.resolution} over grid.bounds gives {side:.3g} pixels "
                f"per side (at most {MAX_SIDE}); check that it is in the units of grid.crs "
                "(metres or degrees)"
            )

    target, target_years = _target(raw, base, years)
    coarse = None
    if "coarse" in raw:
        coarse = _source(raw["coarse"], base, "coarse.", name="coarse")
        if coarse.kind != "extensive":
            raise ConfigError("coarse.kind: the coarse product must be 'extensive'")
    if coarse is None and target is None:
        raise ConfigError(
            "coarse: missing; a pipeline without a [target] needs the coarse product to "
            "downscale (a [coarse] table with its path)"
        )
    if coarse is None and len(target_years) < len(years):
        missing = next(y for y in years if y not in target_years)
        raise ConfigError(
            f"coarse: missing; {missing} has no target (target.years), so the coarse product to "
            "downscale must come from a [coarse] table"
        )

    aux_raw = raw["aux"]
    if not isinstance(aux_raw, list) or not aux_raw:
        raise ConfigError(
            "aux: the aux list is empty; add at least one [[aux]] table with name and path"
        )
    aux = tuple(_source(t, base, f"aux[{i}].", name=None) for i, t in enumerate(aux_raw))
    names = [a.name for a in aux]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ConfigError(f"aux: band name {duplicate!r} is used twice; names must be unique")

    split = _build(SplitConfig, raw.get("split", {}), "split.")
    ratios = split.ratios
    if not (
        isinstance(ratios, list | tuple)
        and len(ratios) == 3
        and all(isinstance(r, int | float) and math.isfinite(r) and r >= 0 for r in ratios)
        and sum(ratios) > 0
    ):
        raise ConfigError(
            "split.ratios: expected three finite non-negative numbers [train, val, test], got "
            f"{ratios!r}"
        )
    split = dataclasses.replace(split, ratios=tuple(float(r) / sum(ratios) for r in ratios))
    if not 0 <= split.min_valid_fraction <= 1:
        raise ConfigError("split.min_valid_fraction: must be between 0 and 1")
    if split.block_tiles < 1 or split.buffer_tiles < 0:
        raise ConfigError("split.block_tiles must be >= 1 and split.buffer_tiles >= 0")
    _non_negative(split.seed, "split.seed")
    if split.holdout_year is not None:
        if isinstance(split.holdout_year, bool) or not isinstance(split.holdout_year, int):
            raise ConfigError("split.holdout_year: expected a year (integer)")
        if split.holdout_year not in years:
            raise ConfigError(f"split.holdout_year: {split.holdout_year} is not in years")

    model = _build(ModelConfig, raw.get("model", {}), "model.")
    if not (MODEL_DIM_RANGE[0] <= model.dim <= MODEL_DIM_RANGE[1] and model.dim % 4 == 0):
        raise ConfigError(
            f"model.dim: must be a multiple of 4 from {MODEL_DIM_RANGE[0]} to "
            f"{MODEL_DIM_RANGE[1]}, got {model.dim} (tiny 8, default 32, full 48)"
        )
    if not 1 <= model.depth <= MODEL_MAX_DEPTH:
        raise ConfigError(f"model.depth: must be from 1 to {MODEL_MAX_DEPTH}, got {model.depth}")
    if model.fft_filter not in FFT_FILTERS:
        raise ConfigError(
            f"model.fft_filter: {model.fft_filter!r} is not one of {', '.join(FFT_FILTERS)}"
        )

    train = _build(TrainConfig, raw.get("train", {}), "train.")
    for key in ("epochs", "batch_size", "lr"):
        _positive(getattr(train, key), f"train.{key}")
    if train.device not in DEVICES:
        raise ConfigError(f"train.device: {train.device!r} is not one of {', '.join(DEVICES)}")
    if train.num_workers < 0 or train.warmup_epochs < 0 or train.patience < 0:
        raise ConfigError("train.num_workers, train.warmup_epochs and train.patience must be >= 0")
    _non_negative(train.weight_decay, "train.weight_decay")
    _non_negative(train.seed, "train.seed")
    if train.supervision not in SUPERVISIONS:
        raise ConfigError(
            f"train.supervision: {train.supervision!r} is not one of {', '.join(SUPERVISIONS)}"
        )
    if train.prior not in PRIORS:
        raise ConfigError(f"train.prior: {train.prior!r} is not one of {', '.join(PRIORS)}")
    train = dataclasses.replace(train, coarse_factors=_coarse_factors(train.coarse_factors, grid))

    loss = _build(LossConfig, raw.get("loss", {}), "loss.")
    for f in dataclasses.fields(LossConfig):
        if getattr(loss, f.name) < 0:
            raise ConfigError(f"loss.{f.name}: must be >= 0")
    if not 0 < loss.high_quantile < 1:
        raise ConfigError("loss.high_quantile: must be between 0 and 1")

    mosaic = _build(MosaicConfig, raw.get("mosaic", {}), "mosaic.")
    if not 0 <= mosaic.overlap < grid.tile_size:
        raise ConfigError(f"mosaic.overlap: must be in [0, tile_size={grid.tile_size})")
    _positive(mosaic.batch_size, "mosaic.batch_size")

    evaluate = _build(EvaluateConfig, raw.get("evaluate", {}), "evaluate.")
    if not isinstance(evaluate.dasymetric, list | tuple) or not all(
        isinstance(n, str) for n in evaluate.dasymetric
    ):
        raise ConfigError("evaluate.dasymetric: expected a list of aux band names")
    unknown = [n for n in evaluate.dasymetric if n not in names]
    if unknown:
        raise ConfigError(f"evaluate.dasymetric: {unknown[0]!r} is not an aux band name")
    if evaluate.split not in ("train", "val", "test"):
        raise ConfigError("evaluate.split: must be train, val or test")
    evaluate = dataclasses.replace(evaluate, dasymetric=tuple(evaluate.dasymetric))
    _positive(evaluate.forest_pixels, "evaluate.forest_pixels")

    config = PipelineConfig(
        path=path if path is not None else base / DEFAULT_CONFIG_NAME,
        workdir=workdir,
        years=years,
        grid=grid,
        target=target,
        aux=aux,
        coarse=coarse,
        target_years=target_years,
        split=split,
        model=model,
        train=train,
        loss=loss,
        mosaic=mosaic,
        evaluate=evaluate,
        raw=raw,
    )
    config.supervision_choice()  # a supervision that cannot train is refused here, once
    if check_files:
        config.check_files()
    return config


def _target(
    raw: dict[str, Any], base: Path, years: tuple[int, ...]
) -> tuple[SourceConfig | None, tuple[int, ...]]:
    """The optional ``[target]`` table and the years that have a target (``target.years``)."""
    if "target" not in raw:
        return None, ()
    table = raw["target"]
    if not isinstance(table, dict):
        raise ConfigError("target: expected a table")
    target_years = years
    if "years" in table:
        target_years = parse_years(table["years"], "target.years")
        outside = [y for y in target_years if y not in years]
        if outside:
            raise ConfigError(
                f"target.years: {outside[0]} is not in years {_span(years)}; list only years "
                "the pipeline tiles"
            )
    rest = {k: v for k, v in table.items() if k != "years"}
    try:
        target = _source(rest, base, "target.", name="target")
    except ConfigError as err:
        if "unknown key" in str(err):  # name the years key among the allowed ones
            raise ConfigError(f"{err}, years") from None
        raise
    if target.kind != "extensive":
        raise ConfigError("target.kind: emissions must be 'extensive' (totals kept when resampled)")
    return target, target_years


def _coarse_factors(value: object, grid: GridConfig) -> tuple[int, ...]:
    """``train.coarse_factors``: integers >= 2 whose coarse cells (k * scale) tile the tiles."""
    key = "train.coarse_factors"
    if not (
        isinstance(value, list | tuple)
        and value
        and all(isinstance(k, int) and not isinstance(k, bool) for k in value)
    ):
        raise ConfigError(
            f"{key}: expected a non-empty list of integers like [2, 4], got {value!r}"
        )
    factors = tuple(sorted(set(value)))
    if factors[0] < 2:
        raise ConfigError(
            f"{key}: each factor must be >= 2 (1 is the real product), got {factors[0]}"
        )
    for k in factors:
        if grid.tile_size % (k * grid.scale):
            raise ConfigError(
                f"{key}: {k} x grid.scale {grid.scale} = {k * grid.scale} px does not divide "
                f"grid.tile_size {grid.tile_size}; use factors whose cells tile a tile"
            )
    return factors


def select_years(config: PipelineConfig, years: Sequence[int] | None = None) -> tuple[int, ...]:
    """The years a stage works on: ``years`` (each one of the config's), or all of them.

    Raises:
        ParameterError: A year is not among the config's ``years``.
    """
    if years is None:
        return config.years
    chosen = tuple(sorted({int(y) for y in years}))
    outside = [y for y in chosen if y not in config.years]
    if outside:
        raise ParameterError(
            f"{outside[0]} is not in the config's years {config.years[0]}-{config.years[-1]}; "
            f"add it to 'years' in {config.path.name}",
            param="years",
        )
    return chosen
