"""What ``carbongeo bench`` measures: the settings, their defaults and their checks.

Also the scenes' fixed geometry, which the settings are checked against. Light: imports nothing
heavy (see :mod:`carbongeo.bench`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from carbongeo.config import DEVICES
from carbongeo.errors import ConfigError

STAGES = ("tile", "train", "mosaic")
PREDICTORS = ("model", "fast")

# The scenes' fixed geometry.
TILE = 128
SCALE = 8
BANDS = ("ntl", "pop", "road", "ndvi", "built", "lst", "elev", "water", "lights2")
TRAIN_YEARS = (2019, 2020, 2021)
# The year of the one-year tile and mosaic scenes.
SCENE_YEAR = 2020


@dataclass(frozen=True)
class BenchSettings:
    """What :func:`~carbongeo.bench.run_bench` measures.

    Attributes:
        tile_sizes: Sides in pixels of the tile scenes.
        mosaic_sizes: Sides in pixels of the mosaic scenes.
        train_tiles: Tiles per year of the training cubes.
        train_steps: Timed training steps per model (after one warm-up step).
        train_batch: Batch size of the loader and of the training step.
        loader_workers: DataLoader worker counts to measure.
        models: ``(name, dim, depth)`` of the models whose training step is measured.
        mosaic_model: ``(dim, depth)`` of the untrained network the mosaic runs.
        mosaic_predictor: ``model`` (the network) or ``fast`` (a numpy stand-in that measures the
            streaming machinery alone).
        device: ``auto``, ``cpu`` or ``cuda``, for the training step and the mosaic.
        tile_workers: ``workers`` of :func:`~carbongeo.stages.tile.tile_years` (default: threads);
            also the threads of the hand-written reproject it is compared with.
        tile_scheduler: ``scheduler`` of :func:`~carbongeo.stages.tile.tile_years`.
        threads: torch intra-op threads of the train workers (default: torch's choice).
        stages: Stages to run, among ``tile``, ``train``, ``mosaic``.
        quick: Informational: the settings came from ``--quick``.
    """

    tile_sizes: tuple[int, ...] = (4096, 16384)
    mosaic_sizes: tuple[int, ...] = (2048, 8192)
    train_tiles: int = 48
    train_steps: int = 3
    train_batch: int = 8
    loader_workers: tuple[int, ...] = (0, 2)
    models: tuple[tuple[str, int, int], ...] = (("demo", 16, 1), ("full", 32, 2))
    mosaic_model: tuple[int, int] = (8, 1)
    mosaic_predictor: str = "model"
    device: str = "auto"
    tile_workers: int | None = None
    tile_scheduler: str | None = None
    threads: int | None = None
    stages: tuple[str, ...] = STAGES
    quick: bool = False


QUICK = BenchSettings(
    tile_sizes=(1024, 2048),
    mosaic_sizes=(256, 512),
    train_tiles=8,
    train_steps=2,
    train_batch=4,
    quick=True,
)
"""``--quick``: small scenes and few steps (about a minute on 2 idle cores)."""


def bench_settings(
    *,
    quick: bool = False,
    tile_sizes: Sequence[int] | None = None,
    mosaic_sizes: Sequence[int] | None = None,
    device: str = "auto",
    **overrides: Any,
) -> BenchSettings:
    """The default (or ``quick``) settings with the given sizes, device and other fields.

    Raises:
        ConfigError: A setting is out of range (see :func:`validate`).
    """
    base = QUICK if quick else BenchSettings()
    if tile_sizes is not None:
        overrides["tile_sizes"] = tuple(int(s) for s in tile_sizes)
    if mosaic_sizes is not None:
        overrides["mosaic_sizes"] = tuple(int(s) for s in mosaic_sizes)
    settings = replace(base, device=device, **overrides)
    validate(settings)
    return settings


def validate(settings: BenchSettings) -> None:
    """Refuse settings that cannot be measured.

    Raises:
        ConfigError: Naming the setting that is out of range.
    """
    unknown = set(settings.stages) - set(STAGES)
    if unknown:
        raise ConfigError(f"stages: unknown {sorted(unknown)}; use {', '.join(STAGES)}")
    for name in ("tile_sizes", "mosaic_sizes"):
        sizes = getattr(settings, name)
        if any(size < TILE for size in sizes):
            raise ConfigError(f"{name}: every size must be >= {TILE} pixels, got {sizes}")
    for name in ("train_tiles", "train_steps", "train_batch"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name}: must be >= 1, got {getattr(settings, name)}")
    if any(w < 0 for w in settings.loader_workers):
        raise ConfigError(f"loader_workers: must be >= 0, got {settings.loader_workers}")
    if settings.tile_workers is not None and settings.tile_workers < 1:
        raise ConfigError(f"tile_workers: must be >= 1, got {settings.tile_workers}")
    if settings.device not in DEVICES:
        raise ConfigError(f"device: {settings.device!r} is not one of {', '.join(DEVICES)}")
    if settings.mosaic_predictor not in PREDICTORS:
        raise ConfigError(
            f"mosaic_predictor: {settings.mosaic_predictor!r} is not one of {', '.join(PREDICTORS)}"
        )


def parse_sizes(text: str | None) -> tuple[int, ...] | None:
    """``"2048,8192"`` -> ``(2048, 8192)``; None stays None.

    Raises:
        ValueError: Not a comma-separated list of integers >= the tile size.
    """
    if text is None:
        return None
    try:
        sizes = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or any(size < TILE for size in sizes):
        raise ValueError(f"expected sizes >= {TILE} pixels, got {text!r}")
    return sizes
