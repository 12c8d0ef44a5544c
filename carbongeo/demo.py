"""The end-to-end demo: synth -> tile -> split -> train -> mosaic -> evaluate -> preview.

The chain runs twice on the same world: once with fine supervision (the model learns from the
target of the training tiles) and once with coarse supervision (it learns from the coarse product
only, as where no fine map exists). Both models are scored beside the baselines on the same
held-out tiles.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carbongeo.config import PipelineConfig, load_config
from carbongeo.errors import ConfigError, RunFileError
from carbongeo.io.atomic import write_text_atomic
from carbongeo.store.split import load_split

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    """Where the demo put its outputs, how long each stage took, and the evaluation."""

    config_path: Path
    workdir: Path
    predictions: list[Path]
    reports: list[Path]
    evaluation: dict[str, Any]
    table: str
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(
    out_dir: Path,
    *,
    size: str = "small",
    seed: int = 0,
    epochs: int | None = None,
    device: str = "auto",
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run every stage on a freshly generated synthetic world, with both supervisions.

    Args:
        out_dir: Folder for the world (``out_dir/world``) and the runs (``out_dir/world/runs``
            with fine supervision, ``out_dir/world/runs-coarse`` with coarse supervision).
        size: Synthetic world size (``tiny``, ``small`` or ``medium``).
        seed: Seed of the world.
        epochs: Override the number of training epochs of the generated config.
        device: Training and inference device (``auto``, ``cpu``, ``cuda``).
        progress: Show progress bars.
        echo: Where stage messages go.

    Returns:
        Paths of the outputs and the evaluation summary.
    """
    from carbongeo.stages.evaluate import evaluate
    from carbongeo.stages.mosaic import mosaic_years
    from carbongeo.stages.preview import preview
    from carbongeo.stages.split import split_tiles
    from carbongeo.stages.tile import tile_years
    from carbongeo.stages.train import train
    from carbongeo.synth import generate_world

    seconds: dict[str, float] = {}

    def stage(name: str, func: Callable[[], Any]) -> Any:
        echo(f"[{len(seconds) + 1}/5] {name} ...")
        start = time.perf_counter()
        result = func()
        seconds[name] = time.perf_counter() - start
        echo(f"      {name} done in {seconds[name]:.1f} s")
        return result

    config_path = stage("synth", lambda: generate_world(out_dir / "world", seed=seed, size=size))
    config: PipelineConfig = load_config(config_path)  # the tile stage checks the files
    coarse_path = write_coarse_config(config_path)
    weak: PipelineConfig = load_config(coarse_path)

    def chain(run: PipelineConfig) -> list[Any]:
        tile_years(run, run.years, progress=progress)
        split_tiles(run)
        # A demo is a fresh run: never resume an older run's checkpoints in the same folder.
        train(run, epochs=epochs, device=device, resume=False, progress=progress)
        return mosaic_years(run, run.years, device=device, overwrite=True, progress=progress)

    mosaics = stage("tile, split, train, mosaic (fine supervision)", lambda: chain(config))
    stage("tile, split, train, mosaic (coarse supervision)", lambda: chain(weak))
    same_tiles = load_split(config.tiles_dir).test == load_split(weak.tiles_dir).test
    if not same_tiles:  # the coarse model is then scored on tiles it may have trained on
        raise RunFileError(
            f"the splits of {config_path.name} and {coarse_path.name} differ; the two models "
            "cannot be compared on the same held-out tiles"
        )
    report = stage(
        "evaluate",
        lambda: evaluate(config, progress=progress, compare={COARSE_MODEL: weak}),
    )
    preview_year = _preview_year(config, report)
    previews = stage("preview", lambda: preview(config, preview_year))
    reports = [config.layout.evaluation_md, config.layout.evaluation_json]
    reports += list(previews) if isinstance(previews, list | tuple) else [previews]
    return DemoResult(
        config_path=config_path,
        workdir=config.workdir,
        predictions=[m.tif_path for m in mosaics],
        reports=reports,
        evaluation=report.to_dict(),
        table=report.markdown_path.read_text(encoding="utf-8"),
        seconds=seconds,
    )


#: The name of the coarse-supervised model in the demo's tables.
COARSE_MODEL = "model, coarse supervision"


def write_coarse_config(config_path: Path) -> Path:
    """``carbongeo-coarse.toml`` beside the world's pipeline file: the same world trained with
    coarse supervision (the target is still declared, for evaluation only) in ``runs-coarse``."""
    text = config_path.read_text(encoding="utf-8")
    if 'workdir = "runs"' not in text or "\n[train]\n" not in text:
        raise ConfigError(f"{config_path}: not a pipeline file written by carbongeo synth")
    text = text.replace('workdir = "runs"', 'workdir = "runs-coarse"', 1)
    text = text.replace("\n[train]\n", '\n[train]\nsupervision = "coarse"\n', 1)
    path = config_path.with_name("carbongeo-coarse.toml")
    write_text_atomic(path, text)
    return path


def _preview_year(config: PipelineConfig, report: Any) -> int:
    """The held-out year when there is one, else the last year."""
    holdout = getattr(report, "holdout_year", None)
    return int(holdout) if holdout else config.years[-1]
