"""``carbongeo train``: fit DSTCarbonFormer on the tile cubes of a pipeline.

One function, :func:`train`, runs single-process or under ``torchrun`` (detected from the
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` environment). It writes under ``<workdir>/checkpoints``:

* ``latest.pt`` after every epoch (and when interrupted with Ctrl-C), from which a later call
  resumes exactly where the run stopped;
* ``best.pt`` whenever the validation MAE improves;
* ``train_log.csv`` with one row per epoch (:data:`LOG_COLUMNS`).

Training: AdamW, a per-step learning rate with linear warm-up over ``warmup_epochs`` then cosine
decay to 1% of ``lr``, gradient clipping, mixed precision on CUDA (:func:`select_amp`), early
stopping on the validation MAE in physical units with ``patience`` (0 disables it). Batches whose
loss is not finite are skipped and counted. Validation metrics are pooled over the whole
validation split (:mod:`carbongeo.evaluation.metrics`) and all-reduced across processes.

Reproducibility: every seed derives from ``train.seed``; the sample order and the augmentation of
an epoch are pure functions of ``(seed, epoch)``, and checkpoints carry every random state, so a
resumed run (after a crash at an epoch end or a Ctrl-C anywhere) reaches the same weights as an
uninterrupted one. Ctrl-C is deferred to the next step boundary so the saved state is never taken
in the middle of an update; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from carbongeo.config import PipelineConfig
from carbongeo.device import resolve_device
from carbongeo.errors import CarbongeoError, CheckpointError
from carbongeo.evaluation.metrics import METRIC_NAMES, PooledMetrics
from carbongeo.io.atomic import remove_stale_temps, write_text_atomic
from carbongeo.models.finite import parameters_finite
from carbongeo.models.losses import TERMS, HybridLoss
from carbongeo.models.network import DSTCarbonFormer
from carbongeo.stages.freshness import check_split, check_tiles
from carbongeo.stages.tile import TileIndex, load_index
from carbongeo.store.checkpoint import (
    FORMAT,
    VERSION,
    check_compatible,
    load_checkpoint,
    load_weights,
    plain,
    rng_state,
    save_checkpoint,
    set_rng_state,
    strip_prefixes,
)
from carbongeo.training.data import CubeDataset, model_inputs
from carbongeo.training.divergence import diverged, no_finite_loss
from carbongeo.training.normalization import Normalization, compute_normalization

logger = logging.getLogger(__name__)

TEMPORAL = 3
"""Years per sample: the centre year and one on each side."""

MIN_LR_FACTOR = 0.01
"""The cosine schedule ends at this fraction of ``train.lr``."""

LATEST = "latest.pt"
BEST = "best.pt"
LOG_FILE = "train_log.csv"

LOG_COLUMNS: tuple[str, ...] = (
    "epoch",
    "lr",
    *(f"loss_{name}" for name in TERMS),
    "train_loss",
    "skipped_batches",
    "tiles_per_s",
    "data_tiles_per_s",
    *(f"val_{name}" for name in METRIC_NAMES),
    "seconds",
)
"""Columns of ``train_log.csv``. ``tiles_per_s`` is the training throughput of the epoch;
``data_tiles_per_s`` is tiles divided by the time the loop waited on the DataLoader (much larger
than ``tiles_per_s`` when the loader is not the bottleneck)."""


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        best_path: ``best.pt`` (the weights with the lowest validation MAE).
        latest_path: ``latest.pt`` (the state after the last epoch, for resuming).
        epochs_run: Epochs trained by this call (0 when the run was already complete).
        best_val_mae: The best validation MAE in physical units.
        log_path: ``train_log.csv``.
    """

    best_path: Path
    latest_path: Path
    epochs_run: int
    best_val_mae: float
    log_path: Path


# --------------------------------------------------------------------------- devices and AMP
def select_amp(device: torch.device | str, enabled: bool = True) -> tuple[bool, torch.dtype, bool]:
    """Mixed-precision settings for ``device``: ``(enabled, dtype, use_grad_scaler)``.

    bf16 on CUDA GPUs that support it (no loss scaling needed), fp16 with a GradScaler on older
    GPUs, and full precision on the CPU (or when ``enabled`` is False).
    """
    device = torch.device(device)
    if not enabled or device.type != "cuda" or not torch.cuda.is_available():
        return False, torch.float32, False
    if torch.cuda.is_bf16_supported():
        return True, torch.bfloat16, False
    return True, torch.float16, True


# --------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistContext:
    """The process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files."""
        return self.rank == 0


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group described by the torchrun environment, if any.

    Uses NCCL on CUDA and Gloo on the CPU. A group that already exists is reused (and left for its
    creator to destroy).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if dist.is_initialized():
        return DistContext(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", "0")),
            owns_group=False,
        )
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size
    )
    return DistContext(rank, world_size, local_rank, owns_group=True)


def _all_reduce(tensor: Tensor, ctx: DistContext, op: Any = None) -> Tensor:
    if ctx.distributed:
        dist.all_reduce(tensor, op=op if op is not None else dist.ReduceOp.SUM)
    return tensor


def _barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


# --------------------------------------------------------------------------- sampling
class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` keys so the dataset can augment as a function of the epoch.

    Wraps a :class:`DistributedSampler` (which shards and shuffles by ``seed + epoch``) and can
    start part-way through an epoch to resume after an interruption.
    """

    def __init__(self, inner: DistributedSampler[Any]) -> None:
        self.inner = inner
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` samples."""
        self.epoch = epoch
        self.start = start
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(self.inner):
            if position >= self.start:
                yield int(index), self.epoch

    def __len__(self) -> int:
        return max(len(self.inner) - self.start, 0)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: an exact partition, nothing repeated."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy and Python from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _loader(
    dataset: CubeDataset,
    sampler: Sampler[Any],
    batch_size: int,
    num_workers: int,
    device: torch.device,
    generator: torch.Generator,
) -> DataLoader[dict[str, Any]]:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        worker_init_fn=_seed_worker,
        generator=generator,
        drop_last=False,
    )


# --------------------------------------------------------------------------- interruption
class _DeferredInterrupt(KeyboardInterrupt):
    """Ctrl-C taken at a step boundary: the state is consistent and can be saved."""


class InterruptGuard:
    """Turns the first Ctrl-C into a flag checked at step boundaries; the second stops at once.

    Only installed in the main thread (signal handlers cannot be set elsewhere). Forked DataLoader
    workers inherit the handler, so they keep running until the main process stops them.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------- helpers
def _lr_lambda(steps_per_epoch: int, warmup_epochs: int, epochs: int) -> Any:
    warmup = warmup_epochs * steps_per_epoch
    total = max(epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return MIN_LR_FACTOR + (1 - MIN_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _channels_last(model: nn.Module) -> None:
    """Store 4-D and 5-D weights channels-last (a speed-up for convolutions on GPUs)."""
    for param in model.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)
        elif param.dim() == 5:
            param.data = param.data.contiguous(memory_format=torch.channels_last_3d)


def _check_tiles(index: TileIndex, config: PipelineConfig) -> None:
    if list(index.bands) != config.aux_names:
        raise CarbongeoError(
            f"the tiles have aux bands {list(index.bands)} but the config lists "
            f"{config.aux_names}; rerun: carbongeo tile"
        )
    if (index.scale, index.tile_size) != (config.grid.scale, config.grid.tile_size):
        raise CarbongeoError(
            f"the tiles were cut with scale {index.scale} and tile size {index.tile_size} but the "
            f"config has {config.grid.scale} and {config.grid.tile_size}; rerun: carbongeo tile"
        )


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({key: _format(row.get(key)) for key in LOG_COLUMNS})
    write_text_atomic(path, buffer.getvalue(), fsync=False)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DataLoader[dict[str, Any]],
    device: torch.device,
    norm: Normalization,
    scale: int,
    *,
    amp_dtype: torch.dtype | None = None,
    ctx: DistContext | None = None,
    interrupt: InterruptGuard | None = None,
) -> dict[str, float]:
    """Pooled metrics of ``model`` over ``loader`` in physical units.

    Under a distributed run each process scores its shard and the sums are all-reduced, so every
    process gets the metrics of the whole split.

    Args:
        model: The network (eval mode is set here and training mode is not restored).
        loader: Batches of :class:`~carbongeo.training.data.CubeDataset`.
        device: Where to run.
        norm: Normalisation of the training split (hotspot threshold, SSIM range).
        scale: Fine pixels per coarse cell side.
        amp_dtype: Autocast dtype, or None for full precision.
        ctx: The distributed context.
        interrupt: Checked after each batch in single-process runs.

    Returns:
        The metrics of :meth:`carbongeo.evaluation.metrics.PooledMetrics.compute`.
    """
    ctx = ctx or DistContext()
    model.eval()
    meter = PooledMetrics(scale, norm.hotspot_threshold, norm.hotspot_threshold)
    for batch in loader:
        aux, coarse = model_inputs(batch, device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=bool(amp_dtype)):
            pred = model(aux, coarse)
        centre = coarse[:, :, coarse.shape[2] // 2]
        meter.update(pred.float(), batch["target"].to(device), batch["mask"].to(device), centre)
        if interrupt is not None and interrupt.requested and not ctx.distributed:
            raise _DeferredInterrupt
    sums = _all_reduce(meter.sums.to(device), ctx)
    meter.merge(sums)
    return meter.compute()


def _report(message: str, ctx: DistContext, progress: bool) -> None:
    """A summary line: on stderr next to the progress bars, else to the log (main process)."""
    if not ctx.is_main:
        return
    if progress:
        tqdm.write(message, file=sys.stderr)
    else:
        logger.info(message)


# --------------------------------------------------------------------------- training
@dataclass
class _Progress:
    """Counters of the epoch in progress (saved on interruption)."""

    epoch: int
    step: int = 0
    loss_sums: dict[str, float] = field(default_factory=dict)
    steps_done: int = 0
    skipped: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    wait_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "loss_sums": dict(self.loss_sums),
            "steps_done": self.steps_done,
            "skipped": self.skipped,
            "samples": self.samples,
            "train_seconds": self.train_seconds,
            "wait_seconds": self.wait_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _Progress:
        return cls(**data)


def train(
    config: PipelineConfig,
    *,
    epochs: int | None = None,
    device: str | None = None,
    resume: bool = True,
    progress: bool = True,
    max_steps_per_epoch: int | None = None,
) -> TrainResult:
    """Train the model of ``config`` on its tiles and split; resume from ``latest.pt`` if present.

    Args:
        config: The pipeline; reads ``tiles/index.json``, ``tiles/split.json`` and the cubes, and
            writes ``checkpoints/``.
        epochs: Total epochs of the run (default ``train.epochs``); a resumed run continues up to
            this number.
        device: ``auto``, ``cpu`` or ``cuda``; default ``train.device``. Under torchrun each
            process uses ``cuda:LOCAL_RANK``.
        resume: Continue from ``checkpoints/latest.pt`` when it exists (else start afresh and
            overwrite it).
        progress: Show a progress bar per epoch and a summary line (stderr, main process only).
        max_steps_per_epoch: Cap on the training batches per epoch (quick runs).

    Returns:
        The paths written and the best validation MAE.

    Raises:
        CarbongeoError: Missing tiles or split, inconsistent tiles, an unavailable device.
        CheckpointError: ``latest.pt`` belongs to another data or model configuration.
    """
    total_epochs = config.train.epochs if epochs is None else epochs
    if total_epochs < 1:
        raise CarbongeoError(f"--epochs: must be >= 1, got {total_epochs}")
    if max_steps_per_epoch is not None and max_steps_per_epoch < 1:
        raise CarbongeoError(f"max_steps_per_epoch must be >= 1, got {max_steps_per_epoch}")
    dev = resolve_device(device or config.train.device)
    ctx = init_distributed(dev)
    try:
        if dev.type == "cuda" and ctx.distributed:
            dev = torch.device("cuda", ctx.local_rank)
            torch.cuda.set_device(dev)
        runner = _Trainer(config, total_epochs, dev, ctx, resume, progress, max_steps_per_epoch)
        return runner.run()
    finally:
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class _Trainer:
    """The state of one training call; :meth:`run` does the work."""

    def __init__(
        self,
        config: PipelineConfig,
        total_epochs: int,
        device: torch.device,
        ctx: DistContext,
        resume: bool,
        progress: bool,
        max_steps_per_epoch: int | None,
    ) -> None:
        self.config = config
        self.total_epochs = total_epochs
        self.device = device
        self.ctx = ctx
        self.progress = progress
        self.out_dir = config.checkpoints_dir
        self.latest_path = self.out_dir / LATEST
        self.best_path = self.out_dir / BEST
        self.log_path = self.out_dir / LOG_FILE
        tcfg = config.train
        from carbongeo.stages.split import load_split

        self.index = load_index(config.tiles_dir)
        _check_tiles(self.index, config)
        check_tiles(config, self.index)
        split = load_split(config.tiles_dir)
        check_split(config, split)
        self.years = [y for y in config.years if y != split.holdout_year]
        if not split.train:
            raise CarbongeoError("the split has no train tiles; rerun: carbongeo split")
        if not self.years:
            raise CarbongeoError("no training year is left after the held-out year")
        self.split_ids = {
            "train": [int(i) for i in split.train],
            "val": [int(i) for i in split.val],
            "holdout_year": split.holdout_year,
        }

        state = None
        if resume and self.latest_path.is_file():
            state = load_checkpoint(self.latest_path, map_location=device)
            self._check_resumable(state)
        self.state = state

        seed_everything(tcfg.seed)
        if state is not None:
            self.norm = Normalization.from_dict(state["norm"])
        else:
            self.norm = compute_normalization(
                config.tiles_dir,
                split.train,
                self.years,
                high_quantile=config.loss.high_quantile,
                seed=tcfg.seed,
            )

        series = (config.years[0], config.years[-1])
        train_set = CubeDataset(
            config.tiles_dir,
            split.train,
            self.years,
            self.norm,
            temporal=TEMPORAL,
            augment=True,
            seed=tcfg.seed,
            series=series,
        )
        val_ids = split.val
        if not val_ids:
            logger.warning(
                "the split has no validation tiles; early stopping and best.pt use the train "
                "tiles instead (add val blocks with split.ratios)"
            )
            val_ids = split.train
        val_set = CubeDataset(
            config.tiles_dir,
            val_ids,
            self.years,
            self.norm,
            temporal=TEMPORAL,
            series=series,
        )
        self.generator = torch.Generator()
        self.train_sampler = EpochSampler(
            DistributedSampler(
                train_set,
                num_replicas=ctx.world_size,
                rank=ctx.rank,
                shuffle=True,
                seed=tcfg.seed,
                drop_last=False,
            )
        )
        self.train_loader = _loader(
            train_set,
            self.train_sampler,
            tcfg.batch_size,
            tcfg.num_workers,
            device,
            self.generator,
        )
        self.val_loader = _loader(
            val_set,
            ShardSampler(len(val_set), ctx.rank, ctx.world_size),
            tcfg.batch_size,
            tcfg.num_workers,
            device,
            torch.Generator().manual_seed(tcfg.seed),
        )
        batches = math.ceil(len(self.train_sampler.inner) / tcfg.batch_size)
        self.steps_per_epoch = min(batches, max_steps_per_epoch or batches)

        mcfg = config.model
        self.model = DSTCarbonFormer(
            len(self.index.bands),
            self.index.scale,
            dim=mcfg.dim,
            depth=mcfg.depth,
            temporal=TEMPORAL,
            fft_constraint=mcfg.fft_constraint,
            fft_filter=mcfg.fft_filter,
            mass_constraint=mcfg.mass_constraint,
            value_scale=self.norm.value_scale,
        ).to(device)
        if tcfg.channels_last:
            _channels_last(self.model)
        lcfg = config.loss
        self.loss_fn = HybridLoss(
            self.index.scale,
            value_scale=self.norm.value_scale,
            pixel=lcfg.pixel,
            ssim=lcfg.ssim,
            edge=lcfg.edge,
            consistency=lcfg.consistency,
            tv=lcfg.tv,
            high_weight=lcfg.high_weight,
            high_threshold=self.norm.high_threshold,
        ).to(device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            _lr_lambda(self.steps_per_epoch, tcfg.warmup_epochs, total_epochs),
        )
        self.amp_enabled, self.amp_dtype, use_scaler = select_amp(device, tcfg.amp)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

        self.epoch = 0
        self.best_metric = math.inf
        self.bad_epochs = 0
        self.stopped = False
        self.history: list[dict[str, Any]] = []
        self.partial: _Progress | None = None
        self._step_rng: dict[str, Any] = {}
        if state is not None:
            self._restore(state)

        forward_model: nn.Module = self.model
        if tcfg.compile:
            forward_model = torch.compile(self.model)  # type: ignore[assignment]
        self.eval_model = forward_model
        if ctx.distributed:
            device_ids = [device.index] if device.type == "cuda" else None
            forward_model = DistributedDataParallel(forward_model, device_ids=device_ids)
        self.train_model = forward_model

    # ------------------------------------------------------------------ state
    def _check_resumable(self, state: dict[str, Any]) -> None:
        config = self.config
        if state.get("data_hash") != config.data_hash():
            raise CheckpointError(
                f"{self.latest_path} comes from another data or model configuration; delete it "
                "or train without resuming (--no-resume) to start afresh"
            )
        check_compatible(state, list(self.index.bands), self.index.scale, self.index.tile_size)
        if state.get("split") != self.split_ids:
            raise CheckpointError(
                f"{self.latest_path} was trained on another split (tiles/split.json changed); "
                "delete it or train without resuming (--no-resume) to start afresh"
            )

    def _restore(self, state: dict[str, Any]) -> None:
        load_weights(self.model, state, f"delete {self.latest_path} or use --no-resume")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.best_metric = float(state["best_metric"])
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped = bool(state.get("stopped", False))
        self.history = list(state.get("history", []))
        partial = state.get("partial")
        self.partial = _Progress.from_dict(partial) if partial is not None else None
        set_rng_state(state["rng"])

    def _state(self, rng: dict[str, Any], partial: _Progress | None = None) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model_config": dict(self.model.config),
            "model": strip_prefixes(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "best_metric": self.best_metric,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
            "partial": partial.to_dict() if partial is not None else None,
            "norm": self.norm.to_dict(),
            "config": plain(self.config.raw),
            "data_hash": self.config.data_hash(),
            "bands": list(self.index.bands),
            "scale": self.index.scale,
            "tile_size": self.index.tile_size,
            "split": self.split_ids,
            "rng": rng,
            "history": list(self.history),
        }

    # ------------------------------------------------------------------ loop
    def run(self) -> TrainResult:
        ctx = self.ctx
        if ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.out_dir)  # left by a run killed while saving
        start_epoch = self.epoch
        if self.stopped or self.epoch >= self.total_epochs:
            _report(
                f"training already complete at epoch {self.epoch} (best val MAE "
                f"{self.best_metric:.6g}); nothing to do",
                ctx,
                self.progress,
            )
            return self._result(0)
        with InterruptGuard() as guard:
            while self.epoch < self.total_epochs and not self.stopped:
                self._run_epoch(guard)
        _barrier(ctx)
        if ctx.is_main and not self.best_path.is_file():
            # Validation never produced a finite MAE: keep the last weights as the best ones.
            logger.warning("validation MAE was never finite; best.pt holds the last epoch")
            save_checkpoint(self.best_path, self._state(rng_state()))
        _barrier(ctx)
        return self._result(self.epoch - start_epoch)

    def _result(self, epochs_run: int) -> TrainResult:
        return TrainResult(
            best_path=self.best_path,
            latest_path=self.latest_path,
            epochs_run=epochs_run,
            best_val_mae=self.best_metric,
            log_path=self.log_path,
        )

    def _run_epoch(self, guard: InterruptGuard) -> None:
        ctx = self.ctx
        epoch = self.epoch + 1
        prog = self.partial if self.partial is not None else _Progress(epoch)
        self.partial = None
        self._step_rng = rng_state()
        # prog.train_seconds grows inside _train_steps; only validation is added below.
        trained_before = prog.train_seconds
        started = time.perf_counter()
        try:
            if prog.step < self.steps_per_epoch:
                self._train_steps(prog, guard)
            metrics = validate(
                self.eval_model,
                self.val_loader,
                self.device,
                self.norm,
                self.index.scale,
                amp_dtype=self.amp_dtype if self.amp_enabled else None,
                ctx=ctx,
                interrupt=guard,
            )
        except _DeferredInterrupt:
            if ctx.is_main:
                save_checkpoint(self.latest_path, self._state(self._step_rng, prog))
                logger.warning(
                    "interrupted in epoch %d after %d steps; saved %s (resume by running train "
                    "again)",
                    epoch,
                    prog.step,
                    self.latest_path,
                )
            raise
        seconds = trained_before + time.perf_counter() - started
        self._end_epoch(epoch, prog, metrics, seconds)

    def _train_steps(self, prog: _Progress, guard: InterruptGuard) -> None:
        ctx = self.ctx
        tcfg = self.config.train
        batch_size = tcfg.batch_size
        self.generator.manual_seed(tcfg.seed + prog.epoch)
        self.train_sampler.set_epoch(prog.epoch, start=prog.step * batch_size)
        self.train_model.train()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=prog.step,
            desc=f"epoch {prog.epoch}/{self.total_epochs}",
            unit="batch",
            file=sys.stderr,
            disable=not (self.progress and ctx.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        sums = torch.zeros(len(TERMS) + 1, dtype=torch.float64, device=self.device)
        begun = time.perf_counter()
        waited = time.perf_counter()
        try:
            for batch in self.train_loader:
                now = time.perf_counter()
                prog.wait_seconds += now - waited
                self._step_rng = rng_state()
                done, terms = self._step(batch, guard)
                prog.step += 1
                if done:
                    sums += terms
                    prog.steps_done += 1
                else:
                    prog.skipped += 1
                prog.samples += len(batch["year"]) * ctx.world_size
                bar.update(1)
                if not bar.disable and done:
                    bar.set_postfix(loss=f"{float(terms[0]):.4g}", refresh=False)
                if prog.step >= self.steps_per_epoch:
                    break
                waited = time.perf_counter()
        finally:
            bar.close()
            values = sums.tolist()
            for name, value in zip(("total", *TERMS), values, strict=True):
                prog.loss_sums[name] = prog.loss_sums.get(name, 0.0) + value
            prog.train_seconds += time.perf_counter() - begun
        self._step_rng = rng_state()

    def _step(self, batch: dict[str, Any], guard: InterruptGuard) -> tuple[bool, Tensor]:
        """One optimisation step; returns (applied, [total, *terms]) of the batch."""
        device = self.device
        aux, coarse = model_inputs(batch, device)
        target = batch["target"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_enabled):
            pred = self.train_model(aux, coarse)
        centre = coarse[:, :, coarse.shape[2] // 2]
        loss, terms = self.loss_fn(pred.float(), target, centre, mask)
        # One flag vector per step, all-reduced so every process skips or stops together.
        flags = torch.tensor(
            [0.0 if torch.isfinite(loss) else 1.0, 1.0 if guard.requested else 0.0],
            device=device,
        )
        flags = _all_reduce(flags, self.ctx, dist.ReduceOp.MAX if self.ctx.distributed else None)
        skip, stop = flags.tolist()
        if stop:
            raise _DeferredInterrupt
        self.optimizer.zero_grad(set_to_none=True)
        if skip:
            return False, torch.zeros(len(TERMS) + 1, dtype=torch.float64, device=device)
        clip = self.config.train.grad_clip
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            if clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        if not parameters_finite(self.model):  # never trained on, logged or saved
            raise diverged(self.epoch + 1, float(loss.detach()), self.config.train.lr)
        self.scheduler.step()
        values = torch.stack([loss.detach(), *(terms[name] for name in TERMS)])
        return True, values.double()

    def _end_epoch(
        self, epoch: int, prog: _Progress, metrics: dict[str, float], seconds: float
    ) -> None:
        ctx = self.ctx
        totals = torch.tensor(
            [
                *(prog.loss_sums.get(name, 0.0) for name in ("total", *TERMS)),
                float(prog.steps_done),
                float(prog.skipped),
            ],
            dtype=torch.float64,
            device=self.device,
        )
        totals = _all_reduce(totals, ctx).tolist()
        steps = totals[-2]
        skipped = int(totals[-1])
        if steps == 0 and skipped > 0:
            raise no_finite_loss(epoch, skipped)
        mean = [value / steps if steps > 0 else math.nan for value in totals[: len(TERMS) + 1]]
        row: dict[str, Any] = {
            "epoch": epoch,
            "lr": self.scheduler.get_last_lr()[0],
            "train_loss": mean[0],
            **{f"loss_{name}": value for name, value in zip(TERMS, mean[1:], strict=True)},
            "skipped_batches": skipped,
            "tiles_per_s": prog.samples / prog.train_seconds if prog.train_seconds > 0 else 0.0,
            "data_tiles_per_s": prog.samples / max(prog.wait_seconds, 1e-9),
            **{f"val_{name}": metrics[name] for name in METRIC_NAMES},
            "seconds": seconds,
        }
        self.history.append(row)
        self.epoch = epoch
        mae = metrics["mae"]
        improved = math.isfinite(mae) and mae < self.best_metric
        if improved:
            self.best_metric = mae
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        patience = self.config.train.patience
        if patience > 0 and self.bad_epochs >= patience and epoch < self.total_epochs:
            self.stopped = True
        if skipped and ctx.is_main:
            logger.warning("epoch %d: skipped %d batches with a non-finite loss", epoch, skipped)
        if ctx.is_main:
            state = self._state(rng_state())
            if improved:
                save_checkpoint(self.best_path, state)
            save_checkpoint(self.latest_path, state)
            _write_log(self.log_path, self.history)
        message = (
            f"epoch {epoch}/{self.total_epochs}: train loss {row['train_loss']:.4g}, val MAE "
            f"{mae:.4g} (best {self.best_metric:.4g}), RMSE {metrics['rmse']:.4g}, R2 "
            f"{metrics['r2']:.3f}, {row['tiles_per_s']:.1f} tiles/s"
        )
        if self.stopped:
            message += f"; early stop after {self.bad_epochs} epochs without improvement"
        _report(message, ctx, self.progress)
        _barrier(ctx)
