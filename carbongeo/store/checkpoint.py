"""Checkpoints: a typed schema, safe to load, atomic to write.

In memory a checkpoint is a :class:`Checkpoint`; on disk it is a ``torch.save`` file of the plain
dict of :meth:`Checkpoint.to_dict`, which holds only tensors, dicts, lists, strings, numbers,
booleans and None, so it is always read with ``torch.load(weights_only=True)``: a file that
carries pickled Python objects is refused rather than executed. Keys of the file (layout
``version`` 1):

``format``, ``version``
    ``"carbongeo-checkpoint"`` and the layout version.
``model_config``, ``model``
    ``DSTCarbonFormer`` keyword arguments and its state dict (without ``torch.compile`` or DDP
    prefixes).
``norm``
    :meth:`carbongeo.training.normalization.Normalization.to_dict`.
``bands``, ``scale``, ``tile_size``, ``config``, ``data_hash``
    The data layout the model expects, the pipeline file as parsed and the hash of what
    determines data and model.
``supervision``, ``coarse_factors``
    ``"fine"`` or ``"coarse"`` and, under coarse supervision, the factors by which the product
    was aggregated for training (empty under fine supervision). Files without them (older
    versions) were trained with fine supervision.

A checkpoint written by ``carbongeo train`` also holds the training state (:class:`TrainingState`):

``optimizer``, ``scheduler``, ``scaler``
    Their state dicts (``scaler`` is None without fp16 loss scaling).
``epoch``, ``best_metric``, ``bad_epochs``, ``stopped``, ``partial``
    Completed epochs, best validation MAE, epochs without improvement, whether early stopping
    ended the run, and the progress inside an interrupted epoch (None at an epoch end).
``split``
    The train/val tile ids and held-out year it was trained on.
``rng``
    torch (and CUDA), numpy and Python random states, so a resumed run continues exactly.
``history``
    One dict per epoch: the rows of ``train_log.csv``.

A file without the marker, of a newer layout, or missing a key of the schema is refused with
one :class:`~carbongeo.errors.CheckpointError` line.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from carbongeo.errors import CarbongeoError, CheckpointError, DivergenceError, OutputError
from carbongeo.io.atomic import atomic_path, output_error
from carbongeo.models.finite import non_finite_tensors
from carbongeo.training.normalization import Normalization

if TYPE_CHECKING:
    from carbongeo.config import PipelineConfig
    from carbongeo.models.network import DSTCarbonFormer
    from carbongeo.store.split import TileSplit
    from carbongeo.store.tiles import TileIndex

FORMAT = "carbongeo-checkpoint"
VERSION = 1
_PREFIXES = ("_orig_mod.", "module.")

RngState = dict[str, Any]
"""The random states of :func:`rng_state`, in their ``weights_only``-safe form."""


# --------------------------------------------------------------------------- schema
@dataclass
class EpochProgress:
    """Counters of the epoch in progress (saved when training is interrupted inside it).

    Attributes:
        epoch: The epoch (1-based).
        step: Batches drawn so far (applied or skipped).
        loss_sums: Summed loss terms (``total`` and each term) of the applied steps.
        steps_done: Optimisation steps applied.
        skipped: Batches skipped for a non-finite loss.
        samples: Samples trained on, over all processes.
        train_seconds: Time spent in the training steps.
        wait_seconds: Time spent waiting on the DataLoader.
    """

    epoch: int
    step: int = 0
    loss_sums: dict[str, float] = field(default_factory=dict)
    steps_done: int = 0
    skipped: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    wait_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain values (``weights_only``-safe)."""
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
    def from_dict(cls, data: Mapping[str, Any]) -> EpochProgress:
        """Inverse of :meth:`to_dict`."""
        return cls(
            epoch=_int(data, "epoch"),
            step=_int(data, "step"),
            loss_sums={str(k): float(v) for k, v in _get(data, "loss_sums", dict).items()},
            steps_done=_int(data, "steps_done"),
            skipped=_int(data, "skipped"),
            samples=_int(data, "samples"),
            train_seconds=_float(data, "train_seconds"),
            wait_seconds=_float(data, "wait_seconds"),
        )


@dataclass(frozen=True)
class TrainedSplit:
    """The tiles and held-out year a model was trained on."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    holdout_year: int | None

    @classmethod
    def of(cls, split: TileSplit) -> TrainedSplit:
        """The part of ``tiles/split.json`` that determines training."""
        return cls(
            tuple(int(i) for i in split.train), tuple(int(i) for i in split.val), split.holdout_year
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values (``weights_only``-safe)."""
        return {"train": list(self.train), "val": list(self.val), "holdout_year": self.holdout_year}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainedSplit:
        """Inverse of :meth:`to_dict`."""
        return cls(
            tuple(int(i) for i in _get(data, "train", list)),
            tuple(int(i) for i in _get(data, "val", list)),
            _optional(data, "holdout_year", int),
        )


@dataclass(frozen=True, eq=False)
class TrainingState:
    """What a training run needs to continue exactly where it stopped.

    Attributes:
        epoch: Completed epochs.
        best_metric: The best validation MAE so far (``inf`` before the first finite one).
        bad_epochs: Epochs since the last improvement.
        stopped: Early stopping ended the run.
        optimizer: The optimiser's state dict.
        scheduler: The learning-rate scheduler's state dict.
        scaler: The fp16 GradScaler's state dict, or None without loss scaling.
        split: The split trained on.
        rng: The random states at the point the state was taken.
        history: One row of ``train_log.csv`` per completed epoch.
        partial: Progress inside an interrupted epoch, None at an epoch end.
    """

    epoch: int
    best_metric: float
    bad_epochs: int
    stopped: bool
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    split: TrainedSplit
    rng: RngState
    history: list[dict[str, Any]]
    partial: EpochProgress | None = None

    def to_dict(self) -> dict[str, Any]:
        """The training keys of the file."""
        return {
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "epoch": self.epoch,
            "best_metric": self.best_metric,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
            "partial": self.partial.to_dict() if self.partial is not None else None,
            "split": self.split.to_dict(),
            "rng": self.rng,
            "history": list(self.history),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingState:
        """Inverse of :meth:`to_dict` (other keys of ``data`` are ignored)."""
        return cls(
            epoch=_int(data, "epoch"),
            best_metric=_float(data, "best_metric"),
            bad_epochs=_int(data, "bad_epochs"),
            stopped=_get(data, "stopped", bool),
            optimizer=_get(data, "optimizer", dict),
            scheduler=_get(data, "scheduler", dict),
            scaler=_optional(data, "scaler", dict),
            split=TrainedSplit.from_dict(_get(data, "split", dict)),
            rng=_get(data, "rng", dict),
            history=list(_get(data, "history", list)),
            partial=(
                None
                if data["partial"] is None
                else EpochProgress.from_dict(_get(data, "partial", dict))
            ),
        )


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A trained (or, in tests and benchmarks, untrained) model and what it was made from.

    Attributes:
        model_config: ``DSTCarbonFormer`` keyword arguments.
        weights: The model's state dict, without ``torch.compile`` or DDP prefixes.
        normalization: Input normalisation of the training split.
        bands: The aux bands the model expects, in channel order.
        scale: Fine pixels per coarse cell side.
        tile_size: Tile side in fine pixels.
        config: The pipeline file as parsed (plain values).
        data_hash: :meth:`carbongeo.config.PipelineConfig.data_hash` of that pipeline.
        supervision: ``fine`` or ``coarse``: what the model learnt from.
        coarse_factors: The aggregation factors of coarse supervision (empty under fine).
        training: The state to resume training from; None in an inference-only checkpoint.
    """

    model_config: dict[str, Any]
    weights: dict[str, Tensor]
    normalization: Normalization
    bands: tuple[str, ...]
    scale: int
    tile_size: int
    config: dict[str, Any]
    data_hash: str
    training: TrainingState | None = None
    supervision: str = "fine"
    coarse_factors: tuple[int, ...] = ()

    @classmethod
    def for_inference(
        cls,
        model: DSTCarbonFormer,
        normalization: Normalization,
        config: PipelineConfig,
        *,
        bands: Sequence[str] | None = None,
        tile_size: int | None = None,
    ) -> Checkpoint:
        """The checkpoint of ``model`` without training state, as ``carbongeo mosaic`` reads it.

        Args:
            model: The network; its ``config``, ``scale`` and weights are recorded.
            normalization: The input normalisation to store with it.
            config: The pipeline it belongs to (recorded with its data hash).
            bands: Aux band names; default the pipeline's ``aux`` names.
            tile_size: Tile side; default the pipeline's ``grid.tile_size``.

        Raises:
            CheckpointError: If the number of bands differs from the model's aux channels.
        """
        names = tuple(config.aux_names if bands is None else bands)
        if len(names) != model.aux_channels:
            raise CheckpointError(
                f"the model has {model.aux_channels} aux channels but {len(names)} bands "
                f"{list(names)} were given"
            )
        return cls(
            model_config=dict(model.config),
            weights=strip_prefixes(model.state_dict()),
            normalization=normalization,
            bands=names,
            scale=model.scale,
            tile_size=config.grid.tile_size if tile_size is None else tile_size,
            config=plain(config.recorded_raw()),
            data_hash=config.data_hash(),
            supervision=config.supervision,
            coarse_factors=(
                tuple(config.train.coarse_factors) if config.supervision == "coarse" else ()
            ),
        )

    def with_training(self, training: TrainingState) -> Checkpoint:
        """This checkpoint with ``training`` as its training state."""
        return dataclasses.replace(self, training=training)

    def check_compatible(
        self,
        bands: Sequence[str],
        scale: int,
        tile_size: int,
        aux: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Check that the model fits the data of a configuration (this region or another).

        The aux bands must match by name and order and, when ``aux`` is given, by kind and
        transform; the scale and tile size must match. The normalisation always comes from the
        checkpoint.

        Args:
            bands: The data's aux band names in channel order.
            scale: The data's grid scale.
            tile_size: The data's tile size.
            aux: The data's aux tables (``name``, ``kind``, ``transform``), e.g. ``index.aux``.

        Raises:
            CheckpointError: One line naming the first band or key that differs.
        """
        trained = list(self.bands)
        if list(bands) != trained:
            raise CheckpointError(
                f"aux: the checkpoint was trained with {len(trained)} bands {trained}, this config "
                f"has {len(bands)} {list(bands)}; give the same [[aux]] bands in the same order"
            )
        recorded = {t.get("name"): t for t in self.config.get("aux", []) if isinstance(t, dict)}
        for table in aux or []:
            name = table.get("name")
            if name not in recorded:
                continue
            for key, default in (("kind", "intensive"), ("transform", "none")):
                have, want = recorded[name].get(key, default), table.get(key, default)
                if have != want:
                    raise CheckpointError(
                        f"aux band {name!r}: {key} is {want!r} in this config but the checkpoint "
                        f"was trained with {have!r}"
                    )
        for key, have, want in (
            ("grid.scale", self.scale, scale),
            ("grid.tile_size", self.tile_size, tile_size),
        ):
            if have != want:
                raise CheckpointError(
                    f"{key}: {want} in this config but the checkpoint was trained with {have}"
                )

    def check_fits(self, index: TileIndex) -> None:
        """:meth:`check_compatible` with the bands, aux tables, scale and tile size of tiles.

        Raises:
            CheckpointError: One line naming the first band or key that differs.
        """
        self.check_compatible(list(index.bands), index.scale, index.tile_size, aux=index.aux)

    def load_weights(self, model: torch.nn.Module, fix: str) -> None:
        """Load the weights into ``model``; a mismatch is one CheckpointError line.

        Args:
            model: The freshly built network.
            fix: What the user should do, appended to the message.
        """
        try:
            model.load_state_dict(strip_prefixes(self.weights))
        except RuntimeError as err:
            raise CheckpointError(
                f"checkpoint was written by another version of the model ({_one_line(err)}); {fix}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """The plain dict written to the file (see the module docstring for its keys)."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "model_config": dict(self.model_config),
            "model": strip_prefixes(self.weights),
            "norm": self.normalization.to_dict(),
            "bands": list(self.bands),
            "scale": self.scale,
            "tile_size": self.tile_size,
            "config": plain(self.config),
            "data_hash": self.data_hash,
            "supervision": self.supervision,
            "coarse_factors": list(self.coarse_factors),
        }
        if self.training is not None:
            out.update(self.training.to_dict())
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "checkpoint") -> Checkpoint:
        """Inverse of :meth:`to_dict`; the training state is read when ``optimizer`` is present.

        Args:
            data: The dict read from a file (its ``format`` and ``version`` already checked).
            source: What to call it in errors (the file's path).

        Raises:
            CheckpointError: A key of the schema is missing or holds a value of the wrong type.
        """
        try:
            weights = _get(data, "model", dict)
            if not all(isinstance(v, Tensor) for v in weights.values()):
                raise TypeError("'model' holds values that are not tensors")
            return cls(
                model_config=dict(_get(data, "model_config", dict)),
                weights=weights,
                normalization=Normalization.from_dict(_get(data, "norm", dict)),
                bands=tuple(str(b) for b in _get(data, "bands", list)),
                scale=_int(data, "scale"),
                tile_size=_int(data, "tile_size"),
                config=_get(data, "config", dict),
                data_hash=_get(data, "data_hash", str),
                supervision=str(data.get("supervision", "fine")),
                coarse_factors=tuple(int(k) for k in data.get("coarse_factors", [])),
                training=TrainingState.from_dict(data) if "optimizer" in data else None,
            )
        except KeyError as err:
            raise CheckpointError(
                f"{source}: incomplete carbongeo checkpoint (no {err.args[0]!r}); retrain with: "
                "carbongeo train"
            ) from None
        except (TypeError, ValueError, CarbongeoError) as err:
            raise CheckpointError(
                f"{source}: malformed carbongeo checkpoint ({_one_line(err)}); retrain with: "
                "carbongeo train"
            ) from None


def _get(data: Mapping[str, Any], key: str, kind: type) -> Any:
    """``data[key]``, which must be a ``kind`` (KeyError or TypeError otherwise)."""
    value = data[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise TypeError(f"{key!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


def _optional(data: Mapping[str, Any], key: str, kind: type) -> Any:
    """``data[key]``, which must be None or a ``kind``."""
    return None if data[key] is None else _get(data, key, kind)


def _int(data: Mapping[str, Any], key: str) -> int:
    return int(_get(data, key, int))


def _float(data: Mapping[str, Any], key: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key!r} is {type(value).__name__}, expected a number")
    return float(value)


# --------------------------------------------------------------------------- files
def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a temporary file in the same folder, then
    rename).

    Raises:
        OutputError: The folder cannot be created or the file cannot be written.
    """
    path = Path(path)
    state = checkpoint.to_dict()
    damaged = non_finite_tensors(state.get("model", {}))
    if damaged:
        raise DivergenceError(
            f"cannot save {path}: {len(damaged)} weight tensor(s) are not finite (first: "
            f"{damaged[0]}); the training diverged: lower train.lr and train again"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(path.parent, err) from err
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except OSError as err:
            raise output_error(path, err) from err
        except RuntimeError as err:
            # torch's zip writer reports a failed write (e.g. a full disk) as a RuntimeError.
            reason = str(err).strip().splitlines()[0] if str(err).strip() else "write failed"
            raise OutputError(
                f"cannot write {path}: {reason[:160]} (check that the folder is writable and has "
                "free space)"
            ) from err


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        CheckpointError: The file is missing, not a checkpoint, corrupt, holds pickled Python
            objects, was written by a newer carbongeo, or lacks a key of the schema.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; run: carbongeo train")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # An object the safe unpickler refuses names its class ("Unsupported global: ...");
        # random or damaged bytes fail on an opcode instead and are merely corrupt.
        if "weights only" in str(err).lower() and "unsupported global" in str(err).lower():
            raise CheckpointError(
                f"{path}: refused: the file holds pickled Python objects, which are never loaded "
                "(only checkpoints written by 'carbongeo train' are accepted)"
            ) from None
        raise CheckpointError(f"{path}: not a carbongeo checkpoint or corrupt") from None
    except Exception as err:  # torch raises many types for foreign or truncated files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a carbongeo checkpoint or corrupt ({reason[:120]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a carbongeo checkpoint (no '{FORMAT}' marker); "
            "pass a best.pt or latest.pt written by 'carbongeo train'"
        )
    version = state.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint layout version {version!r} is newer than this carbongeo "
            f"supports ({VERSION}); upgrade carbongeo"
        )
    model = state.get("model")
    damaged = non_finite_tensors(model) if isinstance(model, dict) else []
    if damaged:
        raise CheckpointError(
            f"{path}: {len(damaged)} weight tensor(s) hold NaN or inf (first: {damaged[0]}); the "
            "file is damaged or the training diverged; retrain with: carbongeo train"
        )
    return Checkpoint.from_dict(state, str(path))


# --------------------------------------------------------------------------- plain values
def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove the ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) key prefixes."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


def _one_line(err: BaseException) -> str:
    """The error's message folded onto one line and shortened (state-dict errors are long)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def plain(value: Any) -> Any:
    """``value`` with every container made of dicts, lists, str, int, float, bool and None.

    Other leaves (e.g. TOML dates) become strings, so the result is ``weights_only``-safe.
    """
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def rng_state() -> RngState:
    """The torch, CUDA, numpy and Python random states, as weights_only-safe values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(version), "state": list(internal), "gauss": gauss_next},
    }


def set_rng_state(state: RngState) -> None:
    """Restore the states of :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].cpu().numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))
