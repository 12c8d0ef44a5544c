"""The one-line errors of a training run whose numbers stopped being finite.

Training checks its weights after every optimisation step and stops at the first non-finite one,
before anything of that step is logged or saved; it also stops when a whole epoch has no batch
with a finite loss. Each stop is one :class:`~carbongeo.errors.DivergenceError` line that says
what to change.
"""

from __future__ import annotations

from carbongeo.errors import DivergenceError


def diverged(epoch: int, loss: float, lr: float) -> DivergenceError:
    """The weights became NaN or inf in ``epoch`` after a step whose loss was ``loss``."""
    return DivergenceError(
        f"train.lr: training diverged in epoch {epoch}: the weights stopped being finite after a "
        f"step with loss {loss:.4g}; nothing of this epoch was saved; lower train.lr (now "
        f"{lr:g}) and train again without resuming"
    )


def no_finite_loss(epoch: int, batches: int) -> DivergenceError:
    """Every one of the ``batches`` batches of ``epoch`` had a non-finite loss."""
    return DivergenceError(
        f"train: all {batches} batches of epoch {epoch} had a non-finite loss (NaN or inf); "
        "nothing was learnt or saved; check the tiles (carbongeo check) and the [loss] weights, "
        "or lower train.lr"
    )
