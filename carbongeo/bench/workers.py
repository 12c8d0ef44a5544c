"""The measurements: one :class:`~carbongeo.bench.harness.Worker` each, with typed parameters.

Each function runs in its own worker process and imports the heavy modules it needs itself;
this module's top level stays light, because the parent imports it for the parameter types.

* ``read``: a raw rasterio read of every source of a tile scene (the I/O floor of tiling);
* ``reproject``: what a user would write instead of tiling: one ``rasterio.warp.reproject`` per
  source onto the same grid, with tile's resampling for the source's kind (sum for extensive,
  average or bilinear for intensive, mode or nearest for categorical);
* ``tile``: :func:`~carbongeo.stages.tile.tile_years` on the scene;
* ``loader`` / ``step``: DataLoader tiles per second, and training-step tiles per second of a
  model on a batch already in memory;
* ``mosaic``: :func:`~carbongeo.stages.mosaic.mosaic_years` on a mosaic scene;
* ``forward``: the bare network (as the mosaic calls it) over the mosaic's windows and batches,
  on inputs already in memory: no reading, blending or writing;
* ``info`` and the ``prepare_*`` workers: the device, and writing the scenes.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carbongeo.bench.harness import Worker
from carbongeo.bench.settings import BANDS, SCENE_YEAR, TRAIN_YEARS
from carbongeo.config import DEFAULT_CONFIG_NAME

# Side of a raw-read window.
READ_WINDOW = 1024
# The GDAL block cache tile_years sets; the read and the reproject get the same.


def _config(scene: str) -> Any:
    from carbongeo.config import load_config

    return load_config(Path(scene) / DEFAULT_CONFIG_NAME)


# --------------------------------------------------------------------------- info
@dataclass(frozen=True)
class InfoParams:
    """Which device and torch threads to report."""

    device: str
    threads: int | None


@dataclass(frozen=True)
class InfoResult:
    """torch's version, the resolved device (``cpu``/``cuda``), its name and torch's threads."""

    torch: str
    device: str
    device_name: str
    torch_threads: int


def device_info(params: InfoParams) -> InfoResult:
    """The resolved device and torch's settings in a fresh process."""
    import torch

    from carbongeo.device import resolve_device

    if params.threads:
        torch.set_num_threads(params.threads)
    device = resolve_device(params.device).type
    return InfoResult(
        torch=torch.__version__,
        device=device,
        device_name=torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        torch_threads=torch.get_num_threads(),
    )


# --------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class SceneParams:
    """A scene folder and its side (tile and mosaic scenes) or tiles per year (train cubes)."""

    folder: str
    size: int


@dataclass(frozen=True)
class MosaicSceneParams:
    """A mosaic scene folder, its side and the untrained network's ``dim`` and ``depth``."""

    folder: str
    size: int
    dim: int
    depth: int


@dataclass(frozen=True)
class Prepared:
    """Seconds spent writing a scene (about 0 when a kept one was reused)."""

    seconds: float


def prepare_tile_scene(params: SceneParams) -> Prepared:
    """Write (or keep) a tile scene."""
    from carbongeo.bench.scenes import make_tile_scene

    start = time.perf_counter()
    make_tile_scene(Path(params.folder), params.size)
    return Prepared(time.perf_counter() - start)


def prepare_train_cubes(params: SceneParams) -> Prepared:
    """Write (or keep) the training cubes of ``size`` tiles per year."""
    from carbongeo.bench.scenes import write_train_cubes

    start = time.perf_counter()
    write_train_cubes(Path(params.folder), params.size)
    return Prepared(time.perf_counter() - start)


def prepare_mosaic_scene(params: MosaicSceneParams) -> Prepared:
    """Write (or keep) a mosaic scene."""
    from carbongeo.bench.scenes import make_mosaic_scene

    start = time.perf_counter()
    make_mosaic_scene(Path(params.folder), params.size, params.dim, params.depth)
    return Prepared(time.perf_counter() - start)


# --------------------------------------------------------------------------- tile
@dataclass(frozen=True)
class ReadParams:
    """The tile scene to read."""

    scene: str


@dataclass(frozen=True)
class ReadResult:
    """Seconds of the read, and the sources' uncompressed size (MB) and count."""

    seconds: float
    source_mb: float
    sources: int


def read_sources(params: ReadParams) -> ReadResult:
    """Read every source once in 1024-pixel windows (the I/O floor of tiling)."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from carbongeo.io.sources import GDAL_CACHE_MB

    paths = [src.path_for(SCENE_YEAR) for src in _config(params.scene).sources()]
    total = 0
    start = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        for path in paths:
            with rasterio.open(path) as src:
                total += src.width * src.height * np.dtype(src.dtypes[0]).itemsize
                for row in range(0, src.height, READ_WINDOW):
                    for col in range(0, src.width, READ_WINDOW):
                        src.read(1, window=Window(col, row, READ_WINDOW, READ_WINDOW))
    return ReadResult(time.perf_counter() - start, total / 1e6, len(paths))


@dataclass(frozen=True)
class ReprojectParams:
    """The tile scene, and the warp threads (those of the tile run it is compared with)."""

    scene: str
    threads: int


@dataclass(frozen=True)
class ReprojectResult:
    """Seconds of the warps, the resampling used per source, and the share of grid pixels filled.

    Attributes:
        seconds: Wall time of every ``reproject`` call, reading included.
        resampling: Source name -> GDAL resampling name.
        valid_fraction: Finite pixels of all outputs / their pixel count.
    """

    seconds: float
    resampling: dict[str, str]
    valid_fraction: float


def reproject_sources(params: ReprojectParams) -> ReprojectResult:
    """Warp every source onto the tile grid with ``rasterio.warp.reproject``, one call each.

    The grid and the resampling per source are what tile uses (chosen before the clock starts);
    each output is a float32 array of the whole grid, NaN where the source has no data.
    """
    import numpy as np
    import rasterio
    from rasterio.warp import reproject

    from carbongeo.io.sources import GDAL_CACHE_MB, resampling_for, validate_source
    from carbongeo.stages.tile import build_grid, raster_source

    config = _config(params.scene)
    grid = build_grid(config)
    plans = []
    for src in config.sources():
        info = validate_source(raster_source(config, src, SCENE_YEAR), grid)
        plans.append(
            (src.name, src.path_for(SCENE_YEAR), resampling_for(src.kind, info.pixel_ratio))
        )
    valid = 0
    start = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        for _, path, resampling in plans:
            with rasterio.open(path) as dataset:
                out = np.full((grid.height, grid.width), np.nan, dtype=np.float32)
                reproject(
                    source=rasterio.band(dataset, 1),
                    destination=out,
                    src_nodata=dataset.nodata,
                    dst_transform=grid.transform,
                    dst_crs=grid.crs,
                    dst_nodata=np.nan,
                    resampling=resampling,
                    num_threads=params.threads,
                )
            valid += int(np.count_nonzero(np.isfinite(out)))
            del out
    seconds = time.perf_counter() - start
    return ReprojectResult(
        seconds=seconds,
        resampling={name: resampling.name for name, _, resampling in plans},
        valid_fraction=valid / (len(plans) * grid.height * grid.width),
    )


@dataclass(frozen=True)
class TileParams:
    """The tile scene and the dask settings of ``tile_years``."""

    scene: str
    workers: int | None
    scheduler: str | None


@dataclass(frozen=True)
class TileResult:
    """Seconds of ``tile_years`` and the tiles it wrote."""

    seconds: float
    tiles: int


def tile_scene(params: TileParams) -> TileResult:
    """Tile the scene's year from scratch; the cubes are removed afterwards."""
    from carbongeo.stages.tile import tile_years

    config = _config(params.scene)
    shutil.rmtree(config.tiles_dir, ignore_errors=True)
    start = time.perf_counter()
    index = tile_years(
        config, config.years, progress=False, scheduler=params.scheduler, workers=params.workers
    )
    seconds = time.perf_counter() - start
    shutil.rmtree(config.tiles_dir, ignore_errors=True)
    return TileResult(seconds, len(index.tiles))


# --------------------------------------------------------------------------- train
def _train_data(folder: str, tiles: int) -> Any:
    """The augmented :class:`~carbongeo.training.data.CubeDataset` over the training cubes."""
    from carbongeo.training.data import CubeDataset
    from carbongeo.training.normalization import compute_normalization

    ids = list(range(tiles))
    norm = compute_normalization(Path(folder), ids, TRAIN_YEARS, high_quantile=0.9)
    return CubeDataset(Path(folder), ids, list(TRAIN_YEARS), norm, augment=True)


@dataclass(frozen=True)
class LoaderParams:
    """The training cubes, the batch size and the DataLoader's worker processes."""

    folder: str
    tiles: int
    batch: int
    workers: int


@dataclass(frozen=True)
class LoaderResult:
    """Samples per pass, tiles per second and seconds of the timed pass."""

    samples: int
    tiles_per_s: float
    seconds: float


def loader_rate(params: LoaderParams) -> LoaderResult:
    """Tiles per second of one shuffled pass after a warm-up pass (page cache, worker start)."""
    import torch
    from torch.utils.data import DataLoader

    data = _train_data(params.folder, params.tiles)
    loader = DataLoader(
        data,
        batch_size=params.batch,
        shuffle=True,
        num_workers=params.workers,
        persistent_workers=params.workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    for _ in loader:
        pass
    start = time.perf_counter()
    count = sum(len(b["year"]) for b in loader)
    seconds = time.perf_counter() - start
    return LoaderResult(len(data), count / seconds, seconds)


@dataclass(frozen=True)
class StepParams:
    """The training cubes, the batch, the timed steps, the model, the device and torch threads."""

    folder: str
    tiles: int
    batch: int
    steps: int
    dim: int
    depth: int
    device: str
    threads: int | None


@dataclass(frozen=True)
class StepResult:
    """The model's parameters, training tiles per second, seconds and torch's threads."""

    parameters: int
    tiles_per_s: float
    seconds: float
    torch_threads: int


def training_step(params: StepParams) -> StepResult:
    """Tiles per second of forward, loss, backward, clip and AdamW on a batch in memory."""
    import torch
    from torch.utils.data import DataLoader

    from carbongeo.bench.settings import SCALE
    from carbongeo.models.losses import HybridLoss
    from carbongeo.models.network import DSTCarbonFormer, count_parameters
    from carbongeo.training.setup import select_amp

    if params.threads:
        torch.set_num_threads(params.threads)
    device = torch.device(params.device)
    data = _train_data(params.folder, params.tiles)
    torch.manual_seed(0)
    norm = data.norm
    model = DSTCarbonFormer(
        len(BANDS), SCALE, dim=params.dim, depth=params.depth, value_scale=norm.value_scale
    ).to(device)
    loss_fn = HybridLoss(SCALE, value_scale=norm.value_scale, high_threshold=norm.high_threshold)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp, dtype, _ = select_amp(device)
    first = next(iter(DataLoader(data, batch_size=params.batch)))
    aux, coarse = first["aux"].to(device), first["coarse"].to(device)
    target, mask = first["target"].to(device), first["mask"].to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            pred = model(aux, coarse)
        loss, _ = loss_fn(pred.float(), target, coarse[:, :, 1], mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(params.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return StepResult(
        parameters=count_parameters(model),
        tiles_per_s=params.steps * len(aux) / seconds,
        seconds=seconds,
        torch_threads=torch.get_num_threads(),
    )


# --------------------------------------------------------------------------- mosaic
@dataclass(frozen=True)
class MosaicParams:
    """The mosaic scene, the predictor (``model`` or ``fast``) and the device."""

    scene: str
    predictor: str
    device: str


@dataclass(frozen=True)
class MosaicRun:
    """Windows, seconds (reading, blending and writing included), Mpx/s, worst cell error."""

    windows: int
    seconds: float
    megapixels_per_s: float
    worst_cell_rel_error: float


def fast_predictor(model: Any, device: Any = "cpu") -> Any:
    """A stand-in for the network: each coarse cell spread evenly over its pixels."""
    import numpy as np

    from carbongeo.bench.settings import SCALE

    def predict(aux: Any, coarse: Any, allowed: Any = None) -> Any:
        centre = coarse[:, 0, coarse.shape[2] // 2]
        spread = np.repeat(np.repeat(centre, SCALE, axis=1), SCALE, axis=2)
        return spread / (SCALE * SCALE)

    return predict


def mosaic_scene(params: MosaicParams) -> MosaicRun:
    """Mosaic the scene's year with ``mosaic_years``; the predictions are removed afterwards."""
    import carbongeo.stages.mosaic as mosaic

    if params.predictor == "fast":
        mosaic.torch_predictor = fast_predictor  # type: ignore[assignment]
    config = _config(params.scene)
    (result,) = mosaic.mosaic_years(
        config, [SCENE_YEAR], device=params.device, overwrite=True, progress=False
    )
    shutil.rmtree(config.predictions_dir, ignore_errors=True)
    return MosaicRun(
        windows=result.windows,
        seconds=result.seconds,
        megapixels_per_s=float(result.megapixels_per_s or 0.0),
        worst_cell_rel_error=float(result.worst_cell_rel_error or 0.0),
    )


@dataclass(frozen=True)
class ForwardResult:
    """Windows and batches predicted, seconds, and scene megapixels per second."""

    windows: int
    batches: int
    seconds: float
    megapixels_per_s: float


def network_forward(params: MosaicParams) -> ForwardResult:
    """The mosaic's predictor alone over the same windows, in the same batches.

    The model, device, autocast, windows (``[mosaic] overlap``) and batch size
    (``[mosaic] batch_size``) are those of the mosaic; the inputs are random arrays made once.
    """
    import numpy as np

    from carbongeo.device import resolve_device
    from carbongeo.stages.mosaic import torch_predictor
    from carbongeo.store.checkpoint import load_checkpoint
    from carbongeo.store.tiles import load_index
    from carbongeo.training.setup import model_from_checkpoint

    config = _config(params.scene)
    index = load_index(config.tiles_dir)
    grid = index.grid
    model = model_from_checkpoint(load_checkpoint(config.layout.best_checkpoint))
    if params.predictor == "fast":
        predict = fast_predictor(model)
    else:
        predict = torch_predictor(model, resolve_device(params.device))
    size, s = grid.tile_size, grid.scale
    windows = grid.sliding_windows(size, config.mosaic.overlap)
    batch = config.mosaic.batch_size
    counts = [min(batch, len(windows) - i) for i in range(0, len(windows), batch)]
    rng = np.random.default_rng(0)
    t = model.temporal
    aux = rng.standard_normal((batch, len(index.bands), t, size, size), dtype=np.float32)
    coarse = rng.gamma(2.0, 5.0 * s * s, (batch, 1, t, size // s, size // s)).astype(np.float32)
    start = time.perf_counter()
    for n in counts:
        np.asarray(predict(aux[:n], coarse[:n], None), dtype=np.float32)
    seconds = time.perf_counter() - start
    return ForwardResult(
        windows=len(windows),
        batches=len(counts),
        seconds=seconds,
        megapixels_per_s=grid.height * grid.width / 1e6 / seconds,
    )


INFO = Worker("info", InfoParams, InfoResult, device_info)
PREPARE_TILE = Worker("prepare_tile", SceneParams, Prepared, prepare_tile_scene)
PREPARE_TRAIN = Worker("prepare_train", SceneParams, Prepared, prepare_train_cubes)
PREPARE_MOSAIC = Worker("prepare_mosaic", MosaicSceneParams, Prepared, prepare_mosaic_scene)
READ = Worker("read", ReadParams, ReadResult, read_sources)
REPROJECT = Worker("reproject", ReprojectParams, ReprojectResult, reproject_sources)
TILING = Worker("tile", TileParams, TileResult, tile_scene)
LOADER = Worker("loader", LoaderParams, LoaderResult, loader_rate)
STEP = Worker("step", StepParams, StepResult, training_step)
MOSAIC = Worker("mosaic", MosaicParams, MosaicRun, mosaic_scene)
FORWARD = Worker("forward", MosaicParams, ForwardResult, network_forward)

WORKERS: dict[str, Worker[Any, Any]] = {
    worker.kind: worker
    for worker in (
        INFO,
        PREPARE_TILE,
        PREPARE_TRAIN,
        PREPARE_MOSAIC,
        READ,
        REPROJECT,
        TILING,
        LOADER,
        STEP,
        MOSAIC,
        FORWARD,
    )
}
