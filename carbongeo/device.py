"""Choosing the torch device: one rule for training, mosaicking and benchmarks."""

from __future__ import annotations

import torch

from carbongeo.config import DEVICES
from carbongeo.errors import DeviceUnavailableError, ParameterError


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error.

    Args:
        name: ``auto``, ``cpu`` or ``cuda``.
        key: The parameter or config key ``name`` comes from, named by the errors.

    Raises:
        ParameterError: The name is unknown.
        DeviceUnavailableError: ``cuda`` was asked for but is not available.
    """
    if name not in DEVICES:
        raise ParameterError(f"{name!r} is not one of {', '.join(DEVICES)}", param=key)
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            "'cuda' was asked for but no CUDA GPU is available to PyTorch; use 'cpu' or 'auto'",
            param=key,
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
