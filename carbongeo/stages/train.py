"""``carbongeo train``: fit DSTCarbonFormer on the tile cubes of a pipeline.

One function, :func:`train`, runs single-process or under ``torchrun`` (detected from the
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` environment). It writes under ``<workdir>/checkpoints``:

* ``latest.pt`` after every epoch (and when interrupted with Ctrl-C), from which a later call
  resumes exactly where the run stopped;
* ``best.pt`` whenever the validation MAE improves;
* ``train_log.csv`` with one row per epoch (:data:`carbongeo.training.loop.LOG_COLUMNS`).

What the model learns from is ``train.supervision`` resolved by
:meth:`carbongeo.config.PipelineConfig.supervision_choice`: the fine target, or the coarse
product alone (:mod:`carbongeo.training.coarse`), where validation and early stopping use the
coarse-level MAE.

This module only orders the steps; the machinery is in :mod:`carbongeo.training`: ``setup``
(data, model, loss, optimiser, resuming), ``loop`` (epochs, validation, early stopping,
checkpoints, log), ``distributed`` (process group, all-reduce, samplers) and ``interrupt``
(deferred Ctrl-C). Checkpoints follow the schema of :mod:`carbongeo.store.checkpoint`.

Training: AdamW, a per-step learning rate with linear warm-up over ``warmup_epochs`` then cosine
decay to 1% of ``lr``, gradient clipping, mixed precision on CUDA
(:func:`carbongeo.training.setup.select_amp`), early
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

from dataclasses import dataclass
from pathlib import Path

import torch

from carbongeo.config import PipelineConfig
from carbongeo.device import resolve_device
from carbongeo.errors import ParameterError
from carbongeo.stages.freshness import check_split
from carbongeo.stages.freshness import check_tiles as check_fresh_tiles
from carbongeo.store.checkpoint import TrainedSplit
from carbongeo.store.split import load_split
from carbongeo.store.tiles import load_index
from carbongeo.training.distributed import DistContext, init_distributed, process_device, shutdown
from carbongeo.training.loop import Trainer, TrainFiles
from carbongeo.training.prior import cache_forest_values, fit_forest_prior, fit_prior
from carbongeo.training.setup import (
    build_datasets,
    build_parts,
    check_tiles,
    factors_of,
    load_resumable,
    model_kwargs,
    restore,
    seed_everything,
    train_normalization,
    training_years,
    wrap,
)


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
        ParameterError: ``epochs``, ``max_steps_per_epoch`` or ``device`` is invalid
            (:class:`~carbongeo.errors.DeviceUnavailableError`: no CUDA GPU).
        RunFileError: Missing tiles or split, or tiles made with other settings.
        ResumeMismatchError: ``latest.pt`` belongs to another data or model configuration
            or split (a :class:`~carbongeo.errors.CheckpointError`).
    """
    total_epochs = config.train.epochs if epochs is None else epochs
    if total_epochs < 1:
        raise ParameterError(f"must be >= 1, got {total_epochs}", param="epochs")
    if max_steps_per_epoch is not None and max_steps_per_epoch < 1:
        raise ParameterError(
            f"must be >= 1, got {max_steps_per_epoch}", param="max_steps_per_epoch"
        )
    dev = resolve_device(device or config.train.device, "device" if device else "train.device")
    ctx = init_distributed(dev)
    try:
        dev = process_device(dev, ctx)
        return _train(config, total_epochs, dev, ctx, resume, progress, max_steps_per_epoch)
    finally:
        shutdown(ctx)


def _train(
    config: PipelineConfig,
    total_epochs: int,
    device: torch.device,
    ctx: DistContext,
    resume: bool,
    progress: bool,
    max_steps_per_epoch: int | None,
) -> TrainResult:
    """Prepare the run (data, resumed state, model) and train it, in this process."""
    layout = config.layout
    files = TrainFiles(
        layout.checkpoints_dir, layout.latest_checkpoint, layout.best_checkpoint, layout.train_log
    )
    prior_kind = config.prior_kind
    index = load_index(config.tiles_dir)
    check_tiles(index, config)
    check_fresh_tiles(config, index)
    split = load_split(config.tiles_dir)
    check_split(config, split)
    years = training_years(config, split)
    trained_split = TrainedSplit.of(split)
    resumed = load_resumable(files.latest, config, index, trained_split, device) if resume else None
    # Seeded before the normalisation sample and the model's initialisation, in this order.
    seed_everything(config.train.seed)
    norm = train_normalization(config, split, years, resumed)
    datasets = build_datasets(config, split, years, norm)
    forest_fit = None
    if resumed is not None:
        forest_size = resumed.model_config.get("forest")
    elif prior_kind == "forest":
        kwargs = model_kwargs(config, len(index.bands), index.scale, norm)
        forest_fit = fit_forest_prior(kwargs, datasets[0], seed=config.train.seed, device=device)
        forest_size = forest_fit.forest.size
    else:
        forest_size = None
    parts = build_parts(
        config,
        index,
        norm,
        datasets,
        ctx=ctx,
        device=device,
        total_epochs=total_epochs,
        max_steps_per_epoch=max_steps_per_epoch,
        forest=forest_size,
    )
    prior = None
    if resumed is not None:
        restore(parts, resumed, f"delete {files.latest} or train without resuming")
    elif forest_fit is not None:
        assert parts.model.forest is not None
        parts.model.forest.load_state_dict(forest_fit.forest.state_dict())
    elif prior_kind == "fitted":
        prior = fit_prior(
            parts.model,
            parts.loss_fn,
            parts.train_loader.dataset,
            factors=factors_of(config),
            seed=config.train.seed,
            device=device,
        )
    if parts.model.forest is not None:  # the network trains alone; validation scores the blend
        cache_forest_values(parts.model, datasets[1], device)
    wrap(parts, config.train, ctx, device)
    trainer = Trainer(
        config,
        index,
        norm,
        trained_split,
        parts,
        ctx=ctx,
        device=device,
        files=files,
        total_epochs=total_epochs,
        progress=progress,
        resumed=resumed.training if resumed is not None else None,
    )
    if prior is not None:
        trainer.report(prior.describe(index.bands))
    if forest_fit is not None:
        trainer.report(forest_fit.describe())
    epochs_run = trainer.run()
    return TrainResult(files.best, files.latest, epochs_run, trainer.best_metric, files.log)
