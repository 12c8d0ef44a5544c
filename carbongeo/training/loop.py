"""The training loop: epochs of optimisation steps, validation, early stopping, checkpoints, log.

:class:`Trainer` runs the parts of :mod:`carbongeo.training.setup` epoch by epoch. After every
epoch it validates (:func:`validate`), tracks the best validation MAE for early stopping, saves
``latest.pt`` (and ``best.pt`` on an improvement) and rewrites ``train_log.csv``
(:data:`LOG_COLUMNS`). Batches whose loss is not finite are skipped and counted. A Ctrl-C
(:mod:`carbongeo.training.interrupt`) is taken at the next step boundary: the loop saves the
state with the progress inside the epoch, from which a later run resumes exactly.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from carbongeo.config import PipelineConfig
from carbongeo.evaluation.metrics import VALIDATION_METRICS, PooledMetrics
from carbongeo.io.atomic import remove_stale_temps, write_text_atomic
from carbongeo.models.finite import parameters_finite
from carbongeo.models.losses import TERMS
from carbongeo.store.checkpoint import (
    Checkpoint,
    EpochProgress,
    RngState,
    TrainedSplit,
    TrainingState,
    rng_state,
    save_checkpoint,
)
from carbongeo.store.tiles import TileIndex
from carbongeo.training.coarse import coarse_loss, step_factor, validate_coarse
from carbongeo.training.data import model_allowed, model_forest_values, model_inputs
from carbongeo.training.distributed import DistContext, all_reduce, barrier
from carbongeo.training.divergence import diverged, no_finite_loss
from carbongeo.training.interrupt import DeferredInterrupt, InterruptGuard
from carbongeo.training.normalization import Normalization
from carbongeo.training.setup import TrainingParts

logger = logging.getLogger(__name__)

LOG_COLUMNS: tuple[str, ...] = (
    "epoch",
    "supervision",
    "lr",
    *(f"loss_{name}" for name in TERMS),
    "train_loss",
    "skipped_batches",
    "tiles_per_s",
    "data_tiles_per_s",
    *(f"val_{name}" for name in VALIDATION_METRICS),
    "seconds",
)
"""Columns of ``train_log.csv``. ``tiles_per_s`` is the training throughput of the epoch;
``data_tiles_per_s`` is tiles divided by the time the loop waited on the DataLoader (much larger
than ``tiles_per_s`` when the loader is not the bottleneck). ``supervision`` is ``fine`` or
``coarse``; under coarse supervision the ``val_`` metrics are at the level of the coarse
product's cells (:func:`carbongeo.training.coarse.validate_coarse`)."""


@dataclass(frozen=True)
class TrainFiles:
    """Where a training run writes: its folder, the two checkpoints and the log."""

    folder: Path
    latest: Path
    best: Path
    log: Path


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """Mixed precision in ``amp_dtype`` on ``device``, or full precision when it is None."""
    return torch.autocast(
        device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    )


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
        with autocast(device, amp_dtype):
            pred = model(
                aux,
                coarse,
                allowed=model_allowed(batch, device),
                forest_values=model_forest_values(batch, device),
            )
        centre = coarse[:, :, coarse.shape[2] // 2]
        meter.update(pred.float(), batch["target"].to(device), batch["mask"].to(device), centre)
        if interrupt is not None and interrupt.requested and not ctx.distributed:
            raise DeferredInterrupt
    sums = all_reduce(meter.sums.to(device), ctx)
    meter.merge(sums)
    return meter.compute()


def write_log(path: Path, history: Sequence[dict[str, Any]]) -> None:
    """Write the epoch rows as ``train_log.csv`` (:data:`LOG_COLUMNS`, floats to 6 digits)."""
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


class Trainer:
    """One training run over prepared parts; :meth:`run` trains up to the last epoch.

    Args:
        config: The pipeline (recorded in the checkpoints; ``[train]`` holds the loop settings).
        index: The tile index trained on (bands and tile size recorded in the checkpoints).
        norm: The normalisation of the training split.
        split: The split trained on.
        parts: Model, loss, optimisation and loaders (:func:`carbongeo.training.setup.build_parts`).
        ctx: The distributed context.
        device: This process's device.
        files: Where to write.
        total_epochs: The epoch to train up to.
        progress: Show a progress bar per epoch and summary lines on stderr.
        resumed: The training state to continue from, or None to start at epoch 0.
    """

    def __init__(
        self,
        config: PipelineConfig,
        index: TileIndex,
        norm: Normalization,
        split: TrainedSplit,
        parts: TrainingParts,
        *,
        ctx: DistContext,
        device: torch.device,
        files: TrainFiles,
        total_epochs: int,
        progress: bool,
        resumed: TrainingState | None = None,
    ) -> None:
        self.config = config
        self.index = index
        self.norm = norm
        self.split = split
        self.parts = parts
        self.ctx = ctx
        self.device = device
        self.files = files
        self.total_epochs = total_epochs
        self.progress = progress
        self.epoch = resumed.epoch if resumed else 0
        self.best_metric = resumed.best_metric if resumed else math.inf
        self.bad_epochs = resumed.bad_epochs if resumed else 0
        self.stopped = resumed.stopped if resumed else False
        self.history: list[dict[str, Any]] = list(resumed.history) if resumed else []
        self.partial: EpochProgress | None = resumed.partial if resumed else None
        self._step_rng: RngState = {}
        self.supervision = config.supervision
        self._metric = "val MAE" if self.supervision == "fine" else "val coarse-level MAE"

    # ------------------------------------------------------------------ state
    def checkpoint(self, rng: RngState, partial: EpochProgress | None = None) -> Checkpoint:
        """The model and the full training state, with the random states ``rng``."""
        parts = self.parts
        training = TrainingState(
            epoch=self.epoch,
            best_metric=self.best_metric,
            bad_epochs=self.bad_epochs,
            stopped=self.stopped,
            optimizer=parts.optimizer.state_dict(),
            scheduler=parts.scheduler.state_dict(),
            scaler=parts.scaler.state_dict() if parts.scaler is not None else None,
            split=self.split,
            rng=rng,
            history=list(self.history),
            partial=partial,
        )
        inference = Checkpoint.for_inference(
            parts.model,
            self.norm,
            self.config,
            bands=self.index.bands,
            tile_size=self.index.tile_size,
        )
        return inference.with_training(training)

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        """Train epoch by epoch until the last one or early stopping; return the epochs run."""
        ctx = self.ctx
        if ctx.is_main:
            self.files.folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.files.folder)  # left by a run killed while saving
        start_epoch = self.epoch
        if self.stopped or self.epoch >= self.total_epochs:
            self.report(
                f"training already complete at epoch {self.epoch} (best {self._metric} "
                f"{self.best_metric:.6g}); nothing to do"
            )
            return 0
        with InterruptGuard() as guard:
            while self.epoch < self.total_epochs and not self.stopped:
                self._run_epoch(guard)
        barrier(ctx)
        if ctx.is_main and not self.files.best.is_file():
            # Validation never produced a finite MAE: keep the last weights as the best ones.
            logger.warning("validation MAE was never finite; best.pt holds the last epoch")
            save_checkpoint(self.files.best, self.checkpoint(rng_state()))
        barrier(ctx)
        return self.epoch - start_epoch

    def _run_epoch(self, guard: InterruptGuard) -> None:
        parts = self.parts
        epoch = self.epoch + 1
        prog = self.partial if self.partial is not None else EpochProgress(epoch)
        self.partial = None
        self._step_rng = rng_state()
        # prog.train_seconds grows inside _train_steps; only validation is added below.
        trained_before = prog.train_seconds
        started = time.perf_counter()
        try:
            if prog.step < parts.steps_per_epoch:
                self._train_steps(prog, guard)
            metrics = self._validate(guard)
        except DeferredInterrupt:
            if self.ctx.is_main:
                save_checkpoint(self.files.latest, self.checkpoint(self._step_rng, prog))
                logger.warning(
                    "interrupted in epoch %d after %d steps; saved %s (resume by running train "
                    "again)",
                    epoch,
                    prog.step,
                    self.files.latest,
                )
            raise
        seconds = trained_before + time.perf_counter() - started
        self._end_epoch(epoch, prog, metrics, seconds)

    def _validate(self, guard: InterruptGuard) -> dict[str, float]:
        """The epoch's validation metrics (coarse-level under coarse supervision)."""
        parts = self.parts
        if self.supervision == "coarse":
            return validate_coarse(
                parts.eval_model,
                parts.val_loader,
                self.device,
                self.norm,
                self.index.scale,
                self.config.train.coarse_factors,
                autocast=lambda: autocast(self.device, parts.amp_dtype),
                ctx=self.ctx,
                interrupt=guard,
            )
        return validate(
            parts.eval_model,
            parts.val_loader,
            self.device,
            self.norm,
            self.index.scale,
            amp_dtype=parts.amp_dtype,
            ctx=self.ctx,
            interrupt=guard,
        )

    def _train_steps(self, prog: EpochProgress, guard: InterruptGuard) -> None:
        parts = self.parts
        tcfg = self.config.train
        parts.generator.manual_seed(tcfg.seed + prog.epoch)
        parts.train_sampler.set_epoch(prog.epoch, start=prog.step * tcfg.batch_size)
        parts.train_model.train()
        bar = tqdm(
            total=parts.steps_per_epoch,
            initial=prog.step,
            desc=f"epoch {prog.epoch}/{self.total_epochs}",
            unit="batch",
            file=sys.stderr,
            disable=not (self.progress and self.ctx.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        sums = torch.zeros(len(TERMS) + 1, dtype=torch.float64, device=self.device)
        begun = time.perf_counter()
        waited = time.perf_counter()
        try:
            for batch in parts.train_loader:
                now = time.perf_counter()
                prog.wait_seconds += now - waited
                self._step_rng = rng_state()
                done, terms = self._step(batch, guard, prog)
                prog.step += 1
                if done:
                    sums += terms
                    prog.steps_done += 1
                else:
                    prog.skipped += 1
                prog.samples += len(batch["year"]) * self.ctx.world_size
                bar.update(1)
                if not bar.disable and done:
                    bar.set_postfix(loss=f"{float(terms[0]):.4g}", refresh=False)
                if prog.step >= parts.steps_per_epoch:
                    break
                waited = time.perf_counter()
        finally:
            bar.close()
            for name, value in zip(("total", *TERMS), sums.tolist(), strict=True):
                prog.loss_sums[name] = prog.loss_sums.get(name, 0.0) + value
            prog.train_seconds += time.perf_counter() - begun
        self._step_rng = rng_state()

    def _step(
        self, batch: dict[str, Any], guard: InterruptGuard, prog: EpochProgress
    ) -> tuple[bool, Tensor]:
        """One optimisation step; returns (applied, [total, *terms]) of the batch."""
        parts = self.parts
        device = self.device
        if self.supervision == "coarse":
            tcfg = self.config.train
            factor = step_factor(tcfg.coarse_factors, tcfg.seed, prog.epoch, prog.step)
            loss, terms = coarse_loss(
                parts.train_model,
                parts.loss_fn,  # type: ignore[arg-type]
                batch,
                device,
                factor,
                lambda: autocast(device, parts.amp_dtype),
            )
        else:
            aux, coarse = model_inputs(batch, device)
            target = batch["target"].to(device, non_blocking=True)
            mask = batch["mask"].to(device, non_blocking=True)
            with autocast(device, parts.amp_dtype):
                pred = parts.train_model(
                    aux, coarse, allowed=model_allowed(batch, device), network_only=True
                )
            centre = coarse[:, :, coarse.shape[2] // 2]
            loss, terms = parts.loss_fn(pred.float(), target, centre, mask)
        # One flag vector per step, all-reduced so every process skips or stops together.
        flags = torch.tensor(
            [0.0 if torch.isfinite(loss) else 1.0, 1.0 if guard.requested else 0.0],
            device=device,
        )
        skip, stop = all_reduce(flags, self.ctx, "max").tolist()
        if stop:
            raise DeferredInterrupt
        parts.optimizer.zero_grad(set_to_none=True)
        if skip:
            return False, torch.zeros(len(TERMS) + 1, dtype=torch.float64, device=device)
        self._apply(loss)
        values = torch.stack([loss.detach(), *(terms[name] for name in TERMS)])
        return True, values.double()

    def _apply(self, loss: Tensor) -> None:
        """Back-propagate ``loss``, clip the gradients and step the optimiser and schedule."""
        parts = self.parts
        params = parts.model.parameters()
        clip = self.config.train.grad_clip
        if parts.scaler is not None:
            parts.scaler.scale(loss).backward()
            parts.scaler.unscale_(parts.optimizer)
            if clip > 0:
                nn.utils.clip_grad_norm_(params, clip)
            parts.scaler.step(parts.optimizer)
            parts.scaler.update()
        else:
            loss.backward()
            if clip > 0:
                nn.utils.clip_grad_norm_(params, clip)
            parts.optimizer.step()
        if not parameters_finite(parts.model):  # never trained on, logged or saved
            raise diverged(self.epoch + 1, float(loss.detach()), self.config.train.lr)
        parts.scheduler.step()

    def _end_epoch(
        self, epoch: int, prog: EpochProgress, metrics: dict[str, float], seconds: float
    ) -> None:
        row = self._log_row(epoch, prog, metrics, seconds)
        self.history.append(row)
        self.epoch = epoch
        improved = self._track_best(metrics["mae"])
        if row["skipped_batches"] and self.ctx.is_main:
            logger.warning(
                "epoch %d: skipped %d batches with a non-finite loss", epoch, row["skipped_batches"]
            )
        if self.ctx.is_main:
            state = self.checkpoint(rng_state())
            if improved:
                save_checkpoint(self.files.best, state)
            save_checkpoint(self.files.latest, state)
            write_log(self.files.log, self.history)
        message = (
            f"epoch {epoch}/{self.total_epochs}: train loss {row['train_loss']:.4g}, "
            f"{self._metric} {metrics['mae']:.4g} (best {self.best_metric:.4g}), RMSE "
            f"{metrics['rmse']:.4g}, R2 {metrics['r2']:.3f}, {row['tiles_per_s']:.1f} tiles/s"
        )
        if self.stopped:
            message += f"; early stop after {self.bad_epochs} epochs without improvement"
        self.report(message)
        barrier(self.ctx)

    def _log_row(
        self, epoch: int, prog: EpochProgress, metrics: dict[str, float], seconds: float
    ) -> dict[str, Any]:
        """The ``train_log.csv`` row of an epoch, with the loss sums of every process."""
        totals = torch.tensor(
            [
                *(prog.loss_sums.get(name, 0.0) for name in ("total", *TERMS)),
                float(prog.steps_done),
                float(prog.skipped),
            ],
            dtype=torch.float64,
            device=self.device,
        )
        totals_list = all_reduce(totals, self.ctx).tolist()
        steps = totals_list[-2]
        if steps == 0 and totals_list[-1] > 0:
            raise no_finite_loss(epoch, int(totals_list[-1]))
        mean = [v / steps if steps > 0 else math.nan for v in totals_list[: len(TERMS) + 1]]
        return {
            "epoch": epoch,
            "supervision": self.supervision,
            "lr": self.parts.scheduler.get_last_lr()[0],
            "train_loss": mean[0],
            **{f"loss_{name}": value for name, value in zip(TERMS, mean[1:], strict=True)},
            "skipped_batches": int(totals_list[-1]),
            "tiles_per_s": prog.samples / prog.train_seconds if prog.train_seconds > 0 else 0.0,
            "data_tiles_per_s": prog.samples / max(prog.wait_seconds, 1e-9),
            **{f"val_{name}": metrics[name] for name in VALIDATION_METRICS},
            "seconds": seconds,
        }

    def _track_best(self, mae: float) -> bool:
        """Record the epoch's validation MAE; return whether it improved. Sets early stopping."""
        improved = math.isfinite(mae) and mae < self.best_metric
        if improved:
            self.best_metric = mae
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        patience = self.config.train.patience
        if patience > 0 and self.bad_epochs >= patience and self.epoch < self.total_epochs:
            self.stopped = True
        return improved

    def report(self, message: str) -> None:
        """A summary line: on stderr next to the progress bars, else to the log (main process)."""
        if not self.ctx.is_main:
            return
        if self.progress:
            tqdm.write(message, file=sys.stderr)
        else:
            logger.info(message)
