"""Checkpoints: safe to load, atomic to write, self-describing.

A checkpoint is a ``torch.save`` file of a dict that holds only tensors, dicts, lists, strings,
numbers, booleans and None, so it is always read with ``torch.load(weights_only=True)``: a file
that carries pickled Python objects is refused rather than executed. Keys:

``format``, ``version``
    ``"carbongeo-checkpoint"`` and the layout version.
``model_config``, ``model``
    ``DSTCarbonFormer`` keyword arguments and its state dict (without ``torch.compile`` or DDP
    prefixes).
``optimizer``, ``scheduler``, ``scaler``
    Their state dicts (``scaler`` is None without fp16 loss scaling).
``epoch``, ``best_metric``, ``bad_epochs``, ``stopped``, ``partial``
    Completed epochs, best validation MAE, epochs without improvement, whether early stopping
    ended the run, and the progress inside an interrupted epoch (None at an epoch end).
``norm``
    :meth:`carbongeo.training.normalization.Normalization.to_dict`.
``config``, ``data_hash``, ``bands``, ``scale``, ``tile_size``, ``split``
    The pipeline file as parsed, the hash of what determines data and model, the data layout the
    model expects, and the train/val tile ids and held-out year it was trained on.
``rng``
    torch (and CUDA), numpy and Python random states, so a resumed run continues exactly.
``history``
    One dict per epoch: the rows of ``train_log.csv``.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from carbongeo.errors import CheckpointError, DivergenceError, OutputError
from carbongeo.io.atomic import atomic_path, output_error
from carbongeo.models.finite import non_finite_tensors
from carbongeo.training.normalization import Normalization

if TYPE_CHECKING:
    from carbongeo.models.network import DSTCarbonFormer

FORMAT = "carbongeo-checkpoint"
VERSION = 1
_PREFIXES = ("_orig_mod.", "module.")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file in the same folder, then rename).

    Raises:
        OutputError: The folder cannot be created or the file cannot be written.
    """
    path = Path(path)
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        CheckpointError: The file is missing, not a checkpoint, corrupt, holds pickled Python
            objects, or was written by a newer carbongeo.
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
    return state


def strip_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
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


def check_compatible(state: dict[str, Any], bands: list[str], scale: int, tile_size: int) -> None:
    """Check that a checkpoint's model fits the data of a configuration.

    Raises:
        CheckpointError: If the band count, band names, scale or tile size differ.
    """
    have = (list(state.get("bands", [])), state.get("scale"), state.get("tile_size"))
    want = (list(bands), scale, tile_size)
    if have != want:
        raise CheckpointError(
            f"checkpoint was trained with {len(have[0])} bands {have[0]}, scale {have[1]} and "
            f"tile size {have[2]}; this config has {len(want[0])} bands {want[0]}, scale "
            f"{want[1]} and tile size {want[2]} (use a checkpoint trained on this config)"
        )


def model_from_checkpoint(state: dict[str, Any]) -> tuple[DSTCarbonFormer, Normalization]:
    """Rebuild the model (in eval mode, on the CPU) and its normalisation from a checkpoint.

    Raises:
        CheckpointError: If the model configuration or weights do not fit ``DSTCarbonFormer``.
    """
    from carbongeo.models.network import DSTCarbonFormer

    try:
        model = DSTCarbonFormer(**state["model_config"])
        norm = Normalization.from_dict(state["norm"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint does not fit this version of the model ({_one_line(err)}); "
            "retrain with: carbongeo train"
        ) from None
    load_weights(model, state, "retrain with: carbongeo train")
    model.eval()
    return model, norm


def load_weights(model: torch.nn.Module, state: dict[str, Any], fix: str) -> None:
    """Load a checkpoint's weights into ``model``; a mismatch is one CheckpointError line.

    Args:
        model: The freshly built network.
        state: The checkpoint.
        fix: What the user should do, appended to the message.
    """
    try:
        model.load_state_dict(strip_prefixes(state["model"]))
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"checkpoint was written by another version of the model ({_one_line(err)}); {fix}"
        ) from None


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


def rng_state() -> dict[str, Any]:
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


def set_rng_state(state: dict[str, Any]) -> None:
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
