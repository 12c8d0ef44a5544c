"""Choosing the torch device: one rule for training, mosaicking and benchmarks."""

from __future__ import annotations

import torch

from carbongeo.config import DEVICES
from carbongeo.errors import CarbongeoError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error.

    Raises:
        CarbongeoError: ``cuda`` was asked for but is not available, or the name is unknown.
    """
    if name not in DEVICES:
        raise CarbongeoError(f"--device: {name!r} is not one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise CarbongeoError(
            "--device cuda: no CUDA GPU is available to PyTorch; use --device cpu (or auto)"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
