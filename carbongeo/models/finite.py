"""Non-finite weights and predictions are errors, never silently a uniform map.

The mass constraint shares each coarse cell's mass by the prediction's weights and falls back to
a uniform split where the weights are unusable, NaN included. That keeps a map valid, but it also
turns a diverged or damaged model into uniform allocation without a word. So training checks its
weights after every step, checkpoints are refused when they hold NaN or inf, and the mosaic
watches the network's raw log-ratio (before the constraint) and its output.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


def non_finite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or inf."""
    return [
        name
        for name, value in tensors.items()
        if isinstance(value, Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]


def parameters_finite(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite (one reduction, one device sync)."""
    sums = [p.detach().float().sum() for p in model.parameters()]
    return not sums or bool(torch.isfinite(torch.stack(sums)).all())


# The modules whose outputs add up to DSTCarbonFormer's log-ratio, the raw prediction that the
# mass constraint turns into shares of each coarse cell.
_RAW_OUTPUTS = ("head", "aux_prior")


@contextmanager
def raw_prediction_guard(model: nn.Module) -> Iterator[list[str]]:
    """Record, while the block runs, which raw outputs of ``model`` were not finite.

    Yields a list that names each module (``head``, ``aux_prior`` of a DSTCarbonFormer) whose
    output held NaN or inf during a forward pass in the block; it stays empty for a sound model.
    Models without these modules are not watched.
    """
    seen: list[str] = []
    handles = []
    for name in _RAW_OUTPUTS:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):

            def hook(_: nn.Module, __: Any, output: Tensor, name: str = name) -> None:
                if not bool(torch.isfinite(output).all()):
                    seen.append(name)

            handles.append(module.register_forward_hook(hook))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
