"""The end-to-end demo: synth -> tile -> split -> train -> mosaic -> evaluate -> preview."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carbongeo.config import PipelineConfig, load_config

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
    """Run every stage on a freshly generated synthetic world.

    Args:
        out_dir: Folder for the world (``out_dir/world``) and the run (``out_dir/world/runs``).
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
        echo(f"[{len(seconds) + 1}/7] {name} ...")
        start = time.perf_counter()
        result = func()
        seconds[name] = time.perf_counter() - start
        echo(f"      {name} done in {seconds[name]:.1f} s")
        return result

    config_path = stage("synth", lambda: generate_world(out_dir / "world", seed=seed, size=size))
    config: PipelineConfig = load_config(config_path)  # the tile stage checks the files
    stage("tile", lambda: tile_years(config, config.years, progress=progress))
    stage("split", lambda: split_tiles(config))
    # A demo is a fresh run: never resume an older run's checkpoints in the same folder.
    stage(
        "train",
        lambda: train(config, epochs=epochs, device=device, resume=False, progress=progress),
    )
    mosaics = stage(
        "mosaic",
        lambda: mosaic_years(
            config, config.years, device=device, overwrite=True, progress=progress
        ),
    )
    report = stage("evaluate", lambda: evaluate(config, progress=progress))
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


def _preview_year(config: PipelineConfig, report: Any) -> int:
    """The held-out year when there is one, else the last year."""
    holdout = getattr(report, "holdout_year", None)
    return int(holdout) if holdout else config.years[-1]
