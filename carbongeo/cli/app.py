"""The ``carbongeo`` command line: a thin click layer over the Python API.

Every error is one line on stderr: user errors (:class:`~carbongeo.errors.CarbongeoError`, with
the flag the user typed in place of the library's parameter name), bad option values and usage
mistakes exit with code 2, file-system failures (``OSError``) too; Ctrl-C exits with 130. Shared
options live in :mod:`carbongeo.cli.options`. Heavy modules are imported inside each command so
``--help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from carbongeo import __version__
from carbongeo.cli.options import (
    POSITIVE,
    SCENE_SIZES,
    WORLD_SIZE,
    checkpoint_option,
    config_option,
    configure_logging,
    dask_options,
    device_option,
    flag_for,
    json_option,
    units_option,
    verbosity,
    verbosity_params,
    year_option,
    year_or_years_options,
    years_option,
)
from carbongeo.errors import (
    CarbongeoError,
    ConfigNotFoundError,
    MissingRunFileError,
    ResumeMismatchError,
)

log = logging.getLogger("carbongeo")


def _fail(message: str, exit_code: int = 2) -> NoReturn:
    click.echo(f"carbongeo: error: {message}", err=True)
    sys.exit(exit_code)


def _usage_line(err: click.ClickException) -> str:
    """A click usage error in one line: ``--flag: what is wrong`` or ``what (see --help)``."""
    if isinstance(err, click.BadParameter) and not isinstance(err, click.MissingParameter):
        hint = err.param_hint
        if hint is None and err.param is not None:
            hint = err.param.opts[0] if err.param.opts else err.param.name
        elif isinstance(hint, list | tuple):
            hint = " / ".join(hint)
        return f"{hint}: {err.message}"
    ctx = getattr(err, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return " ".join(err.format_message().split()) + where


def _user_error_line(ctx: click.Context, err: CarbongeoError) -> str:
    """The message of a user error, naming the flag the user typed rather than the parameter."""
    if isinstance(err, ConfigNotFoundError):
        return (
            f"config file not found: {err.path} (pass --config PATH, or run "
            "'carbongeo synth --out DIR' for a ready example)"
        )
    if isinstance(err, ResumeMismatchError):
        return f"{err} (--no-resume)"
    flag = flag_for(ctx, err.param) if err.param else None
    return f"{flag}: {err.message}" if flag else str(err)


class CarbongeoCommand(click.Command):
    """A command that takes ``-v``/``-q`` after its name and reports every error in one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(verbosity_params())

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Run the command line; a usage error (unknown option, bad value) is one line too."""
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # a bare command shows its help
                err.show()
            else:
                click.echo(_usage_line(err), err=True)
            sys.exit(err.exit_code)
        except click.exceptions.Abort:
            click.echo("carbongeo: interrupted", err=True)
            sys.exit(130)

    def invoke(self, ctx: click.Context) -> Any:
        configure_logging(verbosity(ctx))
        try:
            return super().invoke(ctx)
        except CarbongeoError as err:
            _fail(_user_error_line(ctx, err), err.exit_code)
        except OSError as err:
            # A file-system failure no stage turned into a CarbongeoError (a folder that is a
            # file, no permission, disk full): still one line; -vv logs the traceback.
            log.debug("unhandled OSError", exc_info=True)
            where = f"{err.filename}: " if err.filename else ""
            reason = (err.strerror or str(err) or type(err).__name__).strip().splitlines()[0]
            _fail(
                f"{where}{reason} (check that the path is a writable folder or a readable file, "
                "and that the disk has free space)"
            )
        except KeyboardInterrupt:
            click.echo("carbongeo: interrupted", err=True)
            sys.exit(130)


class CarbongeoGroup(click.Group):
    """The ``carbongeo`` group: ``-v``/``-q`` before the command, usage errors in one line."""

    command_class = CarbongeoCommand

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(verbosity_params())

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.ClickException as err:
            _fail(_usage_line(err), err.exit_code)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as err:
            _fail(_usage_line(err), err.exit_code)


def _load(config_path: Path) -> Any:
    from carbongeo.config import load_config

    return load_config(config_path)


def _progress(ctx: click.Context) -> bool:
    return verbosity(ctx) >= 0


@click.group(cls=CarbongeoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="carbongeo")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Downscale coarse carbon-emission rasters to fine, mass-conserving GeoTIFFs.

    The pipeline: synth (optional) -> tile -> split -> train -> mosaic -> export / evaluate /
    preview.
    Every command reads the same pipeline file (--config); see docs/pipeline-file.md.
    -v and -q work before or after the command.
    """
    ctx.ensure_object(dict)


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
    type=WORLD_SIZE,
    default="small",
    show_default=True,
    help="World size: tiny (tests), small (demo, minutes on 2 cores), medium.",
)
@click.option(
    "--target-years",
    default=None,
    metavar="A-B|none",
    help="Give the pipeline file a target only for these years (target.years), or none at all "
    "(coarse supervision). Default: every year.",
)
def synth(out_dir: Path, seed: int, size: str, target_years: str | None) -> None:
    """Write a synthetic world: yearly emissions, 9 aux rasters in mixed CRSs, a coarse product.

    Deterministic from --seed. Ends by printing the path of the ready pipeline file.
    """
    from carbongeo.config import parse_years
    from carbongeo.synth import generate_world

    chosen: tuple[int, ...] | None = None
    if target_years is not None:
        none = target_years.strip().lower() == "none"
        chosen = () if none else parse_years(target_years, "target_years")
    config_path = generate_world(out_dir, seed=seed, size=size, target_years=chosen)
    click.echo(str(config_path))


@main.command()
@config_option
@year_or_years_options("tile")
@dask_options("Default: threads, one per CPU.")
@click.pass_context
def tile(
    ctx: click.Context,
    config_path: Path,
    years: tuple[int, ...] | None,
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
    chosen = select_years(config, years)
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
@json_option("Print machine-readable JSON.")
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
@click.option("--epochs", type=POSITIVE, default=None, help="Override train.epochs.")
@device_option(None, "Where to train; default: train.device of the config")
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

    config = _load(config_path)
    supervision, reason = config.supervision_choice()
    main_process = os.environ.get("RANK", "0") == "0"
    if main_process:
        chose = "auto chose " if config.train.supervision == "auto" else ""
        click.echo(f"supervision: {chose}{supervision}, because {reason}")
    result = train(config, epochs=epochs, device=device, resume=resume, progress=_progress(ctx))
    if main_process:
        level = "coarse-level " if supervision == "coarse" else ""
        click.echo(
            f"trained {result.epochs_run} epoch(s); best {level}validation MAE "
            f"{result.best_val_mae:.4g}; best checkpoint {result.best_path}; log {result.log_path}"
        )


@main.command("mosaic")
@config_option
@year_or_years_options("predict")
@checkpoint_option(
    "Model checkpoint (default: <workdir>/checkpoints/best.pt); one trained on another region "
    "works when the aux bands and the scale match."
)
@click.option(
    "--method",
    type=click.Choice(["model", "learned-dasymetric"]),
    default="model",
    show_default=True,
    help="model: the trained network. learned-dasymetric: a random forest fitted in seconds on "
    "the coarse cells of the training tiles (no network, no GPU, no fine truth), each cell's "
    "total shared by its per-pixel weights.",
)
@click.option(
    "--overlap", type=int, default=None, help="Window overlap in pixels (mosaic.overlap)."
)
@click.option(
    "--batch-size", type=POSITIVE, default=None, help="Windows per batch (mosaic.batch_size)."
)
@device_option("auto", "Where to run the model")
@click.option("--overwrite", is_flag=True, help="Recompute years whose outputs already exist.")
@dask_options("One task per year. Default: in this process, year after year.")
@json_option("Print one JSON record per year.")
@units_option("COGs")
@click.pass_context
def mosaic_command(
    ctx: click.Context,
    config_path: Path,
    years: tuple[int, ...] | None,
    checkpoint: Path | None,
    method: str,
    overlap: int | None,
    batch_size: int | None,
    device: str,
    overwrite: bool,
    scheduler: str | None,
    workers: int | None,
    as_json: bool,
    units: str,
) -> None:
    """Predict every year over overlapping windows into predictions/Pred_<year>.tif and .npy.

    Windows are blended with Hann weights (full weight at scene borders), each coarse cell of
    the output is re-projected to sum to the coarse input, and the GeoTIFF is a Cloud-Optimized
    GeoTIFF on exactly the grid (in --units; the .npy stays per cell). Finished years are
    skipped unless --overwrite. Ends by refreshing the STAC catalog predictions/catalog.json.
    Pixels of a zero class (aux zero_classes, e.g. water) get no emissions.

    With --method learned-dasymetric no network is read: the files are the same kind, with
    the method in their tags, so the forest's map can be compared with the model's.
    """
    from carbongeo.config import select_years
    from carbongeo.stages.mosaic import mosaic_years

    config = _load(config_path)
    results = mosaic_years(
        config,
        select_years(config, years),
        checkpoint=checkpoint,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        overwrite=overwrite,
        progress=_progress(ctx) and not as_json,
        scheduler=scheduler,
        workers=workers,
        units=units,
        method=method,
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


@main.command("export")
@config_option
@years_option("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["netcdf", "zarr"]),
    default="netcdf",
    show_default=True,
    help="netCDF-4 file or Zarr store (Zarr needs: pip install 'carbongeo[zarr]').",
)
@units_option("datacube")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Destination (default: <workdir>/exports/emissions_<years>_<units>.nc or .zarr).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON record.")
@click.pass_context
def export_command(
    ctx: click.Context,
    config_path: Path,
    years: tuple[int, ...] | None,
    fmt: str,
    units: str,
    out: Path | None,
    as_json: bool,
) -> None:
    """Write every predicted year into one CF-1.8 datacube (netCDF or Zarr).

    time with calendar-year bounds, projected x/y with bounds, 2-D lat/lon, a grid_mapping
    variable, the emissions in --units with cell_methods, and cell_area (true m2 per pixel) so
    totals survive any unit. Streamed chunk by chunk; written under a temporary name.
    """
    from carbongeo.config import select_years
    from carbongeo.stages.export import export

    config = _load(config_path)
    chosen = list(select_years(config, years)) if years else None
    result = export(
        config,
        chosen,
        fmt=fmt,  # type: ignore[arg-type]
        units=units,
        out=out,
        progress=_progress(ctx) and not as_json,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        click.echo(
            f"{result.path}: {len(result.years)} year(s) in {result.units} ({result.seconds:.1f} s)"
        )


@main.command("catalog")
@config_option
def catalog_command(config_path: Path) -> None:
    """Rebuild the STAC catalog predictions/catalog.json from the COGs on disk."""
    from carbongeo.outputs.stac import write_catalog

    path = write_catalog(_load(config_path))
    if path is None:
        raise MissingRunFileError("no prediction COG yet; run: carbongeo mosaic")
    click.echo(str(path))


@main.command("evaluate")
@config_option
@years_option("evaluate")
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test", "all"]),
    default=None,
    help="Tiles to evaluate (default: evaluate.split of the config, normally test). all: every "
    "tile of the scene, fair only for a model and baselines that never saw the fine truth.",
)
@checkpoint_option(
    "The checkpoint the predictions were made with, when it is not the workdir's (mosaic "
    "--checkpoint): its model is scored in the coarse-level tables and named in the report."
)
@json_option("Print the full report as JSON.")
@click.pass_context
def evaluate_command(
    ctx: click.Context,
    config_path: Path,
    years: tuple[int, ...] | None,
    split: str | None,
    checkpoint: Path | None,
    as_json: bool,
) -> None:
    """Compare the model's predictions with uniform, bicubic and dasymetric baselines.

    Writes reports/evaluation.md and reports/evaluation.json (MAE, RMSE, R2, log MAE, SSIM,
    PSNR, mass error, hotspot recall/precision, mass on zero-emission areas).
    """
    from carbongeo.config import select_years
    from carbongeo.stages.evaluate import evaluate

    config = _load(config_path)
    chosen = list(select_years(config, years)) if years else None
    report = evaluate(
        config,
        years=chosen,
        split=split,
        checkpoint=checkpoint,
        progress=_progress(ctx) and not as_json,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for section in report.sections:
        click.echo(section.verdict(report.units))
    click.echo(f"reports: {report.markdown_path} {report.json_path}")


@main.command("preview")
@config_option
@year_option("show", required=True)
@click.option("--n-tiles", type=POSITIVE, default=4, show_default=True, help="Tiles to show.")
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
    select_years(config, (year,))
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
    type=WORLD_SIZE,
    default="small",
    show_default=True,
    help="World size: small runs in minutes on 2 CPU cores.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the world.")
@click.option("--epochs", type=POSITIVE, default=None, help="Override the training epochs.")
@device_option("auto", "Where to train and mosaic")
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
    type=SCENE_SIZES,
    default=None,
    help="Mosaic scene sides in pixels, comma-separated.  [default: 2048,8192; --quick: 256,512]",
)
@click.option(
    "--tile-sizes",
    type=SCENE_SIZES,
    default=None,
    help="Tile scene sides in pixels, comma-separated.  [default: 4096,16384; --quick: 1024,2048]",
)
@click.option("--quick", is_flag=True, help="Small scenes and few steps (about a minute).")
@json_option("Print machine-readable JSON, not the table.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the generated scenes here and reuse them (default: a temporary folder, removed).",
)
@device_option("auto", "Device of the training steps and the mosaic")
@click.pass_context
def bench_command(
    ctx: click.Context,
    sizes: tuple[int, ...] | None,
    tile_sizes: tuple[int, ...] | None,
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
    from carbongeo.bench import bench_settings, format_table, run_bench

    settings = bench_settings(quick=quick, tile_sizes=tile_sizes, mosaic_sizes=sizes, device=device)
    echo = (lambda line: click.echo(line, err=True)) if _progress(ctx) else None
    results = run_bench(settings, out=out, echo=echo)
    click.echo(json.dumps(results, indent=2) if as_json else format_table(results))


if __name__ == "__main__":
    main()
