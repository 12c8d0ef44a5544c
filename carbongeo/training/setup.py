"""Everything a training run is built from: model, loss, optimiser, data and loaders.

The model is built in one place, :func:`build_model`, from the keyword arguments that a pipeline
file yields (:func:`model_kwargs`) or that a checkpoint recorded (:func:`model_from_checkpoint`),
so training, resuming and ``carbongeo mosaic`` construct the same network the same way.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from carbongeo.config import PipelineConfig, TrainConfig
from carbongeo.errors import CheckpointError, ConfigError, RunFileError
from carbongeo.models.losses import CoarseLevelLoss, HybridLoss
from carbongeo.models.network import DSTCarbonFormer
from carbongeo.store.checkpoint import (
    Checkpoint,
    TrainedSplit,
    load_checkpoint,
    set_rng_state,
)
from carbongeo.store.split import TileSplit
from carbongeo.store.tiles import TileIndex
from carbongeo.training.data import CubeDataset, ProductDataset
from carbongeo.training.distributed import DistContext, EpochSampler, ShardSampler
from carbongeo.training.normalization import (
    Normalization,
    compute_normalization,
    compute_product_normalization,
)

logger = logging.getLogger(__name__)

TEMPORAL = 3
"""Years per sample: the centre year and one on each side."""

MIN_LR_FACTOR = 0.01
"""The cosine schedule ends at this fraction of ``train.lr``."""

_RETRAIN = "retrain with: carbongeo train"


# --------------------------------------------------------------------------- model and loss
def model_kwargs(
    config: PipelineConfig,
    n_bands: int,
    scale: int,
    norm: Normalization,
    forest: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The ``DSTCarbonFormer`` keyword arguments of a pipeline's ``[model]`` table, with the
    size of a forest prior when there is one."""
    mcfg = config.model
    return {
        "aux_channels": n_bands,
        "scale": scale,
        "dim": mcfg.dim,
        "depth": mcfg.depth,
        "temporal": TEMPORAL,
        "fft_constraint": mcfg.fft_constraint,
        "fft_filter": mcfg.fft_filter,
        "mass_constraint": mcfg.mass_constraint,
        "value_scale": norm.value_scale,
        "forest": dict(forest) if forest else None,
    }


def factors_of(config: PipelineConfig) -> tuple[int, ...]:
    """The coarse factors a model of ``config`` is trained with (none under fine supervision)."""
    return config.train.coarse_factors if config.supervision == "coarse" else ()


def build_model(kwargs: Mapping[str, Any]) -> DSTCarbonFormer:
    """The network of ``kwargs`` (from :func:`model_kwargs` or a checkpoint's ``model_config``)."""
    return DSTCarbonFormer(**kwargs)


def model_from_checkpoint(checkpoint: Checkpoint) -> DSTCarbonFormer:
    """Rebuild the model of ``checkpoint`` with its weights, in eval mode on the CPU.

    Raises:
        CheckpointError: If the model configuration or weights do not fit ``DSTCarbonFormer``.
    """
    try:
        model = build_model(checkpoint.model_config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint does not fit this version of the model ({err}); {_RETRAIN}"
        ) from None
    checkpoint.load_weights(model, _RETRAIN)
    model.eval()
    return model


def build_loss(
    config: PipelineConfig, scale: int, norm: Normalization
) -> HybridLoss | CoarseLevelLoss:
    """The hybrid loss of a pipeline's ``[loss]`` table, with the thresholds of ``norm``.

    Under coarse supervision it is that loss at the level of the coarse product's cells
    (:class:`~carbongeo.models.losses.CoarseLevelLoss`).
    """
    lcfg = config.loss
    weights = {
        term: getattr(lcfg, term)
        for term in ("pixel", "ssim", "edge", "consistency", "tv", "high_weight")
    }
    values = {"value_scale": norm.value_scale, "high_threshold": norm.high_threshold}
    if config.supervision == "coarse":
        return CoarseLevelLoss(scale, config.train.coarse_factors, **values, **weights)
    return HybridLoss(scale, **values, **weights)


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


def channels_last(model: nn.Module) -> None:
    """Store 4-D and 5-D weights channels-last (a speed-up for convolutions on GPUs)."""
    for param in model.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)
        elif param.dim() == 5:
            param.data = param.data.contiguous(memory_format=torch.channels_last_3d)


def lr_factor(steps_per_epoch: int, warmup_epochs: int, epochs: int) -> Callable[[int], float]:
    """The learning-rate factor of each step: linear warm-up, then cosine decay to
    :data:`MIN_LR_FACTOR`."""
    warmup = warmup_epochs * steps_per_epoch
    total = max(epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return MIN_LR_FACTOR + (1 - MIN_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# --------------------------------------------------------------------------- data
def check_tiles(index: TileIndex, config: PipelineConfig) -> None:
    """Check that the tiles were cut for this pipeline (bands, scale, tile size)."""
    if list(index.bands) != config.aux_names:
        raise RunFileError(
            f"the tiles have aux bands {list(index.bands)} but the config lists "
            f"{config.aux_names}; rerun: carbongeo tile"
        )
    if (index.scale, index.tile_size) != (config.grid.scale, config.grid.tile_size):
        raise RunFileError(
            f"the tiles were cut with scale {index.scale} and tile size {index.tile_size} but the "
            f"config has {config.grid.scale} and {config.grid.tile_size}; rerun: carbongeo tile"
        )


def training_years(config: PipelineConfig, split: TileSplit) -> list[int]:
    """The years trained on, after checking the split can train.

    All but the held-out one; under fine supervision only those with a target.
    """
    years = [y for y in config.years if y != split.holdout_year]
    if config.supervision == "fine":
        years = [y for y in years if config.has_target(y)]
    if not split.train:
        raise RunFileError("the split has no train tiles; rerun: carbongeo split")
    if not years:
        raise ConfigError(
            "no training year is left after the held-out year", param="split.holdout_year"
        )
    return years


def build_datasets(
    config: PipelineConfig, split: TileSplit, years: list[int], norm: Normalization
) -> tuple[CubeDataset, CubeDataset]:
    """The augmented train dataset and the validation dataset (the train tiles if val is empty).

    :class:`~carbongeo.training.data.ProductDataset` under coarse supervision, which never reads
    a target.
    """
    seed = config.train.seed
    series = (config.years[0], config.years[-1])
    dataset = ProductDataset if config.supervision == "coarse" else CubeDataset
    train_set = dataset(
        config.tiles_dir,
        split.train,
        years,
        norm,
        temporal=TEMPORAL,
        augment=True,
        seed=seed,
        series=series,
        zero_classes=config.zero_classes(),
    )
    val_ids = split.val
    if not val_ids:
        logger.warning(
            "the split has no validation tiles; early stopping and best.pt use the train "
            "tiles instead (add val blocks with split.ratios)"
        )
        val_ids = split.train
    val_set = dataset(
        config.tiles_dir,
        val_ids,
        years,
        norm,
        temporal=TEMPORAL,
        series=series,
        zero_classes=config.zero_classes(),
    )
    return train_set, val_set


def train_normalization(
    config: PipelineConfig, split: TileSplit, years: list[int], resumed: Checkpoint | None
) -> Normalization:
    """The normalisation of a resumed run, else computed from the train tiles of ``years``."""
    if resumed is not None:
        return resumed.normalization
    compute = (
        compute_product_normalization if config.supervision == "coarse" else compute_normalization
    )
    return compute(
        config.tiles_dir,
        split.train,
        years,
        high_quantile=config.loss.high_quantile,
        seed=config.train.seed,
    )


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


def make_loader(
    dataset: CubeDataset,
    sampler: Sampler[Any],
    tcfg: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
) -> DataLoader[dict[str, Any]]:
    """A DataLoader of ``dataset`` in the order of ``sampler``, with seeded workers."""
    return DataLoader(
        dataset,
        batch_size=tcfg.batch_size,
        sampler=sampler,
        num_workers=tcfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=tcfg.num_workers > 0,
        worker_init_fn=_seed_worker,
        generator=generator,
        drop_last=False,
    )


# --------------------------------------------------------------------------- resuming
def load_resumable(
    path: Path,
    config: PipelineConfig,
    index: TileIndex,
    split: TrainedSplit,
    device: torch.device,
) -> Checkpoint | None:
    """The checkpoint at ``path`` to resume from, or None when there is none.

    Raises:
        CheckpointError: The file is not a checkpoint, holds no training state, or comes from
            another data or model configuration or another split.
    """
    if not path.is_file():
        return None
    checkpoint = load_checkpoint(path, map_location=device)
    afresh = "delete it or train without resuming (--no-resume) to start afresh"
    if checkpoint.training is None:
        raise CheckpointError(f"{path} holds no training state; {afresh}")
    if checkpoint.data_hash != config.data_hash():
        raise CheckpointError(f"{path} comes from another data or model configuration; {afresh}")
    checkpoint.check_compatible(list(index.bands), index.scale, index.tile_size)
    supervision = (config.supervision, factors_of(config))
    if (checkpoint.supervision, checkpoint.coarse_factors) != supervision:
        raise CheckpointError(
            f"{path} was trained with {checkpoint.supervision} supervision (coarse factors "
            f"{list(checkpoint.coarse_factors)}), this config asks for {supervision[0]} "
            f"({list(supervision[1])}); {afresh}"
        )
    if checkpoint.training.split != split:
        raise CheckpointError(
            f"{path} was trained on another split (tiles/split.json changed); {afresh}"
        )
    return checkpoint


# --------------------------------------------------------------------------- assembly
@dataclass
class TrainingParts:
    """What the training loop runs: the network, its optimisation and its data.

    Attributes:
        model: The bare network (its state dict has no wrapper prefixes).
        eval_model: ``model``, compiled when ``train.compile`` is set.
        train_model: ``eval_model``, wrapped in DistributedDataParallel in a distributed run.
        loss_fn: The hybrid loss (at the coarse level under coarse supervision).
        optimizer: AdamW over the model's parameters.
        scheduler: The per-step learning-rate schedule.
        scaler: The fp16 GradScaler, or None.
        amp_dtype: The autocast dtype, or None for full precision.
        train_sampler: The sampler of the train loader (set to each epoch by the loop).
        generator: The train loader's generator (reseeded each epoch by the loop).
        train_loader: Batches of the train split.
        val_loader: This process's shard of the validation split.
        steps_per_epoch: Optimisation steps of an epoch.
    """

    model: DSTCarbonFormer
    eval_model: nn.Module
    train_model: nn.Module
    loss_fn: HybridLoss | CoarseLevelLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    train_sampler: EpochSampler
    generator: torch.Generator
    train_loader: DataLoader[dict[str, Any]]
    val_loader: DataLoader[dict[str, Any]]
    steps_per_epoch: int


def build_parts(
    config: PipelineConfig,
    index: TileIndex,
    norm: Normalization,
    datasets: tuple[CubeDataset, CubeDataset],
    *,
    ctx: DistContext,
    device: torch.device,
    total_epochs: int,
    max_steps_per_epoch: int | None,
    forest: Mapping[str, int] | None = None,
) -> TrainingParts:
    """Build the loaders, model, loss and optimisation of a run, not yet wrapped (:func:`wrap`).

    The model's initialisation draws from the torch generator, so a run is reproducible from
    ``train.seed`` when this is called right after :func:`seed_everything` and the normalisation.
    ``forest`` is the size of the model's forest prior (its trees are loaded afterwards).
    """
    tcfg = config.train
    train_set, val_set = datasets
    generator = torch.Generator()
    sampler = EpochSampler.shuffled(train_set, ctx, tcfg.seed)
    train_loader = make_loader(train_set, sampler, tcfg, device, generator)
    val_sampler = ShardSampler(len(val_set), ctx.rank, ctx.world_size)
    val_generator = torch.Generator().manual_seed(tcfg.seed)
    val_loader = make_loader(val_set, val_sampler, tcfg, device, val_generator)
    batches = math.ceil(sampler.epoch_length / tcfg.batch_size)
    steps_per_epoch = min(batches, max_steps_per_epoch or batches)

    kwargs = model_kwargs(config, len(index.bands), index.scale, norm, forest)
    model = build_model(kwargs).to(device)
    if tcfg.channels_last:
        channels_last(model)
    loss_fn = build_loss(config, index.scale, norm).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(steps_per_epoch, tcfg.warmup_epochs, total_epochs)
    )
    amp_enabled, amp_dtype, use_scaler = select_amp(device, tcfg.amp)
    return TrainingParts(
        model=model,
        eval_model=model,
        train_model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda") if use_scaler else None,
        amp_dtype=amp_dtype if amp_enabled else None,
        train_sampler=sampler,
        generator=generator,
        train_loader=train_loader,
        val_loader=val_loader,
        steps_per_epoch=steps_per_epoch,
    )


def restore(parts: TrainingParts, checkpoint: Checkpoint, fix: str) -> None:
    """Load the weights, optimiser, scheduler and scaler states and the random states.

    Args:
        parts: Freshly built parts (before :func:`wrap`).
        checkpoint: A checkpoint with a training state.
        fix: What the user should do when the weights do not fit, appended to the error.
    """
    training = checkpoint.training
    if training is None:
        raise CheckpointError(f"the checkpoint holds no training state; {fix}")
    checkpoint.load_weights(parts.model, fix)
    parts.optimizer.load_state_dict(training.optimizer)
    parts.scheduler.load_state_dict(training.scheduler)
    if parts.scaler is not None and training.scaler is not None:
        parts.scaler.load_state_dict(training.scaler)
    set_rng_state(training.rng)


def wrap(parts: TrainingParts, tcfg: TrainConfig, ctx: DistContext, device: torch.device) -> None:
    """Compile the model if asked, and wrap it for DistributedDataParallel in a distributed run."""
    if tcfg.compile:
        parts.eval_model = torch.compile(parts.model)  # type: ignore[assignment]
    parts.train_model = parts.eval_model
    if ctx.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        parts.train_model = DistributedDataParallel(parts.eval_model, device_ids=device_ids)
