"""The ``carbongeo`` command line: a thin click layer over the Python API.

User errors (:class:`~carbongeo.errors.CarbongeoError`) and file-system failures (``OSError``)
print one line on stderr and exit with code 2; Ctrl-C exits with 130. Heavy modules are imported
inside each command so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from carbongeo import __version__
from carbongeo.cli.quiet import quiet_libraries
from carbongeo.errors import CarbongeoError

log = logging.getLogger("carbongeo")

CONFIG_HELP = "Pipeline file (TOML). Default: carbongeo.toml in the working folder."


class CarbongeoGroup(click.Group):
    """A click group that turns user errors into one line and exit code 2."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Run the command line; a usage error (unknown option, bad value) is one line too."""
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # a bare command shows its help
                err.show()
            else:
                click.echo(usage_error_line(err), err=True)
            sys.exit(err.exit_code)
        except click.exceptions.Abort:
            click.echo("carbongeo: interrupted", err=True)
            sys.exit(130)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CarbongeoError as err:
            click.echo(f"carbongeo: error: {err}", err=True)
            sys.exit(err.exit_code)
        except OSError as err:
            # A file-system failure no stage turned into a CarbongeoError (a folder that is a
            # file, no permission, disk full): still one line; -vv logs the traceback.
            log.debug("unhandled OSError", exc_info=True)
            where = f"{err.filename}: " if err.filename else ""
            reason = (err.strerror or str(err) or type(err).__name__).strip().splitlines()[0]
            click.echo(
                f"carbongeo: error: {where}{reason} (check that the path is a writable folder "
                "or a readable file, and that the disk has free space)",
                err=True,
            )
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("carbongeo: interrupted", err=True)
            sys.exit(130)


def usage_error_line(err: click.ClickException) -> str:
    """``carbongeo: error: <message> (see '<command> --help')`` on one line."""
    message = " ".join(err.format_message().split())
    ctx = getattr(err, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"carbongeo: error: {message}{hint}"


def config_option(func: Callable) -> Callable:
    """The ``--config/-c`` option shared by every pipeline command."""
    return click.option(
        "--config",
        "-c",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=Path("carbongeo.toml"),
        show_default=True,
        help=CONFIG_HELP,
    )(func)


def _load(config_path: Path, *, check_files: bool = False) -> Any:
    from carbongeo.config import load_config

    return load_config(config_path, check_files=check_files)


def _progress(ctx: click.Context) -> bool:
    return ctx.obj.get("verbosity", 0) >= 0


@click.group(cls=CarbongeoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="carbongeo")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bars.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Downscale coarse carbon-emission rasters to fine, mass-conserving GeoTIFFs.

    The pipeline: synth (optional) -> tile -> split -> train -> mosaic -> evaluate / preview.
    Every command reads the same pipeline file (--config); see docs/pipeline-file.md.
    """
    verbosity = -1 if quiet else verbose
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="carbongeo: %(levelname)s: %(message)s")
    quiet_libraries(verbosity)
    ctx.ensure_object(dict)
    ctx.obj["verbosity"] = verbosity


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write the synthetic rasters and carbongeo.toml into.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the world.")
@click.option(
    "--size",
    type=click.Choice(["tiny", "small", "medium"]),
    default="small",
    show_default=True,
    help="World size: tiny (tests), small (demo, minutes on 2 cores), medium.",
)
def synth(out_dir: Path, seed: int, size: str) -> None:
    """Write a synthetic world: yearly emissions, 9 aux rasters in mixed CRSs, a coarse product.

    Deterministic from --seed. Ends by printing the path of the ready pipeline file.
    """
    from carbongeo.synth import generate_world

    config_path = generate_world(out_dir, seed=seed, size=size)
    click.echo(str(config_path))


@main.command()
@config_option
@click.option("--year", type=int, default=None, help="One year to tile.")
@click.option("--years", default=None, help='A range "2014-2023" (default: all years).')
@click.option("--scheduler", default=None, help="dask.distributed scheduler address.")
@click.option("--workers", type=int, default=None, help="Start a local dask cluster of N workers.")
@click.pass_context
def tile(
    ctx: click.Context,
    config_path: Path,
    year: int | None,
    years: str | None,
    scheduler: str | None,
    workers: int | None,
) -> None:
    """Align every source to the grid and cut tiles/X_<year>.npy, Y_<year>.npy, index.json.

    Emissions and counts (kind = extensive) are resampled so totals are kept, intensities are
    averaged, categories take the nearest class. Nodata becomes NaN. Nothing is left half-written.
    """
    from carbongeo.config import select_years
    from carbongeo.stages.tile import tile_years

    config = _load(config_path)
    chosen = select_years(config, year, years)
    config.check_files(chosen)
    index = tile_years(
        config, chosen, progress=_progress(ctx), scheduler=scheduler, workers=workers
    )
    click.echo(
        f"tiled {len(chosen)} year(s) into {config.tiles_dir}: {len(index.tiles)} tiles of "
        f"{index.grid.tile_size} px, {len(index.bands)} aux bands"
    )


@main.command()
@config_option
def split(config_path: Path) -> None:
    """Write tiles/split.json: train/val/test by spatial blocks with a buffer between them."""
    from carbongeo.stages.split import split_tiles

    config = _load(config_path)
    result = split_tiles(config)
    excluded = ", ".join(f"{k} {v}" for k, v in sorted(result.excluded.items())) or "none"
    click.echo(
        f"train {len(result.train)}, val {len(result.val)}, test {len(result.test)} tiles; "
        f"excluded: {excluded}"
    )


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def check(config_path: Path, as_json: bool) -> None:
    """Report per-band statistics, totals before/after alignment, and warnings."""
    from carbongeo.stages.check import check_data

    report = check_data(_load(config_path))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.to_text())


@main.command("train")
@config_option
@click.option("--epochs", type=int, default=None, help="Override train.epochs.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=None,
    help="Where to train (default: train.device of the config; auto = CUDA when present).",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue from checkpoints/latest.pt when it exists.",
)
@click.pass_context
def train_command(
    ctx: click.Context, config_path: Path, epochs: int | None, device: str | None, resume: bool
) -> None:
    """Train DSTCarbonFormer on the tile cubes; writes checkpoints/ and train_log.csv.

    Mixed precision on CUDA, CPU otherwise. Under `torchrun --nproc_per_node N -m carbongeo
    train ...` it runs distributed data parallel (NCCL on GPUs, gloo on CPU).
    """
    import os

    from carbongeo.stages.train import train

    if epochs is not None and epochs <= 0:
        raise click.BadParameter("must be > 0", param_hint="--epochs")
    result = train(
        _load(config_path), epochs=epochs, device=device, resume=resume, progress=_progress(ctx)
    )
    if os.environ.get("RANK", "0") == "0":
        click.echo(
            f"trained {result.epochs_run} epoch(s); best validation MAE {result.best_val_mae:.4g}; "
            f"best checkpoint {result.best_path}; log {result.log_path}"
        )


@main.command("mosaic")
@config_option
@click.option("--year", type=int, default=None, help="One year to predict.")
@click.option("--years", default=None, help='A range "2014-2023" (default: all years).')
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Model checkpoint (default: <workdir>/checkpoints/best.pt).",
)
@click.option(
    "--overlap", type=int, default=None, help="Window overlap in pixels (mosaic.overlap)."
)
@click.option("--batch-size", type=int, default=None, help="Windows per batch (mosaic.batch_size).")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--overwrite", is_flag=True, help="Recompute years whose outputs already exist.")
@click.option("--scheduler", default=None, help="dask.distributed scheduler address.")
@click.option("--workers", type=int, default=None, help="Start a local dask cluster of N workers.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON record per year.")
@click.pass_context
def mosaic_command(
    ctx: click.Context,
    config_path: Path,
    year: int | None,
    years: str | None,
    checkpoint: Path | None,
    overlap: int | None,
    batch_size: int | None,
    device: str,
    overwrite: bool,
    scheduler: str | None,
    workers: int | None,
    as_json: bool,
) -> None:
    """Predict every year over overlapping windows into predictions/Pred_<year>.tif and .npy.

    Windows are blended with Hann weights (full weight at scene borders), each coarse cell of
    the output is re-projected to sum to the coarse input, and the GeoTIFF is a Cloud-Optimized
    GeoTIFF on exactly the grid. Finished years are skipped unless --overwrite.
    """
    from carbongeo.config import select_years
    from carbongeo.stages.mosaic import mosaic_years

    config = _load(config_path)
    results = mosaic_years(
        config,
        select_years(config, year, years),
        checkpoint=checkpoint,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        overwrite=overwrite,
        progress=_progress(ctx) and not as_json,
        scheduler=scheduler,
        workers=workers,
    )
    for r in results:
        if as_json:
            click.echo(json.dumps(r.to_dict()))
        elif r.skipped:
            click.echo(f"{r.year}: {r.tif_path} exists, skipped (use --overwrite to redo)")
        else:
            click.echo(
                f"{r.year}: {r.tif_path} ({r.megapixels_per_s:.2f} Mpx/s, worst coarse-cell "
                f"mass error {r.worst_cell_rel_error:.1e})"
            )


@main.command("evaluate")
@config_option
@click.option("--years", default=None, help='Years to evaluate, e.g. "2020-2023" (default: all).')
@click.option(
    "--split",
    "subset",
    type=click.Choice(["train", "val", "test"]),
    default=None,
    help="Tiles to evaluate (default: evaluate.split of the config, normally test).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.pass_context
def evaluate_command(
    ctx: click.Context, config_path: Path, years: str | None, subset: str | None, as_json: bool
) -> None:
    """Compare the model's predictions with uniform, bicubic and dasymetric baselines.

    Writes reports/evaluation.md and reports/evaluation.json (MAE, RMSE, R2, log MAE, SSIM,
    PSNR, mass error, hotspot recall/precision, mass on zero-emission areas).
    """
    from carbongeo.config import select_years
    from carbongeo.stages.evaluate import evaluate

    config = _load(config_path)
    chosen = list(select_years(config, None, years)) if years else None
    report = evaluate(config, years=chosen, split=subset, progress=_progress(ctx) and not as_json)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for section in report.sections:
        click.echo(section.verdict(report.units))
    click.echo(f"reports: {report.markdown_path} {report.json_path}")


@main.command("preview")
@config_option
@click.option("--year", type=int, required=True, help="Year to show.")
@click.option("--n-tiles", type=int, default=4, show_default=True, help="Sample tiles to show.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: <workdir>/reports).",
)
def preview_command(config_path: Path, year: int, n_tiles: int, out: Path | None) -> None:
    """Plot sample tiles (aux, coarse, truth, prediction, best baseline, errors) and the scene."""
    from carbongeo.config import select_years
    from carbongeo.stages.preview import preview

    config = _load(config_path)
    select_years(config, year, None)
    if n_tiles <= 0:
        raise click.BadParameter("must be > 0", param_hint="--n-tiles")
    for path in preview(config, year, n_tiles=n_tiles, out=out):
        click.echo(str(path))


@main.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Folder for the synthetic world and the run.",
)
@click.option(
    "--size",
    type=click.Choice(["tiny", "small", "medium"]),
    default="small",
    show_default=True,
    help="World size: small runs in minutes on 2 CPU cores.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the world.")
@click.option("--epochs", type=int, default=None, help="Override the training epochs.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.pass_context
def demo_command(
    ctx: click.Context, out_dir: Path, size: str, seed: int, epochs: int | None, device: str
) -> None:
    """Run everything on a synthetic world: synth, tile, split, train, mosaic, evaluate, preview."""
    from carbongeo.demo import run_demo

    result = run_demo(
        out_dir,
        size=size,
        seed=seed,
        epochs=epochs,
        device=device,
        progress=_progress(ctx),
        echo=click.echo,
    )
    click.echo("")
    click.echo(f"pipeline file: {result.config_path}")
    click.echo(f"predictions:   {result.predictions[0].parent} ({len(result.predictions)} COGs)")
    for path in result.reports:
        click.echo(f"report:        {path}")
    click.echo("")
    click.echo(result.table)


@main.command("bench")
@click.option(
    "--sizes",
    default=None,
    help="Mosaic scene sides in pixels, comma-separated.  [default: 2048,8192; --quick: 256,512]",
)
@click.option(
    "--tile-sizes",
    default=None,
    help="Tile scene sides in pixels, comma-separated.  [default: 4096,16384; --quick: 1024,2048]",
)
@click.option("--quick", is_flag=True, help="Small scenes and few steps (about a minute).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON, not the table.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the generated scenes here and reuse them (default: a temporary folder, removed).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Device of the training steps and the mosaic.",
)
@click.pass_context
def bench_command(
    ctx: click.Context,
    sizes: str | None,
    tile_sizes: str | None,
    quick: bool,
    as_json: bool,
    out: Path | None,
    device: str,
) -> None:
    """Measure tile, train and mosaic throughput and peak memory on this machine.

    On synthetic data: tile MB/s next to a raw rasterio read of the same files, DataLoader
    tiles/s next to training-step tiles/s (demo and full model), mosaic megapixels/s; each
    measurement in a fresh process for a clean peak RSS. On 2 idle CPU cores --quick takes under
    a minute and the defaults about 10 minutes (much longer on busy cores; --sizes 2048,4096
    shortens the mosaic part). Progress goes to stderr (-q: none).
    """
    from carbongeo.bench import bench_settings, format_table, parse_sizes, run_bench

    try:
        mosaic_sizes = parse_sizes(sizes)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--sizes") from err
    try:
        tile_scene_sizes = parse_sizes(tile_sizes)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--tile-sizes") from err
    settings = bench_settings(
        quick=quick, tile_sizes=tile_scene_sizes, mosaic_sizes=mosaic_sizes, device=device
    )
    echo = (lambda line: click.echo(line, err=True)) if _progress(ctx) else None
    results = run_bench(settings, out=out, echo=echo)
    click.echo(json.dumps(results, indent=2) if as_json else format_table(results))


if __name__ == "__main__":
    main()
